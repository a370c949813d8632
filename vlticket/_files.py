"""Safe safetensors files: atomic writes, and headers validated before any tensor is read.

Only safetensors (and JSON, elsewhere) is ever read: no pickle, so a downloaded file runs no code.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .errors import FileFormatError

MAX_HEADER_BYTES = 64 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


@contextmanager
def _atomic(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is synced and renamed onto it.

    Readers never see a half-written file, and a failed write leaves the old file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide shared masks from the group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with _atomic(path) as tmp:
        Path(tmp).write_bytes(data)


_TORCH_DTYPES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}


def save_safetensors(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | os.PathLike
) -> None:
    """Write a safetensors file atomically, byte for byte the same for the same input.

    safetensors' own writer orders the metadata as a hash map does, so saving one mask twice
    gave two SHA-256s; here the header lists tensors in the given order and metadata sorted.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    data = []
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _TORCH_DTYPES:
            raise TypeError(f"tensor {name!r}: dtype {t.dtype} has no safetensors code here")
        raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        header[name] = {
            "dtype": _TORCH_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + raw.size],
        }
        data.append(raw)
        offset += raw.size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with _atomic(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in data:
            f.write(memoryview(raw))


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Parse and validate a safetensors header without reading any tensor data.

    Returns ``(entries, metadata)``, where entries maps tensor name to dtype/shape/data_offsets.
    Refuses files whose header is oversized, not JSON, or whose offsets do not tile the data.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise FileFormatError(f"cannot read {str(path)!r}: {e.strerror}") from e
    if size < 8:
        raise FileFormatError(f"{str(path)!r} is not a safetensors file: only {size} bytes")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise FileFormatError(
                    f"{str(path)!r} is not a valid safetensors file: header length {n} bytes, "
                    f"file holds {size - 8} after the length field (limit {MAX_HEADER_BYTES})"
                )
            raw = f.read(n)
    except OSError as e:
        raise FileFormatError(f"cannot read {str(path)!r}: {e.strerror}") from e
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FileFormatError(f"{str(path)!r}: safetensors header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise FileFormatError(f"{str(path)!r}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise FileFormatError(f"{str(path)!r}: metadata must map strings to strings")
    data_len = size - 8 - n
    spans = []
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            nbytes = _DTYPE_BYTES[dtype]
            count = 1
            for d in shape:
                if not isinstance(d, int) or d < 0:
                    raise TypeError
                count *= d
        except (KeyError, TypeError, ValueError) as e:
            raise FileFormatError(f"{str(path)!r}: malformed header entry for {name!r}") from e
        if not (isinstance(start, int) and isinstance(end, int)) or end - start != count * nbytes:
            raise FileFormatError(
                f"{str(path)!r}: tensor {name!r} declares shape {shape} of {dtype} but spans "
                f"bytes {start}..{end}"
            )
        spans.append((start, end))
    pos = 0
    for start, end in sorted(spans):
        if start != pos:
            raise FileFormatError(f"{str(path)!r}: tensor data has gaps or overlaps")
        pos = end
    if pos != data_len:
        raise FileFormatError(
            f"{str(path)!r} is truncated or padded: header declares {pos} data bytes, "
            f"file holds {data_len}"
        )
    return header, metadata


def load_tensors(path: str | os.PathLike, names: list[str]) -> dict[str, torch.Tensor]:
    """Read the named tensors of a file whose header was validated by :func:`read_header`."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in names}
    except Exception as e:  # safetensors raises its own error types
        raise FileFormatError(f"{str(path)!r}: cannot read tensors ({e})") from e


def require_format(
    path: str | os.PathLike, metadata: dict[str, str], kind: str, versions: set[str]
) -> None:
    """Refuse a file written for another purpose or by an unknown format version."""
    found = metadata.get("format")
    if found != kind:
        raise FileFormatError(f"{str(path)!r} is not a {kind} file: metadata 'format' is {found!r}")
    version = metadata.get("format_version")
    if version not in versions:
        raise FileFormatError(
            f"{str(path)!r}: {kind} format version {version!r} is not supported "
            f"(this vlticket reads {sorted(versions)})"
        )
