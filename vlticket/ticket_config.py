"""The ticket config, ``vlticket_config.json``: what a mask is for, and checks of files against it.

It records the base model, the adapter family, the names and shapes the mask covers (its
*fingerprint*), how the mask was found, its sparsity, the task and metric, and the size and
SHA-256 of every file of the ticket folder. A folder is trusted only as far as it agrees with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapters.groups import group_stats, groups_for
from .errors import ArgumentError, FileFormatError
from .masks import Mask
from .rewind import Checkpoint

MASK_FILE = "mask.safetensors"
CONFIG_FILE = "vlticket_config.json"
CARD_FILE = "README.md"
CHECKPOINT_FILE = "checkpoint.safetensors"
TICKET_FILES = (CONFIG_FILE, MASK_FILE, CARD_FILE, CHECKPOINT_FILE)
CONFIG_FORMAT = "vlticket.ticket"
CONFIG_VERSION = 1
MAX_CONFIG_BYTES = 16 * 1024 * 1024
METHODS = ("imp", "one-shot", "random")
_SCOPES = ("global", "layer")
_NUMBER_FIELDS = {
    "amount": (int, float),
    "score": (int, float),
    "dense_score": (int, float),
    "rounds": int,
    "rewind_step": int,
    "seed": int,
}


@dataclass(frozen=True)
class TicketInfo:
    """What a ticket is for and how it was found; the keyword arguments of ``save_pretrained``.

    Args:
        base_model: Hub id of the dense model the mask prunes, e.g. ``"dandelin/vilt-b32-mlm"``.
        base_model_revision: the commit or tag of ``base_model``.
        adapter: the adapter (or its family name, e.g. ``"vilt"``) whose canonical names the
            mask uses; an adapter object also records its options.
        adapter_options: options of the adapter (``"pooler"``, ``"embeddings"`` ...).
        method: ``"imp"``, ``"one-shot"`` or ``"random"``.
        amount: fraction of the remaining weights pruned per round (0.1 in the study).
        rounds: number of pruning rounds.
        rewind_step: training step the weights are rewound to (0 for θ0).
        scope: ``"global"`` or ``"layer"`` ranking.
        seed: random seed of the search.
        task: the task the ticket was found on, e.g. ``"vqa"``.
        metric: the metric's name, e.g. ``"accuracy"``.
        score: the ticket's value of ``metric``.
        dense_score: the dense model's value of ``metric``.
        license: license of the shared files, e.g. ``"apache-2.0"``.

    Example:
        >>> from vlticket.ticket_config import TicketInfo
        >>> TicketInfo.from_kwargs({"method": "imp", "amount": 0.1, "rounds": 7}).method
        'imp'
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
    seed: int | None = None
    task: str | None = None
    metric: str | None = None
    score: float | None = None
    dense_score: float | None = None
    license: str | None = None

    def __post_init__(self) -> None:
        options = self.adapter_options
        if not isinstance(options, tuple) or not all(isinstance(o, str) for o in options):
            raise ArgumentError(f"`adapter_options`: expected a list of str, found {options!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _NUMBER_FIELDS.get(f.name, str)
            if f.name == "adapter_options" or value is None:
                continue
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ArgumentError(f"`{f.name}`: expected {f.type}, found {value!r}")
        if self.method is not None and self.method not in METHODS:
            raise ArgumentError(f"`method`: expected one of {METHODS}, found {self.method!r}")
        if self.scope is not None and self.scope not in _SCOPES:
            raise ArgumentError(f"`scope`: expected one of {_SCOPES}, found {self.scope!r}")
        if self.amount is not None and not 0 < self.amount < 1:
            raise ArgumentError(f"`amount`: expected a fraction in (0, 1), found {self.amount}")
        for name in ("rounds", "rewind_step"):
            if (getattr(self, name) or 0) < 0:
                raise ArgumentError(f"`{name}`: expected >= 0, found {getattr(self, name)}")

    @classmethod
    def from_kwargs(cls, card_info: Mapping[str, Any]) -> TicketInfo:
        """Validate the keyword arguments of ``save_pretrained``; accepts an adapter object."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(card_info) - set(allowed))
        if unknown:
            raise ArgumentError(f"unknown ticket information {unknown}; expected some of {allowed}")
        card_info = dict(card_info)
        adapter = card_info.get("adapter")
        if isinstance(getattr(adapter, "name", None), str):  # an adapter object
            card_info["adapter"] = adapter.name
            card_info.setdefault("adapter_options", getattr(adapter, "options", ()))
        if isinstance(card_info.get("adapter_options"), (list, tuple, set, frozenset)):
            card_info["adapter_options"] = tuple(sorted(card_info["adapter_options"]))
        return cls(**card_info)


# -- writing ------------------------------------------------------------------------------------
def build_config(
    mask: Mask, info: TicketInfo, checkpoint: Checkpoint | None, files: dict[str, Any]
) -> dict[str, Any]:
    """The config of a ticket folder; ``files`` maps its file names to :func:`file_record`."""
    import vlticket

    search = {k: getattr(info, k) for k in ("method", "amount", "rounds", "rewind_step", "scope")}
    search["seed"] = info.seed
    config: dict[str, Any] = {
        "format": CONFIG_FORMAT,
        "format_version": CONFIG_VERSION,
        "vlticket_version": vlticket.__version__,
        "base_model": {"id": info.base_model, "revision": info.base_model_revision},
        "adapter": info.adapter and {"family": info.adapter, "options": list(info.adapter_options)},
        "fingerprint": {n: list(s) for n, s in mask.shapes().items()},
        "search": search,
        "sparsity": {
            "overall": mask.sparsity,
            "weights": mask.numel,
            "kept": mask.num_kept,
            "groups": group_stats(mask, groups_for(mask, info.adapter)),
        },
        "task": info.task,
        "metric": {"name": info.metric, "score": info.score, "dense_score": info.dense_score},
        "license": info.license,
        "files": files,
    }
    if checkpoint is not None:
        config["checkpoint"] = {n: list(s) for n, s in checkpoint.shapes().items()}
    return config


def config_json(config: dict[str, Any]) -> str:
    """``config`` as the text of ``vlticket_config.json``."""
    text = json.dumps(config, indent=2)
    # One shape per line ("[768, 768]") keeps a fingerprint of hundreds of tensors readable.
    # JSON strings hold no raw newline, so only whitespace json.dumps added is collapsed.
    shape = re.compile(r"\[\n\s+([\d,\s]*?)\n\s*\]")
    return shape.sub(lambda m: f"[{' '.join(m[1].split())}]", text) + "\n"


def file_record(path: Path) -> dict[str, Any]:
    """The size and SHA-256 of a file, as the config lists them."""
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- reading and checking -----------------------------------------------------------------------
def read_config(path: Path) -> dict[str, Any]:
    """Parse and validate a config: size limit, format and version, shape tables, file list."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FileFormatError(f"no ticket config at {str(path)!r}: {e.strerror}") from e
    if size > MAX_CONFIG_BYTES:
        raise FileFormatError(f"{str(path)!r} is {size} bytes, over {MAX_CONFIG_BYTES}")
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FileFormatError(f"{str(path)!r} is not JSON ({e})") from e
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise FileFormatError(f"{str(path)!r} is not a {CONFIG_FORMAT} config")
    if config.get("format_version") != CONFIG_VERSION:
        raise FileFormatError(
            f"{str(path)!r}: config format version {config.get('format_version')!r} is not "
            f"supported (this vlticket reads {CONFIG_VERSION})"
        )
    for key in ("base_model", "adapter", "search", "sparsity", "metric"):
        if not isinstance(config.get(key), (dict, type(None))):
            raise FileFormatError(f"{str(path)!r}: {key!r} must be an object or null")
    adapter = config.get("adapter") or {}
    if not isinstance(adapter.get("family"), (str, type(None))) or not isinstance(
        adapter.get("options", []), list
    ):
        raise FileFormatError(f"{str(path)!r}: 'adapter' must hold a family name and options")
    _check_shapes_table(config.get("fingerprint"), path, "fingerprint")
    if "checkpoint" in config:
        _check_shapes_table(config["checkpoint"], path, "checkpoint")
    files = config.get("files")
    if not isinstance(files, dict) or not all(
        name in TICKET_FILES
        and isinstance(r, dict)
        and isinstance(r.get("size"), int)
        and isinstance(r.get("sha256"), str)
        for name, r in files.items()
    ):
        raise FileFormatError(f"{str(path)!r}: 'files' must map ticket files to size and sha256")
    return config


def _check_shapes_table(table: Any, path: Path, key: str) -> None:
    if not isinstance(table, dict) or not all(
        isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
        for shape in table.values()
    ):
        raise FileFormatError(f"{str(path)!r}: {key!r} must map tensor names to shapes")


def check_file(folder: Path, name: str, config: dict[str, Any]) -> Path:
    """The path of a ticket file whose size and SHA-256 match the config, checked before the
    file is parsed at all."""
    path = folder / name
    record = config["files"].get(name)
    if record is None:
        raise FileFormatError(f"{CONFIG_FILE} in {str(folder)!r} does not list {name!r}")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FileFormatError(f"cannot read {str(path)!r}: {e.strerror}") from e
    if size != record["size"]:
        raise FileFormatError(
            f"{str(path)!r} has {size} bytes, {CONFIG_FILE} says {record['size']}"
        )
    if _sha256(path) != record["sha256"]:
        raise FileFormatError(f"{str(path)!r} does not match the SHA-256 in {CONFIG_FILE}")
    return path


def check_file_layout(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, Any], path: Path
) -> None:
    """The file's tensor names and shapes must be the config's; the first difference is named.

    Unlike :func:`vlticket._named.check_layout` (a model against a mask) a difference here means
    a corrupt or forged folder, hence a FileFormatError.
    """
    for name, shape in expected.items():
        if name not in found:
            raise FileFormatError(f"{str(path)!r} lacks tensor {name!r} listed in {CONFIG_FILE}")
        if tuple(found[name]) != tuple(shape):
            raise FileFormatError(
                f"{str(path)!r}: tensor {name!r} has shape {list(found[name])}, "
                f"{CONFIG_FILE} says {list(shape)}"
            )
    extra = [n for n in found if n not in expected]
    if extra:
        raise FileFormatError(f"{str(path)!r} holds tensor {extra[0]!r} not in {CONFIG_FILE}")


# -- fields -------------------------------------------------------------------------------------
def fingerprint(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of the tensors the ticket's mask covers, in the mask's order."""
    return {n: tuple(s) for n, s in config["fingerprint"].items()}


def base_model_id(config: Mapping[str, Any] | None) -> str | None:
    """The Hub id of the dense model the ticket was made for, if recorded."""
    base = (config or {}).get("base_model")
    return base.get("id") if isinstance(base, dict) else None


def recorded_adapter(config: Mapping[str, Any] | None) -> tuple[str | None, Iterable[str]]:
    """``(family, options)`` of the adapter the config records; ``(None, ())`` if none."""
    recorded = (config or {}).get("adapter") or {}
    return recorded.get("family"), recorded.get("options", ())
