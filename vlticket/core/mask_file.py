"""The mask file: a safetensors file holding each mask tensor bit-packed, 1 bit per weight.

Each tensor is stored as uint8 (little-endian bit order); the shapes, the format version and the
sparsity go in the string metadata. :func:`read_shapes` validates a file's header against its
own metadata before a byte of tensor data is read, so every loader checks a mask file the same
way.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
import torch

from .. import _files
from ..errors import ArgumentError, FileFormatError
from ._passes import count_true

FORMAT = "vlticket.mask"
FORMAT_VERSION = "1"


def save(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write bool ``tensors`` bit-packed to ``path`` atomically, with ``metadata`` added."""
    meta = dict(metadata or {})
    for key, value in meta.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            raise ArgumentError(
                f"`metadata`: safetensors metadata maps str to str, found {key!r}: {value!r}"
            )
    numel = sum(t.numel() for t in tensors.values())
    kept = sum(count_true(t) for t in tensors.values())
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        sparsity=repr(1.0 - kept / numel if numel else 0.0),
        shapes=json.dumps({n: list(t.shape) for n, t in tensors.items()}),
    )
    _files.save_safetensors({n: _pack(t) for n, t in tensors.items()}, meta, path)


def read_shapes(
    path: str | os.PathLike, f: BinaryIO | None = None
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """``(shapes, metadata)`` of a mask file, its header checked against its own metadata.

    ``f``: the file already opened by ``_files.open_regular`` (then ``path`` only names it).
    """
    shapes, meta, _ = _read_checked(path, f)
    return shapes, meta


def load(path: str | os.PathLike, f: BinaryIO | None = None) -> dict[str, torch.Tensor]:
    """The bool tensors of a mask file, after :func:`read_shapes` has validated it."""
    if f is None:
        with _files.open_regular(path) as f:
            return load(path, f)
    shapes, _, header = _read_checked(path, f)
    packed = _files.load_tensors(path, list(shapes), f=f, header=header)
    return {n: _unpack(packed[n], s) for n, s in shapes.items()}


def _read_checked(
    path: str | os.PathLike, f: BinaryIO | None
) -> tuple[dict[str, tuple[int, ...]], dict[str, str], dict[str, dict[str, Any]]]:
    header, meta = _files.read_header(path, f)
    _files.require_format(path, meta, FORMAT, {FORMAT_VERSION})
    try:
        shapes = json.loads(meta["shapes"])
        if not isinstance(shapes, dict):
            raise TypeError("'shapes' is not an object")
        shapes = {n: _shape(s) for n, s in shapes.items()}
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as e:
        raise FileFormatError(f"{str(path)!r}: mask metadata has no valid 'shapes' ({e})") from e
    if set(header) != set(shapes):
        raise FileFormatError(
            f"{str(path)!r}: tensors in the file do not match the shapes in its metadata"
        )
    for name, shape in shapes.items():
        entry = header[name]
        expected = [-(-math.prod(shape) // 8)]  # integer ceil: a float would overflow on 1e400
        if entry["dtype"] != "U8" or entry["shape"] != expected:
            raise FileFormatError(
                f"{str(path)!r}: tensor {name!r} should be U8 of shape {expected} for mask "
                f"shape {list(shape)}, found {entry['dtype']} {entry['shape']}"
            )
    return shapes, meta, header


def _shape(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > _files.MAX_DIMS:
        raise ValueError(f"bad shape {str(value)[:80]}")
    for d in value:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise ValueError(f"bad dimension {str(d)[:80]}")
    return tuple(value)


def _pack(t: torch.Tensor) -> torch.Tensor:
    bits = t.detach().to("cpu").contiguous().numpy().reshape(-1)
    return torch.from_numpy(np.packbits(bits, bitorder="little"))


def _unpack(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    bits = np.unpackbits(packed.numpy(), count=n, bitorder="little").view(np.bool_)
    return torch.from_numpy(bits.reshape(shape))
