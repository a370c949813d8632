"""The folder of a resumable TicketSearch: run arguments, history, masks, rewind checkpoints.

Layout: ``run.json`` (arguments, prune schedule, prunable shapes), ``history.json`` (one entry
per finished round), ``masks/round_NNN.safetensors``, ``theta_init.safetensors`` (θ0),
``theta_rewind.safetensors`` (θi) and ``.lock`` (the writing process, see :mod:`.lock`). Every
file is written atomically as strict JSON or safetensors; the history is written last when a
round ends, so it alone says which rounds are finished. Both JSON files are validated on resume.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import _files
from .._naming import check_layout
from ..core import Checkpoint, Mask
from ..core.nm import parse_pattern
from ..errors import ArgumentError, FileFormatError

FORMAT = "vlticket.search"
FORMAT_VERSION = "1"
INIT, REWIND = "theta_init.safetensors", "theta_rewind.safetensors"
# Arguments added after format version 1 was first written, with the value older runs used.
_DEFAULTS = {
    "scope": "global",
    "granularity": "weight",
    "min_per_layer": None,
    "num_heads": None,
    "pattern": None,
    "early_bird": None,
}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number in strict JSON")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(), parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FileFormatError(f"cannot read {str(path)!r} as JSON: {e}") from e
    if not isinstance(data, Mapping):
        raise FileFormatError(f"{str(path)!r}: expected a JSON object")
    return dict(data)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    _files.atomic_write_bytes(path, json.dumps(data, indent=1, allow_nan=False).encode())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check(path: Path, ok: bool, what: str, found: Any) -> None:
    if not ok:
        raise FileFormatError(f"{str(path)!r}: expected {what}, found {found!r}")


_EARLY_BIRD_KEYS = ("epsilon", "queue", "every")
# The types of run.json's arguments; a hand-edited or damaged file is refused before use.
_ARG_CHECKS = {
    "sparsity": (_is_number, "a number"),
    "amount": (_is_number, "a number"),
    "rewind_step": (_is_int, "an int"),
    "one_shot": (lambda v: isinstance(v, bool), "true or false"),
    "scope": (lambda v: isinstance(v, str), "a string"),
    "granularity": (lambda v: isinstance(v, str), "a string"),
    "min_per_layer": (lambda v: v is None or _is_int(v), "null or an int"),
    "num_heads": (lambda v: v is None or _is_int(v), "null or an int"),
    "pattern": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "early_bird": (
        lambda v: (
            v is None
            or (isinstance(v, Mapping) and all(_is_number(v.get(k)) for k in _EARLY_BIRD_KEYS))
        ),
        f"null or an object with numbers {list(_EARLY_BIRD_KEYS)}",
    ),
}


def _check_round(path: Path, i: int, entry: Any) -> None:
    where = f"round entry {i}"
    _check(path, isinstance(entry, Mapping), f"{where} to be an object", entry)
    missing = sorted({"round", "sparsity", "kept", "metrics", "seconds", "steps"} - set(entry))
    _check(path, not missing, f"{where} to have keys {missing}", sorted(entry))
    _check(path, entry["round"] == i and _is_int(entry["round"]), f"'round': {i}", entry["round"])
    s = entry["sparsity"]
    _check(path, _is_number(s) and 0 <= s <= 1, f"{where} 'sparsity' in [0, 1]", s)
    for key in ("kept", "steps"):
        _check(path, _is_int(entry[key]) and entry[key] >= 0, f"{where} {key!r} >= 0", entry[key])
    sec = entry["seconds"]
    _check(path, _is_number(sec) and sec >= 0, f"{where} 'seconds' >= 0", sec)
    # Written by some kinds of rounds only: structured (units), N:M (pattern), early-bird.
    units, pattern = entry.get("units", {}), entry.get("pattern", "")
    ok = isinstance(units, Mapping) and all(_is_number(v) and 0 <= v <= 1 for v in units.values())
    _check(path, ok, f"{where} 'units' to map kinds to fractions in [0, 1]", units)
    _check(path, isinstance(pattern, str), f"{where} 'pattern' to be a string", pattern)
    converged, distances = entry.get("converged", False), entry.get("distances", [])
    _check(path, isinstance(converged, bool), f"{where} 'converged' true or false", converged)
    ok = isinstance(distances, list) and all(_is_number(d) for d in distances)
    _check(path, ok, f"{where} 'distances' to be a list of numbers", distances)
    for key in ("metrics", "groups"):
        table = entry.get(key, {})
        _check(
            path,
            isinstance(table, Mapping)
            and all(isinstance(k, str) and _is_number(v) for k, v in table.items()),
            f"{where} {key!r} to map names to finite numbers",
            table,
        )


class RunDir:
    """One run folder; ``open`` starts it or checks that the arguments match the saved run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rounds = 0  # the schedule's length, known once opened

    def open(
        self, args: Mapping[str, Any], schedule: list[int], prunable: Mapping[str, torch.Tensor]
    ) -> None:
        self.rounds = len(schedule)
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
        saved = {**_DEFAULTS, **_read_json(run_file)}
        if saved.get("format") != FORMAT or saved.get("format_version") != FORMAT_VERSION:
            raise FileFormatError(f"{str(run_file)!r} is not a {FORMAT} run file, version 1")
        for key, (ok, what) in _ARG_CHECKS.items():
            _check(
                run_file, key in saved and ok(saved[key]), f"{key!r} to be {what}", saved.get(key)
            )
        if isinstance(saved.get("pattern"), str):  # runs saved before one spelling ("02:04")
            with contextlib.suppress(ArgumentError):  # a bad one is named by the check below
                saved["pattern"] = "{}:{}".format(*parse_pattern(saved["pattern"]))
        for key, value in args.items():
            if saved.get(key) != value:
                raise ArgumentError(
                    f"`{key}`={value!r} contradicts the run in {str(self.path)!r}, started with "
                    f"{key}={saved.get(key)!r}; pass the same arguments or another `run_dir`"
                )
        shapes = saved.get("shapes")
        _check(
            run_file,
            isinstance(shapes, Mapping)
            and all(isinstance(s, list) and all(map(_is_int, s)) for s in shapes.values()),
            "'shapes' to map names to lists of ints",
            shapes,
        )
        saved_shapes = {n: tuple(s) for n, s in shapes.items()}
        where = f"the run in {str(self.path)!r}"
        check_layout(saved_shapes, prunable, what=where, where="`model`")
        _check(
            run_file,
            saved.get("schedule") == schedule,
            f"'schedule' {schedule}",
            saved.get("schedule"),
        )

    def remove_partial_files(self) -> None:
        """Delete temporary files a killed writer left (``_files`` names them ``.*.tmp``)."""
        for folder in (self.path, self.path / "masks"):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def history(self) -> list[dict[str, Any]]:
        path = self.path / "history.json"
        if not path.exists():
            return []
        rounds = _read_json(path).get("rounds")
        _check(path, isinstance(rounds, list), "a list under 'rounds'", type(rounds).__name__)
        _check(path, len(rounds) <= self.rounds, f"at most {self.rounds} rounds", len(rounds))
        for i, entry in enumerate(rounds):
            _check_round(path, i, entry)
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
