"""Sparse checkpoints: a pruned model in (1 - s) * b + ~1 bits per weight, as a Hub-ready folder.

A sparse folder (locally, or as a Hub model repo) holds:

- ``mask.safetensors``: the ticket's bit-packed mask (see :mod:`vlticket.core.mask_file`);
- ``sparse.safetensors``: for every pruned tensor only its kept values, in the tensor's own
  dtype and the mask's row-major order; every other tensor of the ``state_dict`` as it is;
- ``config.json``: the transformers config, when the model has one, to rebuild the model;
- ``vlticket_sparse.json``, written last: the format, the model class, which state key each mask
  name is, and the size and SHA-256 of every file. A folder is trusted only as far as it agrees
  with it; every file is checked before a byte of a model changes.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from .. import _files
from .._naming import AUTO, AdapterArg, check_layout, named_tensors, unwrap
from ..core import Mask, mask_file
from ..errors import ArgumentError, FileFormatError, ShapeMismatchError
from . import remote
from .config import MASK_FILE, file_record, sha256

SPARSE_CONFIG = "vlticket_sparse.json"
WEIGHTS_FILE = "sparse.safetensors"
MODEL_CONFIG = "config.json"
SPARSE_FILES = (SPARSE_CONFIG, WEIGHTS_FILE, MASK_FILE, MODEL_CONFIG)
FORMAT = "vlticket.sparse"
FORMAT_VERSION = 1
_MAX_JSON_BYTES = 16 * 1024 * 1024
_READ_TRIES = 5
_SAME_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def save_sparse(
    model: nn.Module, mask: Mask, folder: str | os.PathLike, *, adapter: AdapterArg = AUTO
) -> Path:
    """Write ``model`` pruned by ``mask`` as a sparse folder; returns the folder.

    The kept values of every masked tensor are stored in its own dtype next to the 1-bit mask,
    so a float32 tensor at sparsity s takes (1 - s) * 32 + 1 bits per weight. The files are
    byte-for-byte the same for the same model and mask.

    Args:
        model: the model; its pruned weights need not be zero (the mask decides).
        mask: the ticket's mask, by the model's parameter names or ``adapter``'s names.
        folder: where to write: a new or empty folder, or a sparse folder to replace (it is
            swapped whole; any other folder is refused, so no file of yours is deleted).
        adapter: match the mask's canonical names through this adapter; by default the one
            the mask recorded (``None``: parameter names).

    Example:
        >>> model = torch.nn.Linear(8, 8)
        >>> mask = vlticket.prune_magnitude(model, sparsity=0.7)
        >>> vlticket.save_sparse(model, mask, "tiny-sparse")  # doctest: +SKIP
    """
    if not isinstance(mask, Mask):
        raise ArgumentError(f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}")
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"`model`: expected an nn.Module, found {type(model).__name__}")
    folder = Path(folder)
    _files.check_replaceable(
        folder, marker=SPARSE_CONFIG, files=SPARSE_FILES, param="`folder`", kind="a sparse folder"
    )
    model = unwrap(model)  # keyed by the inner model's names, as masks are
    keys = _state_keys(model, mask, mask.naming(model, adapter))
    live = model.state_dict(keep_vars=True)
    _check_savable(live)
    state = {k: t.detach().to("cpu") for k, t in live.items()}
    masked = {id(live[key]): name for key, name in keys.items()}
    tensors = {}
    for key, t in state.items():
        name = masked.get(id(live[key]))
        if key in keys:
            tensors[key] = _kept_values(t, mask[name])
        elif name is not None:  # another name of a masked tensor (tied weights): masked too
            tensors[key] = t.masked_fill(~mask[name].to("cpu"), 0)
        else:
            tensors[key] = t
    model_config = getattr(model, "config", None)
    config_json = None
    if hasattr(model_config, "to_json_string"):
        config_json = model_config.to_json_string().encode()
    # Written into a staging folder and swapped in whole: a failed or killed save leaves the
    # previous checkpoint as it was, and a reader never sees a mix of the two.
    with _files.staged_folder(folder) as stage:
        _write_files(stage, model, mask, keys, state, tensors, config_json)
    return folder


def _write_files(
    folder: Path,
    model: nn.Module,
    mask: Mask,
    keys: dict[str, str],
    state: dict[str, torch.Tensor],
    tensors: dict[str, torch.Tensor],
    config_json: bytes | None,
) -> None:
    """Write a sparse folder's files into the empty ``folder``, the record last."""
    mask.save(folder / MASK_FILE)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    _files.save_safetensors(tensors, meta, folder / WEIGHTS_FILE)
    files = [MASK_FILE, WEIGHTS_FILE]
    if config_json is not None:
        _files.atomic_write_bytes(folder / MODEL_CONFIG, config_json)
        files.append(MODEL_CONFIG)
    with ThreadPoolExecutor(len(files)) as pool:  # hashlib releases the GIL
        records = {f: pool.submit(file_record, folder / f) for f in files}
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "tensors": {name: key for key, name in keys.items()},
        "shapes": {k: list(t.shape) for k, t in state.items()},
        "dtypes": {k: str(t.dtype).removeprefix("torch.") for k, t in state.items()},
        "files": {f: r.result() for f, r in records.items()},
    }
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    _files.atomic_write_bytes(folder / SPARSE_CONFIG, text.encode())


def load_sparse(
    repo_id_or_dir: str | os.PathLike, model: nn.Module | None = None, **download: Any
) -> nn.Module:
    """Load a sparse folder (or Hub repo): exactly the masked weights, bit for bit.

    Every file is checked against ``vlticket_sparse.json`` (size, SHA-256, safetensors header,
    names, shapes, dtypes) before the model is touched.

    Args:
        repo_id_or_dir: a folder written by :func:`save_sparse`, or a Hub repo id.
        model: fill this model in place; its ``state_dict`` must have the same names and
            shapes. Default: rebuild a transformers model from ``config.json``.
        **download: ``revision``, ``cache_dir``, ``token``... as in
            ``huggingface_hub.snapshot_download``.

    Example:
        >>> model = vlticket.load_sparse("tiny-sparse", torch.nn.Linear(8, 8))  # doctest: +SKIP
    """
    folder = remote.local_or_download(repo_id_or_dir, list(SPARSE_FILES), **download)
    if model is None:
        _rebuild_class(_read_record(Path(folder)))  # refuse before reading a byte of weights
        state, record = _read_sparse(folder)
        model = _rebuild(folder, record)
        model.load_state_dict(state, assign=True)  # keeps each tensor's saved dtype
        model.tie_weights()
        return model
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"`model`: expected an nn.Module, found {type(model).__name__}")
    model = unwrap(model)  # the folder holds the inner model's names
    checked = _read_checked(Path(folder))
    current = model.state_dict()
    for key, t in current.items():
        if t.device.type == "meta":  # load_state_dict would skip it and leave no values
            raise ArgumentError(
                f"`model`: tensor {key!r} is on the meta device, with no storage to fill; "
                "build the model on a real device (`model.to_empty(device='cpu')`), or load "
                "`load_sparse_state_dict(...)` with `model.load_state_dict(state, assign=True)`"
            )
    check_layout(
        checked.shapes, current, what=f"the sparse folder {str(folder)!r}", where="`model`"
    )
    for key, t in checked.stored.items():
        if t.dtype != current[key].dtype:
            raise ShapeMismatchError(
                f"tensor {key!r}: the sparse folder holds {t.dtype}, `model` has "
                f"{current[key].dtype}"
            )
    targets = _fill_targets(checked, current)
    dense = {k: t for k, t in checked.stored.items() if k not in checked.bits}
    model.load_state_dict(dense, strict=False)  # every name was checked above
    # Pruned tensors are written straight into the model's own storage (no dense copy), last:
    # folders saved before tied twins were stored masked hold the other name unpruned, and the
    # mask must win.
    with torch.no_grad():
        _fill_all(targets, checked)
    return model


def push_sparse(
    model: nn.Module,
    mask: Mask,
    repo_id: str,
    *,
    adapter: AdapterArg = AUTO,
    commit_message: str = "Upload vlticket sparse checkpoint",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """:func:`save_sparse` into a temporary folder and upload it in one commit; returns the
    commit URL. Arguments as in :meth:`vlticket.Ticket.push_to_hub`."""
    remote.check_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_sparse(model, mask, tmp, adapter=adapter)
        files = (SPARSE_CONFIG, *json.loads((folder / SPARSE_CONFIG).read_text())["files"])
        return remote.upload(
            folder, repo_id, commit_message, private, token, revision, create_pr, files
        )


def load_sparse_state_dict(
    repo_id_or_dir: str | os.PathLike, **download: Any
) -> dict[str, torch.Tensor]:
    """The dense, masked ``state_dict`` of a sparse folder (or Hub repo), checked as in
    :func:`load_sparse`; for loaders that take a state dict, such as transformers'
    ``from_pretrained(None, config=..., state_dict=...)`` with its ``dtype`` and
    ``device_map``.

    Args:
        repo_id_or_dir: a folder written by :func:`save_sparse`, or a Hub repo id.
        **download: ``revision``, ``cache_dir``, ``token``... as in
            ``huggingface_hub.snapshot_download``.

    Example:
        >>> state = vlticket.load_sparse_state_dict("tiny-sparse")  # doctest: +SKIP
        >>> config = transformers.BertConfig.from_pretrained("tiny-sparse")  # doctest: +SKIP
        >>> model = transformers.BertModel.from_pretrained(
        ...     None, config=config, state_dict=state
        ... )  # doctest: +SKIP
    """
    folder = remote.local_or_download(repo_id_or_dir, list(SPARSE_FILES), **download)
    return _read_sparse(folder)[0]


def _read_sparse(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The dense, masked ``state_dict`` of a sparse folder and its checked record."""
    checked = _read_checked(Path(folder))
    state = {}
    for key, t in checked.stored.items():
        if key in checked.bits:
            state[key] = torch.empty(checked.shapes[key], dtype=t.dtype)
        else:
            state[key] = t.clone()  # its own memory, not a view of the file
    _fill_all({key: state[key] for key in checked.bits}, checked)
    return state, checked.record


# -- helpers --------------------------------------------------------------------------------------
def _check_savable(live: dict[str, torch.Tensor]) -> None:
    """Refuse, before any file is touched, a tensor a safetensors file cannot hold."""
    for key, t in live.items():
        if t.device.type == "meta":
            raise ArgumentError(
                f"`model`: tensor {key!r} is on the meta device and has no values to save"
            )
        if t.layout != torch.strided:
            raise ArgumentError(
                f"`model`: tensor {key!r} is {t.layout}; a sparse checkpoint holds strided "
                "tensors (save a dense model and its mask, and export after loading)"
            )
        if t.dtype not in _files.SAFETENSORS_DTYPES:
            held = sorted(str(d).removeprefix("torch.") for d in _files.SAFETENSORS_DTYPES)
            raise ArgumentError(
                f"`model`: tensor {key!r} is {t.dtype}; a sparse checkpoint holds {held}"
            )


def _kept_values(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The kept entries of ``t`` in row-major order (numpy's nonzero: torch's is slower)."""
    kept = torch.from_numpy(np.flatnonzero(keep.to("cpu").numpy()))
    return t.reshape(-1).index_select(0, kept)


def _state_keys(model: nn.Module, mask: Mask, adapter: AdapterArg) -> dict[str, str]:
    """state_dict key -> mask name, for every masked tensor, checked against the model."""
    found = named_tensors(model, adapter=adapter, param="model")
    check_layout(mask.shapes(), found, what="the mask", where="`model`", exact=False)
    by_id = {}  # a tied tensor is saved sparse under its first name, as named_parameters has it
    for k, t in model.state_dict(keep_vars=True).items():
        by_id.setdefault(id(t), k)
    keys = {}
    for name in mask:
        key = by_id.get(id(found[name]))
        if key is None:
            raise ArgumentError(f"mask tensor {name!r} is not in `model.state_dict()`")
        keys[key] = name
    return keys


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / SPARSE_CONFIG
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise FileFormatError(f"{str(path)!r} is over {_MAX_JSON_BYTES} bytes")
        record = json.loads(path.read_bytes())
    except OSError as e:
        raise FileFormatError(f"no sparse checkpoint at {str(path)!r}: {e.strerror}") from e
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FileFormatError(f"{str(path)!r} is not JSON ({e})") from e
    try:
        ok = (
            record["format"] == FORMAT
            and record["format_version"] == FORMAT_VERSION
            and isinstance(record["model_class"], str)
            and all(isinstance(v, str) for v in record["tensors"].values())
            and all(isinstance(v, str) for v in record["dtypes"].values())
            and set(record["dtypes"]) == set(record["shapes"])
            and set(record["tensors"].values()) <= set(record["shapes"])
            and {MASK_FILE, WEIGHTS_FILE} <= set(record["files"]) <= set(SPARSE_FILES)
            and all(
                isinstance(s, list) and all(isinstance(d, int) and d >= 0 for d in s)
                for s in record["shapes"].values()
            )
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise FileFormatError(f"{str(path)!r} is not a {FORMAT} record ({e!r})") from e
    if not ok:
        raise FileFormatError(
            f"{str(path)!r} is not a {FORMAT} version {FORMAT_VERSION} record, or is malformed"
        )
    return record


class _Checked(NamedTuple):
    """A sparse folder read and checked, nothing of a model touched yet."""

    record: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]  # state key -> dense shape
    stored: dict[str, torch.Tensor]  # state key -> the tensor as stored (kept values if pruned)
    bits: dict[str, np.ndarray]  # pruned state key -> its mask bits, packed as in the file


def _read_checked(folder: Path) -> _Checked:
    """Read every file of ``folder`` and check it against the record.

    :func:`save_sparse` swaps a folder whole and never changes a file inside one. The folder is
    held open while it is read, and a read during which the path stopped naming that folder is
    read again: a reader gets the old checkpoint or the new one, never a mix of the two.
    """
    for attempt in range(_READ_TRIES):
        try:
            dir_fd = _files.open_dir(folder)
        except OSError:
            if attempt < _READ_TRIES - 1 and _files.being_swapped(folder):
                time.sleep(0.01 * (attempt + 1))  # between the two renames of a swap
                continue
            dir_fd = None
        if dir_fd is None:  # nothing to hold (missing, or no directory handles here)
            return _read_once(folder)
        try:
            checked = _read_once(folder)
        except (FileFormatError, OSError):
            if attempt == _READ_TRIES - 1 or not _files.replaced_since(folder, dir_fd):
                raise
        else:
            if not _files.replaced_since(folder, dir_fd):
                return checked
        finally:
            os.close(dir_fd)
        time.sleep(0.01 * (attempt + 1))
    raise FileFormatError(f"{str(folder)!r} was replaced during each of {_READ_TRIES} reads")


def _read_once(folder: Path) -> _Checked:
    """One read of ``folder``. The SHA-256 of each file is computed in background threads
    (hashlib releases the GIL) while the headers are parsed and the mask unpacked; all of it
    finishes before this returns. A file whose hash is wrong is reported as such, even when its
    header failed first."""
    record = _read_record(folder)
    for name, want in record["files"].items():
        _check_size(folder, name, want)
    with ThreadPoolExecutor(len(record["files"])) as pool:
        digests = {name: pool.submit(sha256, folder / name) for name in record["files"]}
        try:
            checked = _read_files(folder, record)
        except FileFormatError:
            _check_digests(folder, record, digests)
            raise
        _check_digests(folder, record, digests)
    return checked


def _read_files(folder: Path, record: dict[str, Any]) -> _Checked:
    shapes = {k: tuple(s) for k, s in record["shapes"].items()}
    bits = _read_bits(folder, record, shapes)
    header, meta = _files.read_header(folder / WEIGHTS_FILE)
    _files.require_format(folder / WEIGHTS_FILE, meta, FORMAT, {str(FORMAT_VERSION)})
    expected = {k: (_count(bits[k], math.prod(s)),) if k in bits else s for k, s in shapes.items()}
    found = {k: tuple(e["shape"]) for k, e in header.items()}
    where = f"{str(folder / WEIGHTS_FILE)!r}"
    check_layout(expected, found, what=SPARSE_CONFIG, where=where, error=FileFormatError)
    # Memory-mapped, as safetensors loads a dense checkpoint: the kept values are copied once,
    # from the page cache straight into their destination.
    with safe_open(folder / WEIGHTS_FILE, framework="pt") as f:
        stored = {key: f.get_tensor(key) for key in shapes}
    for key, t in stored.items():
        if str(t.dtype).removeprefix("torch.") != record["dtypes"].get(key):
            raise FileFormatError(f"{where}: tensor {key!r} is {t.dtype}, {SPARSE_CONFIG} says")
    return _Checked(record, shapes, stored, bits)


def _read_bits(
    folder: Path, record: dict[str, Any], shapes: dict[str, tuple]
) -> dict[str, np.ndarray]:
    """Pruned state key -> its mask bits as stored (bit-packed, little-endian, see
    :mod:`vlticket.core.mask_file`), after the mask file's header is checked."""
    path = folder / MASK_FILE
    found, _ = mask_file.read_shapes(path)
    expected = {name: shapes[key] for name, key in record["tensors"].items()}
    check_layout(expected, found, what=SPARSE_CONFIG, where=str(path), error=FileFormatError)
    packed = _files.load_tensors(path, list(record["tensors"]))
    return {key: packed[name].numpy() for name, key in record["tensors"].items()}


def _unpack(bits: np.ndarray, numel: int) -> np.ndarray:
    return np.unpackbits(bits, count=numel, bitorder="little").view(np.bool_)


def _count(bits: np.ndarray, numel: int) -> int:
    return int(np.count_nonzero(_unpack(bits, numel)))


def _fill_targets(checked: _Checked, current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's tensor for each pruned key, one per storage: keys tied in the model share
    one, and are filled once if the folder agrees on them, refused (before any write) if not."""
    targets: dict[str, torch.Tensor] = {}
    owner: dict[tuple[int, int], str] = {}
    for key in checked.bits:
        t = current[key]
        if t.numel() == 0:
            continue  # nothing to fill; empty tensors share no storage worth the name
        other = owner.setdefault((t.untyped_storage().data_ptr(), t.storage_offset()), key)
        if other == key:
            targets[key] = t
        elif not (
            np.array_equal(checked.bits[key], checked.bits[other])
            and torch.equal(checked.stored[key], checked.stored[other])
        ):
            raise ArgumentError(
                f"`model`: {other!r} and {key!r} are one tensor (tied) in `model`, but the "
                "sparse folder holds two different ones; load into a model that keeps them apart"
            )
    return targets


# Threads that fill at once: numpy releases the GIL in the index work (two threads fill
# BERT-base's tensors 1.9x faster than one), and each holds one tensor's unpacked mask and
# indices, so more threads would mostly add memory.
_FILL_THREADS = 4


def _fill_all(dests: dict[str, torch.Tensor], checked: _Checked) -> None:
    """:func:`_fill` every pruned tensor, a few at a time (see ``_FILL_THREADS``)."""
    workers = max(1, min(torch.get_num_threads(), _FILL_THREADS, len(dests)))
    with ThreadPoolExecutor(workers) as pool:
        done = [
            pool.submit(_fill, dest, checked.bits[key], checked.stored[key])
            for key, dest in dests.items()
        ]
        for future in done:
            future.result()  # re-raise a worker's error here


def _fill(dest: torch.Tensor, bits: np.ndarray, values: torch.Tensor) -> None:
    """Write ``values`` at the kept positions of ``dest`` and zero the rest, in place.

    One tensor per call, so its unpacked mask and indices stay small and reuse memory. numpy
    does the work on the bits (as integers of the same width, so bfloat16 too): its nonzero over
    bools is several times faster than torch's, its indexed store beats a boolean
    ``masked_scatter_`` (whose branches a random mask defeats), and it runs no parallel region,
    which on a busy machine costs torch's zero and index ops many times their work.
    """
    kept = np.flatnonzero(_unpack(bits, dest.numel()))
    direct = dest.device.type == "cpu" and dest.is_contiguous()
    flat = dest.view(-1) if direct else torch.empty(dest.numel(), dtype=dest.dtype)
    as_int = _SAME_WIDTH.get(flat.element_size())
    if as_int is None:  # e.g. complex128: no integer that wide
        flat.zero_()
        flat.index_copy_(0, torch.from_numpy(kept), values)
    else:
        target = flat.view(as_int).numpy()
        target.fill(0)
        target[kept] = values.view(as_int).numpy()
    if not direct:
        dest.copy_(flat.view(dest.shape))


def _check_size(folder: Path, name: str, want: Any) -> None:
    path = folder / name
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FileFormatError(f"cannot read {str(path)!r}: {e.strerror}") from e
    if not isinstance(want, dict) or size != want.get("size"):
        raise FileFormatError(
            f"{str(path)!r} does not match its size and SHA-256 in {SPARSE_CONFIG}"
        )


def _check_digests(folder: Path, record: dict[str, Any], digests: dict[str, Future]) -> None:
    for name, digest in digests.items():
        try:
            found = digest.result()
        except OSError as e:
            raise FileFormatError(f"cannot read {str(folder / name)!r}: {e.strerror}") from e
        if found != record["files"][name].get("sha256"):
            raise FileFormatError(
                f"{str(folder / name)!r} does not match its size and SHA-256 in {SPARSE_CONFIG}"
            )


def _rebuild_class(record: dict[str, Any]) -> type:
    """The transformers class a record names, or an error saying to pass the model."""
    module, _, cls_name = record["model_class"].rpartition(".")
    if not module.startswith("transformers.") or MODEL_CONFIG not in record["files"]:
        raise ArgumentError(
            f"the sparse folder holds a {record['model_class']} without a transformers "
            "config.json: pass the model to fill, `load_sparse(folder, model)`"
        )
    transformers = importlib.import_module("transformers")
    cls = getattr(transformers, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise FileFormatError(f"{record['model_class']!r} is not a transformers model class")
    return cls


def _rebuild(folder: Path, record: dict[str, Any]) -> nn.Module:
    """A transformers model of the recorded class, built from ``config.json``."""
    cls = _rebuild_class(record)
    config = cls.config_class.from_json_file(str(folder / MODEL_CONFIG))
    return cls(config).eval()


__all__ = ["SPARSE_FILES", "load_sparse", "load_sparse_state_dict", "push_sparse", "save_sparse"]
