"""``vlticket_config.json``: what a ticket is for, and what its folder's files must be.

One frozen, validated type, :class:`TicketConfig`, is written (:meth:`TicketConfig.to_json`)
and read (:meth:`TicketConfig.from_json`). It records the base model, the adapter, the names
and shapes the mask covers (its *fingerprint*), how the mask was found, its sparsity, the task
and metric, and the size and SHA-256 of every file of the ticket folder. A folder is trusted
only as far as it agrees with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .._files import MAX_DIMS
from .._version import __version__
from ..adapters import groups_for
from ..core import Checkpoint, Mask, group_stats
from ..core.nm import parse_pattern
from ..core.selection import SCOPES
from ..errors import ArgumentError, FileFormatError

MASK_FILE = "mask.safetensors"
CONFIG_FILE = "vlticket_config.json"
CARD_FILE = "README.md"
CHECKPOINT_FILE = "checkpoint.safetensors"
TICKET_FILES = (CONFIG_FILE, MASK_FILE, CARD_FILE, CHECKPOINT_FILE)
FORMAT = "vlticket.ticket"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 16 * 1024 * 1024
METHODS = ("imp", "one-shot", "random")
GRANULARITIES = ("weight", "head", "neuron", "head+neuron")

# The fields a user gives (the keyword arguments of ``Ticket(mask, ...)``) and their types.
_INFO_TYPES: dict[str, type | tuple[type, ...]] = {
    "base_model": str,
    "base_model_revision": str,
    "adapter": str,
    "method": str,
    "amount": (int, float),
    "rounds": int,
    "rewind_step": int,
    "scope": str,
    "granularity": str,
    "pattern": str,
    "seed": int,
    "task": str,
    "metric": str,
    "score": (int, float),
    "dense_score": (int, float),
    "license": str,
}
Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True, kw_only=True)
class TicketConfig:
    """The content of ``vlticket_config.json``.

    What the ticket is for (given by the user, all optional):

    Args:
        base_model: Hub id of the dense model the mask prunes, e.g. ``"dandelin/vilt-b32-mlm"``.
        base_model_revision: the commit or tag of ``base_model``.
        adapter: the adapter's registered name (e.g. ``"vilt"``) whose canonical names the mask
            uses; :meth:`describe` also takes an adapter object.
        adapter_options: options of the adapter (``"pooler"``, ``"embeddings"`` ...).
        method: ``"imp"``, ``"one-shot"`` or ``"random"``.
        amount: fraction of the remaining weights pruned per round (0.1 in the study).
        rounds: number of pruning rounds.
        rewind_step: training step the weights are rewound to (0 for θ0).
        scope: ``"global"``, ``"tensor"``, ``"layer"`` or ``"stream"`` ranking.
        granularity: what a round pruned whole: ``"weight"``, ``"head"``, ``"neuron"`` or
            ``"head+neuron"`` (structured tickets).
        pattern: the N:M pattern the mask satisfies, e.g. ``"2:4"`` (checked against the mask
            when the ticket is made).
        seed: random seed of the search.
        task: the task the ticket was found on, e.g. ``"vqa"``.
        metric: the metric's name, e.g. ``"accuracy"``.
        score: the ticket's value of ``metric``.
        dense_score: the dense model's value of ``metric``.
        license: license of the shared files, e.g. ``"apache-2.0"``.

    What the folder holds (computed by :meth:`describe` and when saving):

    Args:
        fingerprint: canonical name -> shape of every mask tensor, in the mask's order.
        checkpoint: name -> shape of the shared checkpoint's tensors, if one is shared.
        sparsity: ``overall``, ``weights``, ``kept`` and per-group ``groups`` statistics.
        files: file name -> ``{"size", "sha256"}`` of every file but the config itself.
        vlticket_version: the version that wrote the config.

    Example:
        >>> import torch, vlticket
        >>> mask = vlticket.Mask({"w": torch.tensor([True, False])})
        >>> config = vlticket.hub.TicketConfig.describe(mask, method="imp", rounds=7)
        >>> config.method, config.fingerprint, config.sparsity["overall"]
        ('imp', {'w': (2,)}, 0.5)
    """

    base_model: str | None = None
    base_model_revision: str | None = None
    adapter: str | None = None
    adapter_options: tuple[str, ...] = ()
    method: str | None = None
    amount: float | None = None
    rounds: int | None = None
    rewind_step: int | None = None
    scope: str | None = None
    granularity: str | None = None
    pattern: str | None = None
    seed: int | None = None
    task: str | None = None
    metric: str | None = None
    score: float | None = None
    dense_score: float | None = None
    license: str | None = None
    fingerprint: Shapes = field(default_factory=dict)
    checkpoint: Shapes | None = None
    sparsity: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    vlticket_version: str = __version__

    def __post_init__(self) -> None:
        options = self.adapter_options
        if not isinstance(options, tuple) or not all(isinstance(o, str) for o in options):
            raise ArgumentError(f"`adapter_options`: expected a list of str, found {options!r}")
        for name, kind in _INFO_TYPES.items():
            value = getattr(self, name)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                expected = " or ".join(
                    k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,))
                )
                raise ArgumentError(f"`{name}`: expected {expected} or None, found {value!r}")
        for name in ("amount", "score", "dense_score"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ArgumentError(f"`{name}`: expected a finite number, found {value!r}")
        if self.method is not None and self.method not in METHODS:
            raise ArgumentError(f"`method`: expected one of {METHODS}, found {self.method!r}")
        if self.scope is not None and self.scope not in SCOPES:
            raise ArgumentError(f"`scope`: expected one of {SCOPES}, found {self.scope!r}")
        if self.granularity is not None and self.granularity not in GRANULARITIES:
            raise ArgumentError(
                f"`granularity`: expected one of {GRANULARITIES}, found {self.granularity!r}"
            )
        if self.pattern is not None:
            parse_pattern(self.pattern)
        if self.amount is not None and not 0 < self.amount < 1:
            raise ArgumentError(f"`amount`: expected a fraction in (0, 1), found {self.amount}")
        for name in ("rounds", "rewind_step"):
            if (getattr(self, name) or 0) < 0:
                raise ArgumentError(f"`{name}`: expected >= 0, found {getattr(self, name)}")

    # -- making one -----------------------------------------------------------------------------
    @classmethod
    def describe(
        cls, mask: Mask, checkpoint: Checkpoint | None = None, **info: Any
    ) -> TicketConfig:
        """The config of a ticket made of ``mask`` (and ``checkpoint``), with ``info`` validated.

        ``info`` takes the user fields above; ``adapter`` may be an adapter object, whose name
        and options are recorded; by default the adapter the mask recorded (``mask.adapter``).
        Files are listed when the ticket is saved.
        """
        if not isinstance(mask, Mask):
            raise ArgumentError(f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}")
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise ArgumentError(
                f"`checkpoint`: expected a vlticket.Checkpoint, found {type(checkpoint).__name__}"
            )
        allowed = [*_INFO_TYPES, "adapter_options"]
        unknown = sorted(set(info) - set(allowed))
        if unknown:
            raise ArgumentError(f"unknown ticket information {unknown}; expected some of {allowed}")
        info = dict(info)
        if info.get("adapter") is None and mask.adapter is not None:  # how the mask was named
            info["adapter"] = mask.adapter.name
            info.setdefault("adapter_options", mask.adapter.options)
        adapter = info.get("adapter")
        if adapter is not None and not isinstance(adapter, str):
            name = getattr(adapter, "name", None)
            if not isinstance(name, str):
                raise ArgumentError(
                    f"`adapter`: expected an adapter or its name, found {type(adapter).__name__}"
                )
            info["adapter"] = name
            info.setdefault("adapter_options", getattr(adapter, "options", ()))
        if isinstance(info.get("adapter_options"), (list, tuple, set, frozenset)):
            info["adapter_options"] = tuple(sorted(info["adapter_options"]))
        partial = cls(**info)  # validates the user's fields before any work on the mask
        if partial.pattern is not None and not mask.satisfies(partial.pattern):
            raise ArgumentError(f"`pattern`: the mask does not satisfy {partial.pattern!r}")
        groups = groups_for(mask, partial.adapter, partial.adapter_options)
        return dataclasses.replace(
            partial,
            fingerprint=mask.shapes(),
            checkpoint=checkpoint.shapes() if checkpoint is not None else None,
            sparsity={
                "overall": mask.sparsity,
                "weights": mask.numel,
                "kept": mask.num_kept,
                "groups": group_stats(mask, groups),
            },
        )

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The text of ``vlticket_config.json`` (strict JSON, one shape per line)."""
        data: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vlticket_version": self.vlticket_version,
            "base_model": {"id": self.base_model, "revision": self.base_model_revision},
            "adapter": self.adapter
            and {"family": self.adapter, "options": list(self.adapter_options)},
            "fingerprint": {n: list(s) for n, s in self.fingerprint.items()},
            "search": {
                "method": self.method,
                "amount": self.amount,
                "rounds": self.rounds,
                "rewind_step": self.rewind_step,
                "scope": self.scope,
                "seed": self.seed,
            },
            "sparsity": self.sparsity,
            "task": self.task,
            "metric": {"name": self.metric, "score": self.score, "dense_score": self.dense_score},
            "license": self.license,
            "files": self.files,
        }
        for key in ("granularity", "pattern"):  # only when set: older configs stay byte-identical
            if getattr(self, key) is not None:
                data["search"][key] = getattr(self, key)
        if self.checkpoint is not None:
            data["checkpoint"] = {n: list(s) for n, s in self.checkpoint.items()}
        text = json.dumps(data, indent=2, allow_nan=False)
        # One shape per line ("[768, 768]") keeps a fingerprint of hundreds of tensors readable.
        # JSON strings hold no raw newline, so only whitespace json.dumps added is collapsed.
        shape = re.compile(r"\[\n\s+([\d,\s]*?)\n\s*\]")
        return shape.sub(lambda m: f"[{' '.join(m[1].split())}]", text) + "\n"

    @classmethod
    def from_json(cls, data: bytes | str, source: str = CONFIG_FILE) -> TicketConfig:
        """Parse and validate a config; every problem is a FileFormatError naming ``source``."""
        where = repr(str(source))
        if len(data) > MAX_CONFIG_BYTES:
            raise FileFormatError(f"{where} is {len(data)} bytes, over {MAX_CONFIG_BYTES}")
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise FileFormatError(f"{where} is not JSON ({e})") from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise FileFormatError(f"{where} is not a {FORMAT} config")
        if raw.get("format_version") != FORMAT_VERSION:
            raise FileFormatError(
                f"{where}: config format version {raw.get('format_version')!r} is not "
                f"supported (this vlticket reads {FORMAT_VERSION})"
            )
        for key in ("base_model", "adapter", "search", "sparsity", "metric"):
            if not isinstance(raw.get(key), (dict, type(None))):
                raise FileFormatError(f"{where}: {key!r} must be an object or null")
        base, search = raw.get("base_model") or {}, raw.get("search") or {}
        adapter, metric = raw.get("adapter") or {}, raw.get("metric") or {}
        options = adapter.get("options", [])
        if not isinstance(adapter.get("family"), (str, type(None))) or not (
            isinstance(options, list) and all(isinstance(o, str) for o in options)
        ):
            raise FileFormatError(f"{where}: 'adapter' must hold a family name and options")
        fingerprint = _shapes_table(raw.get("fingerprint"), where, "fingerprint")
        checkpoint = (
            _shapes_table(raw["checkpoint"], where, "checkpoint") if "checkpoint" in raw else None
        )
        files = raw.get("files")
        if not isinstance(files, dict) or not all(
            name in TICKET_FILES
            and name != CONFIG_FILE
            and isinstance(r, dict)
            and isinstance(r.get("size"), int)
            and isinstance(r.get("sha256"), str)
            for name, r in files.items()
        ):
            raise FileFormatError(f"{where}: 'files' must map ticket files to size and sha256")
        if not isinstance(raw.get("vlticket_version", ""), str):
            raise FileFormatError(f"{where}: 'vlticket_version' must be a string")
        try:
            return cls(
                base_model=base.get("id"),
                base_model_revision=base.get("revision"),
                adapter=adapter.get("family"),
                adapter_options=tuple(options),
                method=search.get("method"),
                amount=search.get("amount"),
                rounds=search.get("rounds"),
                rewind_step=search.get("rewind_step"),
                scope=search.get("scope"),
                granularity=search.get("granularity"),
                pattern=search.get("pattern"),
                seed=search.get("seed"),
                task=raw.get("task"),
                metric=metric.get("name"),
                score=metric.get("score"),
                dense_score=metric.get("dense_score"),
                license=raw.get("license"),
                fingerprint=fingerprint,
                checkpoint=checkpoint,
                sparsity=raw.get("sparsity") or {},
                files={n: {"size": r["size"], "sha256": r["sha256"]} for n, r in files.items()},
                vlticket_version=raw.get("vlticket_version", ""),
            )
        except ArgumentError as e:
            raise FileFormatError(f"{where}: {e}") from e


def _shapes_table(table: Any, where: str, key: str) -> Shapes:
    if not isinstance(table, dict) or not all(
        isinstance(shape, list)
        and len(shape) <= MAX_DIMS
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        for shape in table.values()
    ):
        raise FileFormatError(f"{where}: {key!r} must map tensor names to shapes")
    return {str(n): tuple(s) for n, s in table.items()}


# -- files of a folder ----------------------------------------------------------------------------
def file_record(path: Path) -> dict[str, Any]:
    """The size and SHA-256 of a file, as the config lists them."""
    return {"size": path.stat().st_size, "sha256": sha256(path)}


def sha256(source: Path | BinaryIO) -> str:
    """The SHA-256 of a file, given by path or as an open binary file (read from its start)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return sha256(f)
    h = hashlib.sha256()
    source.seek(0)
    for chunk in iter(lambda: source.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


__all__ = ["CARD_FILE", "CHECKPOINT_FILE", "CONFIG_FILE", "MASK_FILE", "TicketConfig"]
