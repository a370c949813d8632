"""Share tickets on the Hugging Face Hub: a folder holding a mask, its config and a model card.

A ticket folder (locally, or as a Hub model repo) holds:

- ``mask.safetensors``: the bit-packed mask written by :meth:`Mask.save`;
- ``vlticket_config.json``: what the mask is for (base model, adapter family, and the names and
  shapes it covers: its *fingerprint*), how it was found, its sparsity, the task and metric, and
  the size and SHA-256 of every file;
- ``README.md``: a model card;
- ``checkpoint.safetensors``, only when asked: the weights to rewind to (θ0 or θi).

Split like huggingface_hub's ``ModelHubMixin``: public ``save_pretrained`` / ``from_pretrained`` /
``push_to_hub``, private ``_save`` / ``_load``; a push saves into a temporary folder and uploads it
in one commit. Downloads go through ``snapshot_download``, so ``revision``, ``token``, the cache
and ``HF_HUB_OFFLINE`` behave as in the rest of the Hugging Face ecosystem. Only JSON and
safetensors are ever read, each checked against the config before any tensor is allocated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from . import _files
from ._named import NameMap, named_tensors
from .errors import ArgumentError, FileFormatError, NameMismatchError, ShapeMismatchError
from .masks import Mask
from .rewind import Checkpoint

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Ticket:
    """A loaded ticket folder: the mask, its config (a dict) and the optional checkpoint."""

    mask: Mask
    config: dict[str, Any]
    checkpoint: Checkpoint | None
    folder: Path

    def apply(self, model: nn.Module, *, adapter: NameMap | None = None) -> None:
        """Check the fingerprint against ``model``, then zero its pruned weights in place.

        Args:
            model: the model to prune.
            adapter: match canonical names through this adapter; by default the adapter of the
                family recorded in the config, or the model's own parameter names.

        Example:
            >>> ticket = vlticket.hub.load_ticket("user/vilt-vqa-ticket")  # doctest: +SKIP
            >>> ticket.apply(model)                                         # doctest: +SKIP
        """
        if adapter is None:
            recorded = self.config.get("adapter") or {}
            adapter = _family_adapter(recorded.get("family"), recorded.get("options", ()))
        fingerprint = {n: tuple(s) for n, s in self.config["fingerprint"].items()}
        check_fingerprint(fingerprint, model, adapter=adapter, base_model=_base_id(self.config))
        self.mask.apply(model, adapter=adapter)


# -- grouping ---------------------------------------------------------------------------------
def mask_groups(names: list[str], family: str | None = None) -> dict[str, list[str]]:
    """Group tensor names for per-group statistics: by the adapter family's groups if it is
    known and importable, else by layer (``encoder.layer.3``) or top-level module (``pooler``).

    Example:
        >>> from vlticket.hub import mask_groups
        >>> mask_groups(["bert.encoder.layer.0.q.weight", "bert.pooler.weight"])
        {'encoder.layer.0': ['bert.encoder.layer.0.q.weight'], 'pooler': ['bert.pooler.weight']}
    """
    names = list(names)
    groups = _family_groups(names, family) if family else None
    if groups is None:
        groups = _generic_groups(names)
    covered = {n for members in groups.values() for n in members}
    rest = [n for n in names if n not in covered]
    return {**groups, "other": rest} if rest else groups


def group_sparsity(mask: Mask, family: str | None = None) -> dict[str, dict[str, float]]:
    """Weights, kept weights and sparsity of each group of :func:`mask_groups`.

    Example:
        >>> import torch, vlticket.hub
        >>> m = vlticket.Mask({"layer.0.w": torch.tensor([True, False])})
        >>> vlticket.hub.group_sparsity(m)["layer.0"]
        {'weights': 2, 'kept': 1, 'sparsity': 0.5}
    """
    out = {}
    for group, members in mask_groups(list(mask), family).items():
        numel = sum(mask[n].numel() for n in members)
        kept = sum(int(mask[n].count_nonzero()) for n in members)
        sparsity = 1 - kept / numel if numel else 0.0
        out[group] = {"weights": numel, "kept": kept, "sparsity": sparsity}
    return out


_INDEX = re.compile(r"^\d+$")


def _generic_groups(names: list[str]) -> dict[str, list[str]]:
    # Strip the prefix every name shares (e.g. "bert."), but keep each name's last part and
    # any "layer.3" (a stack name and its index), which is what a group is named after.
    parts = [n.split(".") for n in names]
    common = 0
    while parts and all(
        len(p) > common + 2 and p[common] == parts[0][common] and not _INDEX.match(p[common + 1])
        for p in parts
    ):
        common += 1
    groups: dict[str, list[str]] = {}
    for name, p in zip(names, parts, strict=True):
        rest = p[common:]
        index = next((i for i, c in enumerate(rest[:-1]) if _INDEX.match(c)), None)
        key = ".".join(rest[: index + 1]) if index is not None else rest[0]
        groups.setdefault(key, []).append(name)
    return groups


def _family_groups(names: list[str], family: str) -> dict[str, list[str]] | None:
    adapter = _family_adapter(family)
    if adapter is None or not hasattr(adapter, "groups"):
        return None
    return {str(g): list(members) for g, members in adapter.groups(names).items()}


def _family_adapter(family: str | None, options: Any = ()) -> Any:
    """The adapter of a recorded family, or None when adapters are not available."""
    if not family:
        return None
    try:
        from . import adapters
    except ImportError:
        logger.warning("adapter family %r recorded but vlticket.adapters is unavailable", family)
        return None
    try:
        return adapters.get(family, **{str(o): True for o in options})
    except (LookupError, ValueError) as e:
        logger.warning("adapter family %r is not known here (%s); using parameter names", family, e)
        return None


# -- fingerprint ------------------------------------------------------------------------------
def check_fingerprint(
    fingerprint: Mapping[str, tuple[int, ...]],
    model: nn.Module | Mapping,
    *,
    adapter: NameMap | None = None,
    base_model: str | None = None,
) -> None:
    """Raise a MismatchError naming the first tensor of ``fingerprint`` that ``model`` lacks
    or has with another shape; touch nothing.

    Args:
        fingerprint: canonical name -> shape, in the mask's order.
        model: a module (parameters, or the adapter's prunable set) or a mapping name -> tensor.
        adapter: match names through this adapter.
        base_model: named in the error to hint at what the mask was made for.

    Example:
        >>> vlticket.hub.check_fingerprint(ticket.mask.shapes(), model)  # doctest: +SKIP
    """
    found = named_tensors(model, adapter=adapter, param="model")
    made_for = f" (made for {base_model})" if base_model else ""
    for name, shape in fingerprint.items():
        if name not in found:
            how = "the adapter's names" if adapter is not None else "the model's parameters"
            raise NameMismatchError(
                f"tensor {name!r} of the mask is not among {how}: the mask{made_for} belongs to "
                f"another architecture or naming ({len(fingerprint)} mask tensors, "
                f"{len(found)} model tensors)"
            )
        got = tuple(found[name].shape)
        if got != tuple(shape):
            raise ShapeMismatchError(
                f"tensor {name!r}: the mask{made_for} expects shape {tuple(shape)}, the model has "
                f"{got}; the mask belongs to another model size"
            )


# -- save ---------------------------------------------------------------------------------------
def save_pretrained(
    mask: Mask,
    save_directory: str | os.PathLike,
    *,
    checkpoint: Checkpoint | None = None,
    **card_info: Any,
) -> Path:
    """Write a ticket folder: mask, config, model card, and ``checkpoint`` if given.

    Args:
        mask: the ticket's mask.
        save_directory: the folder to write (created if needed).
        checkpoint: weights to rewind to (θ0 or θi), shared alongside the mask.
        **card_info: fields of :class:`TicketInfo` (``base_model``, ``method``, ``task`` ...).

    Example:
        >>> mask.save_pretrained(  # doctest: +SKIP
        ...     "vilt-vqa-ticket", base_model="dandelin/vilt-b32-mlm", adapter="vilt",
        ...     method="imp", amount=0.1, rounds=7, task="vqa")
    """
    info = TicketInfo.from_kwargs(card_info)
    return _save(mask, Path(save_directory), info, checkpoint)


def _save(
    mask: Mask, folder: Path, info: TicketInfo, checkpoint: Checkpoint | None, repo_id: str = ""
) -> Path:
    if not isinstance(mask, Mask):
        raise ArgumentError(f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        raise ArgumentError(
            f"`checkpoint`: expected a vlticket.Checkpoint, found {type(checkpoint).__name__}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    mask.save(folder / MASK_FILE, metadata={"base_model": info.base_model or ""})
    files = {MASK_FILE: _file_record(folder / MASK_FILE)}
    if checkpoint is not None:
        checkpoint.save(folder / CHECKPOINT_FILE)
        files[CHECKPOINT_FILE] = _file_record(folder / CHECKPOINT_FILE)
    config = _config(mask, info, checkpoint, files)
    _files.atomic_write_bytes(folder / CONFIG_FILE, _config_json(config).encode())
    _files.atomic_write_bytes(folder / CARD_FILE, _model_card(config, repo_id).encode())
    return folder


def _config(
    mask: Mask, info: TicketInfo, checkpoint: Checkpoint | None, files: dict
) -> dict[str, Any]:
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
            "groups": group_sparsity(mask, info.adapter),
        },
        "task": info.task,
        "metric": {"name": info.metric, "score": info.score, "dense_score": info.dense_score},
        "license": info.license,
        "files": files,
    }
    if checkpoint is not None:
        config["checkpoint"] = {n: list(s) for n, s in checkpoint.shapes().items()}
    return config


def _config_json(config: dict[str, Any]) -> str:
    text = json.dumps(config, indent=2)
    # One shape per line ("[768, 768]") keeps a fingerprint of hundreds of tensors readable.
    # JSON strings hold no raw newline, so only whitespace json.dumps added is collapsed.
    shape = re.compile(r"\[\n\s+([\d,\s]*?)\n\s*\]")
    return shape.sub(lambda m: f"[{' '.join(m[1].split())}]", text) + "\n"


def _model_card(config: dict[str, Any], repo_id: str) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    base, search, sparsity = config["base_model"]["id"], config["search"], config["sparsity"]
    data = ModelCardData(
        library_name="vlticket",
        base_model=base,
        license=config["license"],
        tags=["lottery-ticket", "pruning-mask", *([config["task"]] if config["task"] else [])],
    )
    method = {
        "imp": "iterative magnitude pruning",
        "one-shot": "one-shot magnitude pruning",
        "random": "random pruning",
    }.get(search["method"] or "", "an unrecorded method")
    found = [f"Found by {method}"] + [
        text.format(search[key])
        for key, text in (
            ("amount", "{:.0%} of the remaining weights pruned per round"),
            ("rounds", "{} rounds"),
            ("rewind_step", "weights rewound to step {}"),
            ("scope", "{} ranking"),
            ("seed", "seed {}"),
        )
        if search[key] is not None
    ]
    metric = config["metric"]
    result = ""
    if config["task"] or metric["score"] is not None:
        result = f"Task: {config['task'] or 'unrecorded'}"
        if metric["score"] is not None:
            result += f"; {metric['name'] or 'score'} {metric['score']:.4g}"
            if metric["dense_score"] is not None:
                result += f" (dense model: {metric['dense_score']:.4g})"
        result += ".\n\n"
    rows = "\n".join(
        f"| {g} | {s['weights']:,} | {s['kept']:,} | {s['sparsity']:.2%} |"
        for g, s in sparsity["groups"].items()
    )
    body = (
        f"# Lottery ticket{f' for {base}' if base else ''}\n\n"
        f"A binary pruning mask (a *lottery ticket*) made with vlticket. It keeps "
        f"{sparsity['kept']:,} of {sparsity['weights']:,} weights (sparsity "
        f"{sparsity['overall']:.2%}). {', '.join(found)}.\n\n{result}"
        "## Use\n\n```python\nimport vlticket.hub\n\n"
        f"ticket = vlticket.hub.load_ticket({json.dumps(repo_id or '<repo_id>')})\n"
        "ticket.apply(model)  # checks names and shapes first, then zeroes the pruned weights\n"
        "```\n\n## Sparsity\n\n| group | weights | kept | sparsity |\n|---|---:|---:|---:|\n"
        f"| **all** | {sparsity['weights']:,} | {sparsity['kept']:,} | "
        f"{sparsity['overall']:.2%} |\n{rows}\n"
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _file_record(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- load ---------------------------------------------------------------------------------------
def load_ticket(
    repo_id_or_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    checkpoint: bool = False,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Ticket:
    """Load a ticket from a local folder or a Hub repo, validating every file against its config.

    Args:
        repo_id_or_dir: a folder written by :func:`save_pretrained`, or a Hub repo id.
        revision: branch, tag or commit of the Hub repo (default ``main``).
        checkpoint: also load ``checkpoint.safetensors`` when the ticket has one.
        cache_dir, force_download, token, local_files_only: as in
            ``huggingface_hub.snapshot_download``; ``HF_HUB_OFFLINE=1`` serves from the cache.

    Example:
        >>> ticket = vlticket.hub.load_ticket("user/vilt-vqa", revision="v1")  # doctest: +SKIP
        >>> ticket.apply(model)                                              # doctest: +SKIP
    """
    files = [CONFIG_FILE, MASK_FILE] + ([CHECKPOINT_FILE] if checkpoint else [])
    folder = _local_or_download(
        repo_id_or_dir,
        files,
        revision=revision,
        cache_dir=cache_dir,
        force_download=force_download,
        token=token,
        local_files_only=local_files_only,
    )
    return _load(folder, checkpoint)


def from_pretrained(
    repo_id_or_dir: str | os.PathLike, *, revision: str | None = None, **kwargs: Any
) -> Mask:
    """The mask of a ticket folder or Hub repo; ``kwargs`` as in :func:`load_ticket`.

    Example:
        >>> mask = vlticket.Mask.from_pretrained("user/vilt-vqa-ticket")  # doctest: +SKIP
    """
    return load_ticket(repo_id_or_dir, revision=revision, checkpoint=False, **kwargs).mask


def download_ticket(
    repo_id: str, local_dir: str | os.PathLike, *, revision: str | None = None, **kwargs: Any
) -> Path:
    """Download a ticket repo's files into ``local_dir`` and validate them; returns the folder.

    ``kwargs`` are ``cache_dir``, ``force_download``, ``token``, ``local_files_only``.

    Example:
        >>> vlticket.hub.download_ticket("user/vilt-vqa", "./vilt-vqa")  # doctest: +SKIP
    """
    from huggingface_hub import snapshot_download

    import vlticket

    _check_repo_id(repo_id)
    path = snapshot_download(
        repo_id,
        revision=revision,
        local_dir=local_dir,
        allow_patterns=list(TICKET_FILES),
        library_name="vlticket",
        library_version=vlticket.__version__,
        **kwargs,
    )
    _load(Path(path), with_checkpoint=True)
    return Path(path)


def _local_or_download(source: str | os.PathLike, files: list[str], **kwargs: Any) -> Path:
    if Path(source).is_dir():
        if kwargs.get("revision") is not None:
            logger.warning("`revision` is ignored for the local folder %s", source)
        return Path(source)
    from huggingface_hub import snapshot_download

    import vlticket

    repo_id = _check_repo_id(str(source))
    path = snapshot_download(
        repo_id,
        allow_patterns=files,
        library_name="vlticket",
        library_version=vlticket.__version__,
        **kwargs,
    )
    return Path(path)


def _check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ArgumentError(
            f"{repo_id!r} is neither an existing folder nor a Hub repo id like 'user/name'"
        ) from e
    return repo_id


def _load(folder: Path, with_checkpoint: bool) -> Ticket:
    config = _read_config(folder / CONFIG_FILE)
    fingerprint = {n: tuple(s) for n, s in config["fingerprint"].items()}
    path = _checked_file(folder, MASK_FILE, config)
    _, meta = _files.read_header(path)
    _files.require_format(path, meta, "vlticket.mask", {"1"})
    try:
        shapes = {str(n): tuple(s) for n, s in json.loads(meta["shapes"]).items()}
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise FileFormatError(f"{str(path)!r}: mask metadata has no valid 'shapes'") from e
    _same_layout(fingerprint, shapes, path)
    mask = Mask.load(path)
    ckpt = None
    if with_checkpoint and CHECKPOINT_FILE in config["files"]:
        path = _checked_file(folder, CHECKPOINT_FILE, config)
        header, _ = _files.read_header(path)
        expected = {n: tuple(s) for n, s in config.get("checkpoint", {}).items()}
        _same_layout(expected, {n: tuple(e["shape"]) for n, e in header.items()}, path)
        ckpt = Checkpoint.load(path)
    return Ticket(mask, config, ckpt, folder)


def _same_layout(expected: dict, found: dict, path: Path) -> None:
    """The file's names and shapes must be the config's, first difference named."""
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


def _checked_file(folder: Path, name: str, config: dict) -> Path:
    """Size and SHA-256 against the config, before the file is parsed at all."""
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


def _read_config(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FileFormatError(f"no ticket config at {str(path)!r}: {e.strerror}") from e
    if size > MAX_CONFIG_BYTES:
        raise FileFormatError(f"{str(path)!r} is {size} bytes, over {MAX_CONFIG_BYTES}")
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{str(path)!r} is not JSON ({e})") from e
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise FileFormatError(f"{str(path)!r} is not a {CONFIG_FORMAT} config")
    if config.get("format_version") != CONFIG_VERSION:
        raise FileFormatError(
            f"{str(path)!r}: config format version {config.get('format_version')!r} is not "
            f"supported (this vlticket reads {CONFIG_VERSION})"
        )
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


def _base_id(config: Mapping[str, Any]) -> str | None:
    base = config.get("base_model")
    return base.get("id") if isinstance(base, dict) else None


# -- push ---------------------------------------------------------------------------------------
def push_to_hub(
    mask: Mask,
    repo_id: str,
    *,
    checkpoint: Checkpoint | None = None,
    commit_message: str = "Upload vlticket mask",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    **card_info: Any,
) -> str:
    """Save the ticket into a temporary folder and upload it to ``repo_id`` in one commit.

    Args:
        mask, checkpoint, card_info: as in :func:`save_pretrained`.
        repo_id: the Hub repo (created if missing).
        commit_message: the commit's summary.
        private: visibility of a newly created repo.
        token: Hub token (default: the locally saved one, or ``HF_TOKEN``).
        revision: branch to commit to (created from ``main`` if missing).
        create_pr: open a pull request instead of committing directly.

    Returns the commit URL.

    Example:
        >>> mask.push_to_hub("user/vilt-vqa", base_model="dandelin/vilt-b32-mlm")  # doctest: +SKIP
    """
    info = TicketInfo.from_kwargs(card_info)
    _check_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _save(mask, Path(tmp), info, checkpoint, repo_id=repo_id)
        return _upload(folder, repo_id, commit_message, private, token, revision, create_pr)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload vlticket mask",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload an existing ticket folder (validated first) in one commit; returns the commit URL.

    Only the ticket's own files are uploaded; arguments as in :func:`push_to_hub`.

    Example:
        >>> vlticket.hub.push_folder("./vilt-vqa", "user/vilt-vqa")  # doctest: +SKIP
    """
    _check_repo_id(repo_id)
    if not Path(folder).is_dir():
        raise ArgumentError(f"`folder`: {str(folder)!r} is not a folder")
    _load(Path(folder), with_checkpoint=True)
    return _upload(Path(folder), repo_id, commit_message, private, token, revision, create_pr)


def _upload(
    folder: Path,
    repo_id: str,
    commit_message: str,
    private: bool | None,
    token: str | None,
    revision: str | None,
    create_pr: bool,
) -> str:
    from huggingface_hub import HfApi

    import vlticket

    api = HfApi(token=token, library_name="vlticket", library_version=vlticket.__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision not in (None, "main") and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message,
        revision=revision,
        create_pr=create_pr,
        allow_patterns=list(TICKET_FILES),
    )
    return str(commit)
