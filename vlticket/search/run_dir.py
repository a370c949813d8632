"""The folder of a resumable TicketSearch: run arguments, history, masks, rewind checkpoints.

Layout: ``run.json`` (arguments, prune schedule, prunable shapes), ``history.json`` (one entry
per finished round), ``masks/round_NNN.safetensors``, ``theta_init.safetensors`` (θ0) and
``theta_rewind.safetensors`` (θi). Every file is written atomically; the history is written
last when a round ends, so it alone says which rounds are finished.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import _files
from .._naming import check_layout
from ..core import Checkpoint, Mask
from ..errors import ArgumentError, FileFormatError

FORMAT = "vlticket.search"
FORMAT_VERSION = "1"
INIT, REWIND = "theta_init.safetensors", "theta_rewind.safetensors"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"cannot read {str(path)!r} as JSON: {e}") from e
    if not isinstance(data, Mapping):
        raise FileFormatError(f"{str(path)!r}: expected a JSON object")
    return dict(data)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    _files.atomic_write_bytes(path, json.dumps(data, indent=1).encode())


class RunDir:
    """One run folder; ``open`` starts it or checks that the arguments match the saved run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def open(
        self, args: Mapping[str, Any], schedule: list[int], prunable: Mapping[str, torch.Tensor]
    ) -> None:
        run_file = self.path / "run.json"
        if not run_file.exists():
            record = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                **args,
                "schedule": schedule,
                "shapes": {n: list(t.shape) for n, t in prunable.items()},
            }
            _write_json(run_file, record)
            return
        saved = _read_json(run_file)
        if saved.get("format") != FORMAT or saved.get("format_version") != FORMAT_VERSION:
            raise FileFormatError(f"{str(run_file)!r} is not a {FORMAT} run file, version 1")
        for key, value in args.items():
            if saved.get(key) != value:
                raise ArgumentError(
                    f"`{key}`={value!r} contradicts the run in {str(self.path)!r}, started with "
                    f"{key}={saved.get(key)!r}; pass the same arguments or another `run_dir`"
                )
        saved_shapes = {n: tuple(s) for n, s in saved.get("shapes", {}).items()}
        where = f"the run in {str(self.path)!r}"
        check_layout(saved_shapes, prunable, what=where, where="`model`")

    def history(self) -> list[dict[str, Any]]:
        path = self.path / "history.json"
        if not path.exists():
            return []
        rounds = _read_json(path).get("rounds")
        if not isinstance(rounds, list):
            raise FileFormatError(f"{str(path)!r}: expected a list under 'rounds'")
        return rounds

    def write_history(self, rounds: list[dict[str, Any]]) -> None:
        _write_json(self.path / "history.json", {"format": FORMAT + ".history", "rounds": rounds})

    def mask_path(self, index: int) -> Path:
        return self.path / "masks" / f"round_{index:03d}.safetensors"

    def save_mask(self, index: int, mask: Mask) -> None:
        mask.save(self.mask_path(index), metadata={"round": str(index)})

    def load_mask(self, index: int) -> Mask | None:
        path = self.mask_path(index)
        return Mask.load(path) if path.exists() else None

    def save_checkpoint(self, name: str, ckpt: Checkpoint) -> None:
        ckpt.save(self.path / name)

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        path = self.path / name
        return Checkpoint.load(path) if path.exists() else None
