"""Safe safetensors files: atomic writes, and headers validated before any tensor is read.

Only safetensors (and JSON, elsewhere) is ever read: no pickle, so a downloaded file runs no code.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import struct
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import ArgumentError, FileFormatError

MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_DIMS = 64  # more dimensions than any tensor torch can hold: a hostile header
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

    Readers never see a half-written file, and a failed write leaves the old file untouched and
    no temporary file behind. An ``OSError`` (disk full, no permission) is raised again as an
    ``OSError`` of the same errno whose message names ``path``: it is the machine's trouble, not
    bad input, so it stays catchable as ``OSError``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide shared masks from the group
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def write_error(path: str | os.PathLike, e: OSError) -> OSError:
    """``e`` as an OSError of the same errno (and subclass) whose message names ``path``."""
    return OSError(e.errno, f"cannot write {str(path)!r}: {e.strerror or e}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with _atomic(path) as tmp:
        Path(tmp).write_bytes(data)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (a rename, a new file) durable; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the rename itself is done
        pass
    finally:
        os.close(fd)


# -- whole folders -------------------------------------------------------------------------------
@contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``folder``; on success it is synced and swapped in whole.

    A reader of ``folder`` sees the old folder or the new one, never a mix, and a failure
    (disk full, an exception, a kill before the swap) leaves the old folder as it was and, short
    of a kill, no staging folder behind. The caller checks that ``folder`` may be replaced.

    On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``. Elsewhere (or on a filesystem
    without it) the old folder is renamed aside and the new one renamed in: between those two
    renames the path briefly does not exist, and a kill there leaves the old folder intact
    under ``.<name>.<random>.old`` beside it.
    """
    folder = Path(os.path.abspath(folder))  # "." has no name to stage beside
    if folder.is_symlink():  # swap the folder the link points to, not the link
        folder = folder.resolve()
    stage = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".new"))
        yield stage
        for entry in stage.iterdir():
            if entry.is_file():
                with open(entry, "rb+") as f:
                    os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 would hide the folder from the group
        fsync_dir(stage)
        _swap_in(stage, folder)
        stage = None
    except OSError as e:
        raise OSError(
            e.errno, f"cannot save {str(folder)!r}, left as it was: {e.strerror or e}"
        ) from e
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def check_replaceable(
    folder: Path, *, marker: str, files: Iterable[str], param: str, kind: str
) -> None:
    """Refuse to replace anything but a missing or empty folder or a folder of ``kind``.

    Such a folder holds ``marker`` and nothing but ``files`` (and the ``.cache`` folder and
    ``.gitattributes`` a Hub download leaves), so a save that swaps the folder whole (see
    :func:`staged_folder`) never deletes a file of the user's.
    """
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise ArgumentError(f"{param}: {str(folder)!r} exists and is not a folder")
    if folder.samefile(os.curdir):
        raise ArgumentError(
            f"{param}: {str(folder)!r} is the current working directory; a save replaces the "
            "folder whole, which would leave this process (and a shell in it) in a deleted "
            "folder: name a folder inside it, or save from its parent"
        )
    names = set(os.listdir(folder))
    if not names:
        return
    others = sorted(names - set(files) - {".cache", ".gitattributes"})
    if marker not in names or others:
        found = f"other files: {others[:5]}" if others else f"no {marker}"
        raise ArgumentError(
            f"{param}: {str(folder)!r} is neither empty nor {kind} ({found}); "
            "choose a new or empty folder, as saving replaces the folder whole"
        )


def _swap_in(stage: Path, folder: Path) -> None:
    try:
        os.rename(stage, folder)  # no folder there yet (or an empty one): one atomic rename
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise
    else:
        fsync_dir(folder.parent)
        return
    if _exchange(stage, folder):
        old = stage  # the exchange left the old folder at the staging path
    else:
        old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
        os.rename(folder, old)  # replaces the empty folder just made
        try:
            os.rename(stage, folder)
        except OSError:
            os.rename(old, folder)
            raise
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def open_dir(folder: Path) -> int | None:
    """A handle on ``folder`` itself (None where ``os.open`` takes no directories): files read
    while it is held, and :func:`replaced_since` says False, all came from that one folder."""
    if os.open not in os.supports_dir_fd:
        return None
    return os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def replaced_since(folder: Path, dir_fd: int | None) -> bool:
    """Whether ``folder`` is no longer the folder ``dir_fd`` opened (True with no handle)."""
    if dir_fd is None:
        return True  # no handle to compare: let the caller retry
    try:
        now = os.stat(folder)
    except OSError:
        return True
    then = os.fstat(dir_fd)
    return (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino)


def being_swapped(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is missing only because a rename-aside swap is between its renames."""
    folder = Path(folder)
    try:
        names = os.listdir(folder.parent)
    except OSError:
        return False
    prefix = f".{folder.name}."
    return any(n.startswith(prefix) and n.endswith(".old") for n in names)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2; False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False  # a libc older than glibc 2.28
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # the kernel or the filesystem cannot exchange
    raise OSError(err, os.strerror(err), str(b))


# -- reading --------------------------------------------------------------------------------------
def open_regular(
    path: str | os.PathLike, *, dir_fd: int | None = None, shown: str | None = None
) -> BinaryIO:
    """Open a regular file for reading, or raise FileFormatError saying what it is instead.

    Symlinks are followed (the Hub cache is made of them), but a FIFO, a device (``/dev/zero``)
    or a folder is refused before a byte is read: opening with ``O_NONBLOCK`` keeps a FIFO
    without a writer from hanging the open itself.

    Args:
        path: the file, relative to ``dir_fd`` when given.
        dir_fd: an open folder, so that every file of one folder comes from the same folder
            even if the path is swapped meanwhile.
        shown: the name to put in messages (default ``path``).
    """
    shown = shown or str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd) if dir_fd is not None else os.open(path, flags)
    except OSError as e:
        raise FileFormatError(f"cannot read {shown!r}: {e.strerror or e}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise FileFormatError(f"cannot read {shown!r}: it is {kind}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(f: BinaryIO, limit: int, shown: str) -> bytes:
    """All of an open regular file, refused if it holds more than ``limit`` bytes."""
    size = os.fstat(f.fileno()).st_size
    if size > limit:
        raise FileFormatError(f"{shown!r} is {size} bytes, over the limit of {limit}")
    try:
        data = f.read(limit + 1)
    except OSError as e:
        raise FileFormatError(f"cannot read {shown!r}: {e.strerror or e}") from e
    if len(data) > limit:  # grew while read
        raise FileFormatError(f"{shown!r} is over the limit of {limit} bytes")
    return data


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
SAFETENSORS_DTYPES = frozenset(_TORCH_DTYPES)  # what save_safetensors writes


_CODE_DTYPES = {code: dtype for dtype, code in _TORCH_DTYPES.items()} | {
    code: getattr(torch, name)
    for code, name in (
        ("F8_E4M3", "float8_e4m3fn"),
        ("F8_E5M2", "float8_e5m2"),
        ("U16", "uint16"),
        ("U32", "uint32"),
        ("U64", "uint64"),
    )
    if hasattr(torch, name)
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


def read_header(
    path: str | os.PathLike, f: BinaryIO | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Parse and validate a safetensors header without reading any tensor data.

    Returns ``(entries, metadata)``, where entries maps tensor name to dtype/shape/data_offsets.
    Refuses files that are not regular files, whose header is oversized or not JSON, or whose
    offsets do not tile the data exactly.

    Args:
        path: the file (named in messages).
        f: the file already opened by :func:`open_regular`; read from it instead of ``path``.
    """
    if f is None:
        with open_regular(path) as f:
            return _parse_header(f, str(path))
    return _parse_header(f, str(path))


def _parse_header(f: BinaryIO, shown: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise FileFormatError(f"{shown!r} is not a safetensors file: only {size} bytes")
    try:
        f.seek(0)
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise FileFormatError(
                f"{shown!r} is not a valid safetensors file: header length {n} bytes, "
                f"file holds {size - 8} after the length field (limit {MAX_HEADER_BYTES})"
            )
        raw = f.read(n)
    except (OSError, struct.error) as e:
        raise FileFormatError(f"cannot read {shown!r}: {e}") from e
    if len(raw) != n:
        raise FileFormatError(f"{shown!r} is truncated: shorter than its header length")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FileFormatError(f"{shown!r}: safetensors header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise FileFormatError(f"{shown!r}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise FileFormatError(f"{shown!r}: metadata must map strings to strings")
    data_len = size - 8 - n
    spans = []
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            nbytes = _DTYPE_BYTES[dtype]
            if not isinstance(shape, list) or len(shape) > MAX_DIMS:
                raise TypeError
            count = 1
            for d in [*shape, start, end]:
                if not _is_count(d):
                    raise TypeError
            for d in shape:
                count *= d
        except (KeyError, TypeError, ValueError) as e:
            raise FileFormatError(f"{shown!r}: malformed header entry for {name!r}") from e
        if end - start != count * nbytes:
            raise FileFormatError(
                f"{shown!r}: tensor {name!r} declares shape {shape} of {dtype} but spans "
                f"bytes {start}..{end}"
            )
        spans.append((start, end))
    pos = 0
    for start, end in sorted(spans):
        if start != pos:
            raise FileFormatError(f"{shown!r}: tensor data has gaps or overlaps")
        pos = end
    if pos != data_len:
        raise FileFormatError(
            f"{shown!r} is truncated or padded: header declares {pos} data bytes, "
            f"file holds {data_len}"
        )
    return header, metadata


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_tensors(
    path: str | os.PathLike,
    names: list[str],
    *,
    f: BinaryIO | None = None,
    header: dict[str, dict[str, Any]] | None = None,
) -> dict[str, torch.Tensor]:
    """Read the named tensors of a safetensors file, its header validated first.

    Each tensor is read straight from the open file into its own buffer (no pickle, no second
    copy), exactly the bytes the validated header declares.

    Args:
        path: the file (named in messages).
        names: the tensors to read.
        f, header: the file opened by :func:`open_regular` and its header from
            :func:`read_header`, so that header and data come from the same file.
    """
    if f is None:
        with open_regular(path) as f:
            return load_tensors(path, names, f=f, header=read_header(path, f)[0])
    if header is None:
        header = read_header(path, f)[0]
    shown = str(path)
    data_start = os.fstat(f.fileno()).st_size - max(
        (e["data_offsets"][1] for e in header.values()), default=0
    )
    out = {}
    for name in names:
        entry = header[name]
        dtype = _CODE_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise FileFormatError(f"{shown!r}: tensor {name!r} has dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        buf = torch.empty(end - start, dtype=torch.uint8)
        try:
            f.seek(data_start + start)
            got = f.readinto(memoryview(buf.numpy())) if end > start else 0
        except OSError as e:
            raise FileFormatError(f"cannot read {shown!r}: {e.strerror or e}") from e
        if got != end - start:
            raise FileFormatError(f"{shown!r} is truncated: tensor {name!r} is cut short")
        out[name] = buf.view(dtype).reshape(entry["shape"])
    return out


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
