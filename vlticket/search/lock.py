"""One writer per run folder: ``RUN_DIR/.lock`` holds the owner's pid and host.

The lock file is created with ``O_CREAT | O_EXCL``, so of two processes starting on one folder
only one gets it. A lock whose owner is gone (same host, pid no longer running, e.g. after a
kill) is taken over; so is one held by an earlier search object of this same process (a notebook
cell run again), which then refuses to write. Any other lock is refused with the owner's pid and
host in the message.
Creating it is also the first write into the folder, so a folder that cannot be written fails
here, before any training.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

from .. import _files
from ..errors import VlticketError

LOCK_FILE = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _create(path: Path, record: bytes) -> bool:
    """Create the lock file holding ``record``; False if it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, record)
    finally:
        os.close(fd)
    return True


def acquire(folder: Path) -> bytes:
    """Take the lock of ``folder`` (created if missing); return the token that releases it.

    Raises:
        VlticketError: the folder cannot be written, or a live process owns it.
    """
    path = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    token = json.dumps({**me, "id": uuid.uuid4().hex}).encode()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after removing a dead owner's lock
            if _create(path, token):
                return token
            owner = _owner(path)
            if owner is not None and {k: owner.get(k) for k in me} == me:
                _files.atomic_write_bytes(path, token)  # this process: the newer object owns it
                return token
            if owner is None or not _stale(owner):
                raise _refusal(folder, owner)
            path.unlink(missing_ok=True)
    except OSError as e:
        raise VlticketError(
            f"`run_dir`={str(folder)!r} cannot be written ({e.strerror or e}); a search needs a "
            "folder it can write its rounds to"
        ) from e
    raise _refusal(folder, _owner(path))


def holds(folder: Path, token: bytes) -> bool:
    """Whether the lock of ``folder`` is still the one ``token`` took."""
    try:
        return (folder / LOCK_FILE).read_bytes() == token
    except OSError:
        return False


def release(folder: Path, token: bytes) -> None:
    """Remove the lock if it is still the one ``token`` took (never another owner's)."""
    path = folder / LOCK_FILE
    try:
        if path.read_bytes() == token:
            path.unlink()
    except OSError:  # already gone, or the folder went away: nothing to release
        pass


def _owner(path: Path) -> dict[str, object] | None:
    try:
        owner = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _stale(owner: dict[str, object]) -> bool:
    pid = owner.get("pid")
    return (
        owner.get("host") == socket.gethostname()
        and isinstance(pid, int)
        and not isinstance(pid, bool)
        and not _alive(pid)
    )


def _refusal(folder: Path, owner: dict[str, object] | None) -> VlticketError:
    lock = str(folder / LOCK_FILE)
    if owner is None:
        who = f"an unknown process (unreadable {lock!r})"
    else:
        who = f"process {owner.get('pid')} on host {owner.get('host')!r}"
    return VlticketError(
        f"`run_dir`={str(folder)!r} is in use by {who}; two searches must not write one run "
        f"folder. Wait for it, use another `run_dir`, or delete {lock!r} if no process uses it"
    )
