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
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _files
from .._naming import AdapterArg, check_layout, named_tensors
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


def save_sparse(
    model: nn.Module, mask: Mask, folder: str | os.PathLike, *, adapter: AdapterArg = None
) -> Path:
    """Write ``model`` pruned by ``mask`` as a sparse folder; returns the folder.

    The kept values of every masked tensor are stored in its own dtype next to the 1-bit mask,
    so a float32 tensor at sparsity s takes (1 - s) * 32 + 1 bits per weight. The files are
    byte-for-byte the same for the same model and mask.

    Args:
        model: the model; its pruned weights need not be zero (the mask decides).
        mask: the ticket's mask, by the model's parameter names or ``adapter``'s names.
        folder: where to write (created if missing).
        adapter: match the mask's canonical names through this adapter.

    Example:
        >>> model = torch.nn.Linear(8, 8)
        >>> mask = vlticket.prune_magnitude(model, sparsity=0.7)
        >>> vlticket.save_sparse(model, mask, "tiny-sparse")  # doctest: +SKIP
    """
    if not isinstance(mask, Mask):
        raise ArgumentError(f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}")
    keys = _state_keys(model, mask, adapter)
    state = {k: t.detach().to("cpu") for k, t in model.state_dict().items()}
    tensors = {}
    for key, t in state.items():
        name = keys.get(key)
        tensors[key] = t.reshape(-1)[mask[name].to("cpu").reshape(-1)] if name else t
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (SPARSE_CONFIG, MODEL_CONFIG):  # a half-rewritten folder must not validate
        (folder / stale).unlink(missing_ok=True)
    mask.save(folder / MASK_FILE)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    _files.save_safetensors(tensors, meta, folder / WEIGHTS_FILE)
    files = [MASK_FILE, WEIGHTS_FILE]
    model_config = getattr(model, "config", None)
    if hasattr(model_config, "to_json_string"):
        _files.atomic_write_bytes(folder / MODEL_CONFIG, model_config.to_json_string().encode())
        files.append(MODEL_CONFIG)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "tensors": {name: key for key, name in keys.items()},
        "shapes": {k: list(t.shape) for k, t in state.items()},
        "dtypes": {k: str(t.dtype).removeprefix("torch.") for k, t in state.items()},
        "files": {f: file_record(folder / f) for f in files},
    }
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    _files.atomic_write_bytes(folder / SPARSE_CONFIG, text.encode())
    return folder


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
    state, record = read_sparse(folder)
    if model is None:
        model = _rebuild(folder, record)
        model.load_state_dict(state, assign=True)  # keeps each tensor's saved dtype
        model.tie_weights()
        return model
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"`model`: expected an nn.Module, found {type(model).__name__}")
    current = model.state_dict()
    check_layout(state, current, what=f"the sparse folder {str(folder)!r}", where="`model`")
    for key, t in state.items():
        if t.dtype != current[key].dtype:
            raise ShapeMismatchError(
                f"tensor {key!r}: the sparse folder holds {t.dtype}, `model` has "
                f"{current[key].dtype}"
            )
    model.load_state_dict(state)
    return model


def push_sparse(
    model: nn.Module,
    mask: Mask,
    repo_id: str,
    *,
    adapter: AdapterArg = None,
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


def read_sparse(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The dense, masked ``state_dict`` of a sparse folder and its checked record."""
    folder = Path(folder)
    record = _read_record(folder)
    for name in record["files"]:
        _check_file(folder, name, record["files"][name])
    shapes = {k: tuple(s) for k, s in record["shapes"].items()}
    mask = _read_mask(folder, record, shapes)
    header, meta = _files.read_header(folder / WEIGHTS_FILE)
    _files.require_format(folder / WEIGHTS_FILE, meta, FORMAT, {str(FORMAT_VERSION)})
    pruned = {key: name for name, key in record["tensors"].items()}
    expected = {k: (int(mask[pruned[k]].sum()),) if k in pruned else s for k, s in shapes.items()}
    found = {k: tuple(e["shape"]) for k, e in header.items()}
    where = f"{str(folder / WEIGHTS_FILE)!r}"
    check_layout(expected, found, what=SPARSE_CONFIG, where=where, error=FileFormatError)
    stored = _files.load_tensors(folder / WEIGHTS_FILE, list(shapes))
    state = {}
    for key, t in stored.items():
        if str(t.dtype).removeprefix("torch.") != record["dtypes"].get(key):
            raise FileFormatError(f"{where}: tensor {key!r} is {t.dtype}, {SPARSE_CONFIG} says")
        if key in pruned:
            dense = torch.zeros(shapes[key], dtype=t.dtype)
            dense.reshape(-1)[mask[pruned[key]].reshape(-1)] = t
            t = dense
        state[key] = t
    return state, record


# -- helpers --------------------------------------------------------------------------------------
def _state_keys(model: nn.Module, mask: Mask, adapter: AdapterArg) -> dict[str, str]:
    """state_dict key -> mask name, for every masked tensor, checked against the model."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"`model`: expected an nn.Module, found {type(model).__name__}")
    found = named_tensors(model, adapter=adapter, param="model")
    check_layout(mask.shapes(), found, what="the mask", where="`model`", exact=False)
    by_id = {id(t): k for k, t in model.state_dict(keep_vars=True).items()}
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


def _check_file(folder: Path, name: str, want: Any) -> None:
    path = folder / name
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FileFormatError(f"cannot read {str(path)!r}: {e.strerror}") from e
    if not isinstance(want, dict) or size != want.get("size") or sha256(path) != want.get("sha256"):
        raise FileFormatError(
            f"{str(path)!r} does not match its size and SHA-256 in {SPARSE_CONFIG}"
        )


def _read_mask(folder: Path, record: dict[str, Any], shapes: dict[str, tuple]) -> Mask:
    path = folder / MASK_FILE
    found, _ = mask_file.read_shapes(path)
    expected = {name: shapes[key] for name, key in record["tensors"].items()}
    check_layout(expected, found, what=SPARSE_CONFIG, where=str(path), error=FileFormatError)
    return Mask.load(path)


def _rebuild(folder: Path, record: dict[str, Any]) -> nn.Module:
    """A transformers model of the recorded class, built from ``config.json``."""
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
    config = cls.config_class.from_json_file(str(folder / MODEL_CONFIG))
    return cls(config).eval()


__all__ = ["SPARSE_FILES", "load_sparse", "push_sparse", "read_sparse", "save_sparse"]
