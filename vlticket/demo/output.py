"""The demo's output folder: what a re-run may reuse, and starting afresh without losing data.

``theta0.safetensors`` + ``theta0.json`` hold θ0 and the settings that made it (pre-training
only); ``demo.json`` holds the settings of the searches and every finished measurement (the
baselines, transfers, structured rounds, speeds); ``task_A/``, ``task_B/`` and ``pretraining/``
are TicketSearch run folders, ``dense_A/B.safetensors`` the models each task's dense round
trained and ``structured_A/B/`` the structured search's masks. A re-run with the same settings
reuses all of it; with other pre-training settings, or other search settings, it removes only
the demo's own files that no longer match and says so. ``theta0.json`` and ``demo.json`` are
written after the files they vouch for and removed before them, so an interrupted run leaves
nothing that a re-run would mistake for finished work.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import _files
from .._version import __version__
from ..core import Checkpoint
from ..errors import VlticketError

logger = logging.getLogger(__name__)

FORMAT = "vlticket.demo"
THETA0, THETA0_JSON, STATE = "theta0.safetensors", "theta0.json", "demo.json"
THETA0_KEYS = ("seed", "pretrain_steps", "pretrain_target", "max_images")
# Torch's thread count changes no result worth re-running for, only the speed.
IGNORED_KEYS = ("threads",)
RESULTS = (
    "results.json",
    "accuracy_vs_sparsity.png",
    "accuracy_vs_sparsity.svg",
    "task_A",
    "task_B",
    "ticket_A",
    "ticket_B",
    "pretraining",
    "ticket_pretraining",
    "dense_A.safetensors",
    "dense_B.safetensors",
    "structured_A",
    "structured_B",
)
_TRASH = ".trash-"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _write(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps({"format": FORMAT, **data}, indent=1, allow_nan=False)
    _files.atomic_write_bytes(path, text.encode())


def _changes(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if old is None:
        return "no settings recorded"
    return ", ".join(
        f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)
    )


class Output:
    """The output folder ``path`` of a demo run with ``settings``; :meth:`open` it first."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        kept = {k: v for k, v in settings.items() if k not in IGNORED_KEYS}
        self.settings = {"vlticket": __version__, **kept}
        self.theta0_settings = {"vlticket": __version__, **{k: settings[k] for k in THETA0_KEYS}}
        self.measured: dict[str, dict[str, Any]] = {}
        self.pretrain: dict[str, Any] | None = None

    def open(self) -> None:
        """Decide what to reuse; remove the demo's own files that belong to other settings."""
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(_TRASH + "*"):  # from a removal that was interrupted
            self._remove(leftover)
        saved = _read(self.path / THETA0_JSON)
        if saved is not None and saved.get("settings") == self.theta0_settings:
            self.pretrain = saved.get("pretrain")
        elif saved is not None or (self.path / THETA0).exists():
            logger.info(
                "%s: θ0 was pre-trained with other settings (%s): pre-training afresh",
                self.path,
                _changes(saved and saved.get("settings"), self.theta0_settings),
            )
            self._remove(self.path / THETA0_JSON)
            self._remove(self.path / THETA0)
        state = _read(self.path / STATE)
        if state is not None and state.get("settings") == self.settings:
            self.measured = dict(state.get("measured", {}))
            logger.info("%s: resuming the run with the same settings", self.path)
            return
        stale = [n for n in (STATE, *RESULTS) if (self.path / n).exists()]
        if stale:
            logger.info(
                "%s holds a demo run with other settings (%s): starting afresh%s",
                self.path,
                _changes(state and state.get("settings"), self.settings),
                " (θ0 reused)" if self.pretrain is not None else "",
            )
        for name in stale:  # demo.json first: the rest is stale from then on
            self._remove(self.path / name)
        self._save_state()

    def theta0(self) -> Checkpoint | None:
        """θ0 of an earlier run with the same pre-training settings, or None."""
        if self.pretrain is None:
            return None
        try:
            return Checkpoint.load(self.path / THETA0)
        except (OSError, VlticketError) as e:
            logger.info("%s: cannot reuse θ0 (%s): pre-training afresh", self.path, e)
            self.pretrain = None
            return None

    def save_theta0(self, theta0: Checkpoint, pretrain: dict[str, Any]) -> None:
        theta0.save(self.path / THETA0)
        _write(self.path / THETA0_JSON, {"settings": self.theta0_settings, "pretrain": pretrain})
        self.pretrain = pretrain

    def measure(self, key: str, fit: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``fit()``'s numbers (e.g. accuracy and steps), or those an earlier run with these
        settings recorded under ``key``."""
        if key not in self.measured:
            self.record(key, fit())
        return self.measured[key]

    def record(self, key: str, value: dict[str, Any]) -> None:
        """Keep one finished measurement (e.g. a baseline's accuracy and steps) for re-runs."""
        self.measured[key] = value
        self._save_state()

    def _save_state(self) -> None:
        _write(self.path / STATE, {"settings": self.settings, "measured": self.measured})

    def _remove(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            name = path.name
            trash = path if name.startswith(_TRASH) else path.with_name(_TRASH + name)
            os.replace(path, trash)  # one atomic step: never a half-removed run folder
            shutil.rmtree(trash)
        else:
            path.unlink(missing_ok=True)
