"""Moving ticket folders to and from the Hugging Face Hub, through huggingface_hub.

Downloads go through ``snapshot_download`` with only the ticket's own files allowed, so
``revision``, ``token``, the cache and ``HF_HUB_OFFLINE`` behave as in the rest of the Hugging
Face ecosystem and no other file of a repo is ever fetched. Uploads are one commit.

Every failure of a request (missing repo or revision, refused token, no network, offline with
nothing cached) is raised as a one-line :class:`~vlticket.errors.HubError` saying what failed and
how to fix it, with huggingface_hub's own error as its ``__cause__``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .. import _files
from .._version import __version__
from ..errors import ArgumentError, HubError

logger = logging.getLogger(__name__)


def local_or_download(source: str | os.PathLike, files: list[str], **kwargs: Any) -> Path:
    """``source`` itself if it is a folder, else a snapshot of those ``files`` of the repo."""
    if _is_folder(Path(source)):
        if kwargs.get("revision") is not None:
            logger.warning("`revision` is ignored for the local folder %s", source)
        return Path(source)
    return snapshot(str(source), files, **kwargs)


def _is_folder(path: Path) -> bool:
    """Whether ``path`` is a folder, waiting out a swap without RENAME_EXCHANGE, in which the
    folder is briefly absent (see ``_files.staged_folder``)."""
    for attempt in range(10):
        if path.is_dir():
            return True
        if not _files.being_swapped(path) and not path.is_dir():
            return False
        time.sleep(0.01 * (attempt + 1))
    return path.is_dir()


def snapshot(repo_id: str, files: list[str], **kwargs: Any) -> Path:
    """Download ``files`` of ``repo_id`` (cached); returns the snapshot folder."""
    offline = bool(kwargs.get("local_files_only")) or constants.HF_HUB_OFFLINE
    with hub_errors("download", check_repo_id(repo_id), kwargs.get("revision"), offline):
        path = snapshot_download(
            repo_id,
            allow_patterns=files,
            library_name="vlticket",
            library_version=__version__,
            **kwargs,
        )
    return Path(path)


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub repo id, else an ArgumentError saying what it is not."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ArgumentError(
            f"{repo_id!r} is neither an existing folder nor a Hub repo id like 'user/name'"
        ) from e
    return repo_id


def upload(
    folder: Path,
    repo_id: str,
    commit_message: str,
    private: bool | None,
    token: str | None,
    revision: str | None,
    create_pr: bool,
    files: tuple[str, ...],
) -> str:
    """Upload ``files`` of ``folder`` to ``repo_id`` in one commit; returns the commit URL."""
    api = HfApi(token=token, library_name="vlticket", library_version=__version__)
    with hub_errors("push to", repo_id, revision, constants.HF_HUB_OFFLINE):
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision not in (None, "main") and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            allow_patterns=list(files),  # only the ticket's own, validated files
        )
    return str(commit)


@contextmanager
def hub_errors(what: str, repo_id: str, revision: str | None, offline: bool) -> Iterator[None]:
    """Raise huggingface_hub's (and its HTTP client's) errors as one-line HubErrors.

    Args:
        what: the operation, as in "cannot {what} 'user/name'".
        repo_id, revision: the repo and revision asked for.
        offline: whether only the local cache could be used.
    """
    repo = repr(repo_id)
    try:
        yield
    except GatedRepoError as e:
        raise HubError(
            f"cannot {what} {repo}: the repo is gated; accept its conditions on the Hub, "
            "then pass token=... (or log in with `hf auth login`)"
        ) from e
    except RepositoryNotFoundError as e:
        raise HubError(
            f"cannot {what} {repo}: repo not found on the Hub at {constants.ENDPOINT} (or it is "
            "private: pass token=... or log in with `hf auth login`)"
        ) from e
    except RevisionNotFoundError as e:
        raise HubError(
            f"cannot {what} {repo}: revision {revision!r} not found; give an existing branch, "
            "tag or commit"
        ) from e
    except OfflineModeIsEnabled as e:
        raise HubError(
            f"cannot {what} {repo}: HF_HUB_OFFLINE is set; unset it to reach the Hub"
        ) from e
    except LocalEntryNotFoundError as e:
        if offline:
            raise HubError(
                f"cannot {what} {repo}: it is not in the local cache and downloads are off "
                "(HF_HUB_OFFLINE or local_files_only); download it once online first"
            ) from e
        raise HubError(
            f"cannot {what} {repo}: the Hub at {constants.ENDPOINT} cannot be reached and the "
            "repo is not cached; check the network connection (or HF_ENDPOINT)"
        ) from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            fix = "the token was refused (401 Unauthorized); pass a valid token=... or log in"
        elif status == 403:
            fix = "access denied (403 Forbidden); use a token with write access to this repo"
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            fix = f"the Hub answered: {first}"
        raise HubError(f"cannot {what} {repo}: {fix}") from e
    except Exception as e:
        # The HTTP client's own errors (httpx's ConnectError, timeouts) share no base class
        # with huggingface_hub's; recognised by their class names so no client is imported.
        names = {c.__name__ for c in type(e).__mro__}
        if not names & {"TransportError", "ConnectionError", "TimeoutError"}:
            raise
        raise HubError(
            f"cannot {what} {repo}: the Hub at {constants.ENDPOINT} cannot be reached "
            f"({type(e).__name__}); check the network connection (or HF_ENDPOINT)"
        ) from e
