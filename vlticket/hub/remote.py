"""Moving ticket folders to and from the Hugging Face Hub, through huggingface_hub.

Downloads go through ``snapshot_download`` with only the ticket's own files allowed, so
``revision``, ``token``, the cache and ``HF_HUB_OFFLINE`` behave as in the rest of the Hugging
Face ecosystem and no other file of a repo is ever fetched. Uploads are one commit.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .._version import __version__
from ..errors import ArgumentError

logger = logging.getLogger(__name__)


def local_or_download(source: str | os.PathLike, files: list[str], **kwargs: Any) -> Path:
    """``source`` itself if it is a folder, else a snapshot of those ``files`` of the repo."""
    if Path(source).is_dir():
        if kwargs.get("revision") is not None:
            logger.warning("`revision` is ignored for the local folder %s", source)
        return Path(source)
    return snapshot(str(source), files, **kwargs)


def snapshot(repo_id: str, files: list[str], **kwargs: Any) -> Path:
    """Download ``files`` of ``repo_id`` (cached); returns the snapshot folder."""
    path = snapshot_download(
        check_repo_id(repo_id),
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
