"""Share tickets on the Hugging Face Hub: a folder holding a mask, its config and a model card.

A ticket folder (locally, or as a Hub model repo) holds:

- ``mask.safetensors``: the bit-packed mask written by :meth:`Mask.save`;
- ``vlticket_config.json``: what the mask is for and the size and SHA-256 of every file (see
  :mod:`vlticket.ticket_config`);
- ``README.md``: a model card (see :mod:`vlticket.model_card`);
- ``checkpoint.safetensors``, only when asked: the weights to rewind to (θ0 or θi).

Split like huggingface_hub's ``ModelHubMixin``: public ``save_pretrained`` / ``from_pretrained`` /
``push_to_hub``, private ``_save`` / ``_load``; a push saves into a temporary folder and uploads it
in one commit. Downloads go through ``snapshot_download``, so ``revision``, ``token``, the cache
and ``HF_HUB_OFFLINE`` behave as in the rest of the Hugging Face ecosystem. Only JSON and
safetensors are ever read, each checked against the config before any tensor is allocated.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from . import _files, ticket_config
from ._named import NameMap, named_tensors
from .adapters.groups import find_adapter
from .errors import ArgumentError, FileFormatError, NameMismatchError, ShapeMismatchError
from .masks import FORMAT as MASK_FORMAT
from .masks import FORMAT_VERSION as MASK_FORMAT_VERSION
from .masks import Mask
from .model_card import model_card
from .rewind import Checkpoint
from .ticket_config import (
    CARD_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CONFIG_FORMAT,
    CONFIG_VERSION,
    MASK_FILE,
    TICKET_FILES,
    TicketInfo,
)

__all__ = [
    "CARD_FILE",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "CONFIG_FORMAT",
    "CONFIG_VERSION",
    "MASK_FILE",
    "TICKET_FILES",
    "Ticket",
    "TicketInfo",
    "check_fingerprint",
    "download_ticket",
    "from_pretrained",
    "load_ticket",
    "push_folder",
    "push_to_hub",
    "save_pretrained",
]

logger = logging.getLogger(__name__)


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
            adapter = find_adapter(*ticket_config.recorded_adapter(self.config))
        check_fingerprint(
            ticket_config.fingerprint(self.config),
            model,
            adapter=adapter,
            base_model=ticket_config.base_model_id(self.config),
        )
        self.mask.apply(model, adapter=adapter)


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
    files = {MASK_FILE: ticket_config.file_record(folder / MASK_FILE)}
    if checkpoint is not None:
        checkpoint.save(folder / CHECKPOINT_FILE)
        files[CHECKPOINT_FILE] = ticket_config.file_record(folder / CHECKPOINT_FILE)
    else:  # a checkpoint left by an earlier save would no longer match the config
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    config = ticket_config.build_config(mask, info, checkpoint, files)
    _files.atomic_write_bytes(folder / CONFIG_FILE, ticket_config.config_json(config).encode())
    _files.atomic_write_bytes(folder / CARD_FILE, model_card(config, repo_id).encode())
    return folder


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
    path = _snapshot(repo_id, list(TICKET_FILES), revision=revision, local_dir=local_dir, **kwargs)
    _load(path, with_checkpoint=True)
    return path


def _local_or_download(source: str | os.PathLike, files: list[str], **kwargs: Any) -> Path:
    if Path(source).is_dir():
        if kwargs.get("revision") is not None:
            logger.warning("`revision` is ignored for the local folder %s", source)
        return Path(source)
    return _snapshot(str(source), files, **kwargs)


def _snapshot(repo_id: str, files: list[str], **kwargs: Any) -> Path:
    from huggingface_hub import snapshot_download

    import vlticket

    path = snapshot_download(
        _check_repo_id(repo_id),
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
    config = ticket_config.read_config(folder / CONFIG_FILE)
    path = ticket_config.check_file(folder, MASK_FILE, config)
    # The mask file's own header must agree with the config before Mask.load allocates anything.
    _, meta = _files.read_header(path)
    _files.require_format(path, meta, MASK_FORMAT, {MASK_FORMAT_VERSION})
    try:
        shapes = {str(n): tuple(s) for n, s in json.loads(meta["shapes"]).items()}
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise FileFormatError(f"{str(path)!r}: mask metadata has no valid 'shapes'") from e
    ticket_config.check_file_layout(ticket_config.fingerprint(config), shapes, path)
    mask = Mask.load(path)
    ckpt = None
    if with_checkpoint and CHECKPOINT_FILE in config["files"]:
        path = ticket_config.check_file(folder, CHECKPOINT_FILE, config)
        header, _ = _files.read_header(path)
        expected = {n: tuple(s) for n, s in config.get("checkpoint", {}).items()}
        found = {n: tuple(e["shape"]) for n, e in header.items()}
        ticket_config.check_file_layout(expected, found, path)
        ckpt = Checkpoint.load(path)
    return Ticket(mask, config, ckpt, folder)


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
    ticket = _load(Path(folder), with_checkpoint=True)
    return _upload(
        Path(folder),
        repo_id,
        commit_message,
        private,
        token,
        revision,
        create_pr,
        files=(CONFIG_FILE, CARD_FILE, *ticket.config["files"]),
    )


def _upload(
    folder: Path,
    repo_id: str,
    commit_message: str,
    private: bool | None,
    token: str | None,
    revision: str | None,
    create_pr: bool,
    files: tuple[str, ...] = TICKET_FILES,
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
        allow_patterns=list(files),  # only the ticket's own, validated files
    )
    return str(commit)
