"""The Ticket: a mask with what it is for, saved as a folder and shared on the Hugging Face Hub.

A ticket folder (locally, or as a Hub model repo) holds:

- ``mask.safetensors``: the bit-packed mask (see :mod:`vlticket.core.mask_file`);
- ``vlticket_config.json``: what the mask is for and the size and SHA-256 of every file (see
  :class:`~vlticket.hub.TicketConfig`);
- ``README.md``: a model card (see :mod:`vlticket.hub.card`);
- ``checkpoint.safetensors``, only when asked: the weights to rewind to (θ0 or θi).

Like huggingface_hub's ``ModelHubMixin``: ``save_pretrained`` / ``from_pretrained`` /
``push_to_hub``; a push saves into a temporary folder and uploads it in one commit. Only JSON
and safetensors are ever read, each checked against the config before any tensor is allocated.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from torch import nn

from .. import _files
from .._naming import AdapterArg, check_layout, named_tensors
from ..core import Checkpoint, Mask, mask_file
from ..errors import ArgumentError, FileFormatError
from ..registry import find
from . import remote
from .card import model_card
from .config import (
    CARD_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MASK_FILE,
    MAX_CONFIG_BYTES,
    TICKET_FILES,
    TicketConfig,
    file_record,
    sha256,
)


class Ticket:
    """A mask, its :class:`TicketConfig` and optionally the weights to rewind to.

    Args:
        mask: the ticket's mask.
        checkpoint: weights to rewind to (θ0 or θi), shared alongside the mask on request.
        config: a ready config (as :meth:`from_pretrained` reads it); otherwise one is made
            from ``mask`` and ``info``.
        **info: what the ticket is for: ``base_model``, ``adapter``, ``method``, ``amount``,
            ``rounds``, ``rewind_step``, ``scope``, ``seed``, ``task``, ``metric``, ``score``,
            ``dense_score``, ``license`` (see :class:`TicketConfig`).

    Example:
        >>> import torch, vlticket
        >>> mask = vlticket.prune_magnitude(torch.nn.Linear(8, 8), sparsity=0.5)
        >>> ticket = vlticket.Ticket(mask, method="one-shot", task="demo")
        >>> ticket
        Ticket(1 tensors, sparsity 0.5000, method='one-shot', task='demo')
    """

    def __init__(
        self,
        mask: Mask,
        *,
        checkpoint: Checkpoint | None = None,
        config: TicketConfig | None = None,
        **info: Any,
    ) -> None:
        if config is None:
            config = TicketConfig.describe(mask, checkpoint, **info)
        elif info:
            raise ArgumentError(f"give `config` or ticket information, not both; found {info}")
        elif not isinstance(config, TicketConfig):
            raise ArgumentError(f"`config`: expected a TicketConfig, found {type(config).__name__}")
        self.mask = mask
        self.checkpoint = checkpoint
        self.config = config
        self.folder: Path | None = None

    def __repr__(self) -> str:
        c = self.config
        about = "".join(
            f", {k}={getattr(c, k)!r}" for k in ("base_model", "method", "task") if getattr(c, k)
        )
        return f"Ticket({len(self.mask)} tensors, sparsity {self.mask.sparsity:.4f}{about})"

    # -- on a model -----------------------------------------------------------------------------
    def apply(self, model: nn.Module, *, adapter: AdapterArg = None) -> None:
        """Check names and shapes against ``model``, then zero its pruned weights in place.

        Args:
            model: the model to prune.
            adapter: match canonical names through this adapter; by default the adapter
                recorded in the config (or in the mask), or the model's own parameter names.

        Example:
            >>> ticket = vlticket.Ticket.from_pretrained("user/vilt-vqa-ticket")  # doctest: +SKIP
            >>> ticket.apply(model)                                              # doctest: +SKIP
        """
        if adapter is None:
            recorded = self.mask.adapter
            adapter = (
                find(self.config.adapter, self.config.adapter_options)
                if self.config.adapter or recorded is None
                else find(recorded.name, recorded.options)
            )
        found = named_tensors(model, adapter=adapter, param="model")
        made_for = f" (made for {self.config.base_model})" if self.config.base_model else ""
        how = "the adapter's names" if adapter is not None else "the model's parameters"
        check_layout(
            self.mask.shapes(), found, what=f"the ticket's mask{made_for}", where=how, exact=False
        )
        self.mask.apply(found)

    # -- files ----------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the ticket folder: mask, config, model card, and the checkpoint if any.

        Example:
            >>> vlticket.Ticket(mask, task="vqa").save_pretrained("vilt-vqa")  # doctest: +SKIP
        """
        return self._save(Path(save_directory))

    def _save(self, folder: Path) -> Path:
        check_replaceable(folder)
        with _files.staged_folder(folder) as stage:
            config = self._write(stage)
        self.config, self.folder = config, folder
        return folder

    def _write(self, folder: Path, repo_id: str = "") -> TicketConfig:
        """Write the ticket's files into the empty ``folder``; returns the config written."""
        self.mask.save(folder / MASK_FILE, metadata={"base_model": self.config.base_model or ""})
        files = {MASK_FILE: file_record(folder / MASK_FILE)}
        if self.checkpoint is not None:
            self.checkpoint.save(folder / CHECKPOINT_FILE)
            files[CHECKPOINT_FILE] = file_record(folder / CHECKPOINT_FILE)
        config = replace(self.config, files=files)
        _files.atomic_write_bytes(folder / CONFIG_FILE, config.to_json().encode())
        _files.atomic_write_bytes(folder / CARD_FILE, model_card(config, repo_id).encode())
        return config

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_dir: str | os.PathLike,
        *,
        revision: str | None = None,
        checkpoint: bool = False,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
    ) -> Ticket:
        """Load a ticket from a folder or a Hub repo, every file checked against its config.

        Args:
            repo_id_or_dir: a folder written by :meth:`save_pretrained`, or a Hub repo id.
            revision: branch, tag or commit of the Hub repo (default ``main``).
            checkpoint: also load ``checkpoint.safetensors`` when the ticket has one.
            cache_dir, force_download, token, local_files_only: as in
                ``huggingface_hub.snapshot_download``; ``HF_HUB_OFFLINE=1`` serves the cache.

        Example:
            >>> t = vlticket.Ticket.from_pretrained("user/vqa", revision="v1")  # doctest: +SKIP
            >>> t.apply(model)  # doctest: +SKIP
        """
        files = [CONFIG_FILE, MASK_FILE] + ([CHECKPOINT_FILE] if checkpoint else [])
        folder = remote.local_or_download(
            repo_id_or_dir,
            files,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
        )
        return load_folder(folder, checkpoint)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload vlticket ticket",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Save into a temporary folder and upload it to ``repo_id`` in one commit.

        Args:
            repo_id: the Hub repo (created if missing).
            commit_message: the commit's summary.
            private: visibility of a newly created repo.
            token: Hub token (default: the locally saved one, or ``HF_TOKEN``).
            revision: branch to commit to (created from ``main`` if missing).
            create_pr: open a pull request instead of committing directly.

        Returns the commit URL.
        """
        remote.check_repo_id(repo_id)
        with tempfile.TemporaryDirectory() as tmp:
            Ticket(self.mask, checkpoint=self.checkpoint, config=self.config)._write(
                Path(tmp), repo_id=repo_id
            )
            files = (CONFIG_FILE, CARD_FILE, MASK_FILE)
            files += (CHECKPOINT_FILE,) if self.checkpoint is not None else ()
            return remote.upload(
                Path(tmp), repo_id, commit_message, private, token, revision, create_pr, files
            )


# -- a folder on disk ---------------------------------------------------------------------------
_LOAD_TRIES = 10


def check_replaceable(folder: Path) -> None:
    """Refuse to save over anything but a missing or empty folder or a ticket folder."""
    _files.check_replaceable(
        folder,
        marker=CONFIG_FILE,
        files=TICKET_FILES,
        param="`save_directory`",
        kind="a ticket folder",
    )


def load_folder(folder: Path, with_checkpoint: bool) -> Ticket:
    """Read and check a ticket folder: config first, then each file against it.

    A concurrent :meth:`Ticket.save_pretrained` swaps the folder whole; every file is read
    through one open handle on the folder, and a load that fails because the folder was
    swapped meanwhile is retried, so readers see the old ticket or the new one.
    """
    for attempt in range(_LOAD_TRIES):
        try:
            dir_fd = _files.open_dir(folder)
        except OSError as e:
            if attempt == _LOAD_TRIES - 1:
                raise FileFormatError(
                    f"cannot read the folder {str(folder)!r}: {e.strerror}"
                ) from e
            time.sleep(0.01 * (attempt + 1))  # a swap without RENAME_EXCHANGE is under way
            continue
        try:
            return _load_once(folder, dir_fd, with_checkpoint)
        except FileFormatError:
            if attempt == _LOAD_TRIES - 1 or not _files.replaced_since(folder, dir_fd):
                raise
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
    raise AssertionError("unreachable")


def _load_once(folder: Path, dir_fd: int | None, with_checkpoint: bool) -> Ticket:
    path = folder / CONFIG_FILE
    with _open(folder, dir_fd, CONFIG_FILE) as f:
        data = _files.read_capped(f, MAX_CONFIG_BYTES, str(path))
    config = TicketConfig.from_json(data, str(path))
    path = folder / MASK_FILE
    with _open_checked(folder, dir_fd, MASK_FILE, config) as f:
        # The mask file's own header must agree with the config before anything is allocated.
        shapes, _ = mask_file.read_shapes(path, f)
        where = f"the mask file {str(path)!r}"
        check_layout(
            config.fingerprint, shapes, what=CONFIG_FILE, where=where, error=FileFormatError
        )
        mask = Mask(mask_file.load(path, f))
    ckpt = None
    if with_checkpoint and CHECKPOINT_FILE in config.files:
        path = folder / CHECKPOINT_FILE
        with _open_checked(folder, dir_fd, CHECKPOINT_FILE, config) as f:
            header, _ = _files.read_header(path, f)
            found = {n: tuple(e["shape"]) for n, e in header.items()}
            where = f"the checkpoint file {str(path)!r}"
            check_layout(
                config.checkpoint or {}, found, what=CONFIG_FILE, where=where, error=FileFormatError
            )
            ckpt = Checkpoint.load(path, f)
    ticket = Ticket(mask, checkpoint=ckpt, config=config)
    ticket.folder = folder
    return ticket


def _open(folder: Path, dir_fd: int | None, name: str) -> BinaryIO:
    if dir_fd is None:
        return _files.open_regular(folder / name)
    return _files.open_regular(name, dir_fd=dir_fd, shown=str(folder / name))


def _open_checked(folder: Path, dir_fd: int | None, name: str, config: TicketConfig) -> BinaryIO:
    """A ticket file, opened, whose size and SHA-256 match the config, checked before the file
    is parsed at all; the caller parses this same open file."""
    path = folder / name
    record = config.files.get(name)
    if record is None:
        raise FileFormatError(f"{CONFIG_FILE} in {str(folder)!r} does not list {name!r}")
    f = _open(folder, dir_fd, name)
    try:
        size = os.fstat(f.fileno()).st_size
        if size != record["size"]:
            raise FileFormatError(
                f"{str(path)!r} has {size} bytes, {CONFIG_FILE} says {record['size']}"
            )
        try:
            digest = sha256(f)
        except OSError as e:
            raise FileFormatError(f"cannot read {str(path)!r}: {e.strerror or e}") from e
        if digest != record["sha256"]:
            raise FileFormatError(f"{str(path)!r} does not match the SHA-256 in {CONFIG_FILE}")
        f.seek(0)
        return f
    except BaseException:
        f.close()
        raise


# -- whole folders on the Hub ---------------------------------------------------------------------
def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload vlticket ticket",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload an existing ticket folder (validated first) in one commit; returns the commit URL.

    Only the ticket's own files are uploaded; arguments as in :meth:`Ticket.push_to_hub`.

    Example:
        >>> vlticket.hub.push_folder("./vilt-vqa", "user/vilt-vqa")  # doctest: +SKIP
    """
    remote.check_repo_id(repo_id)
    if not Path(folder).is_dir():
        raise ArgumentError(f"`folder`: {str(folder)!r} is not a folder")
    files = (CONFIG_FILE, CARD_FILE, *load_folder(Path(folder), with_checkpoint=True).config.files)
    # Upload a private copy, validated again, so that what is checked is what is sent even if
    # the folder is re-saved meanwhile.
    with tempfile.TemporaryDirectory() as tmp:
        for name in files:
            if (Path(folder) / name).is_file():
                shutil.copyfile(Path(folder) / name, Path(tmp) / name)
        copied = load_folder(Path(tmp), with_checkpoint=True).config.files
        files = (CONFIG_FILE, CARD_FILE, *copied)
        return remote.upload(
            Path(tmp), repo_id, commit_message, private, token, revision, create_pr, files
        )


def download_ticket(
    repo_id: str, local_dir: str | os.PathLike, *, revision: str | None = None, **kwargs: Any
) -> Path:
    """Download a ticket repo's files, validate them, then place them in ``local_dir`` whole.

    The files are fetched into the huggingface_hub cache and checked there first; ``local_dir``
    is written only with a valid ticket, swapped in as a whole like :meth:`Ticket.save_pretrained`
    (so it must be missing, empty or a ticket folder). ``kwargs`` are ``cache_dir``,
    ``force_download``, ``token``, ``local_files_only``.

    Example:
        >>> vlticket.hub.download_ticket("user/vilt-vqa", "./vilt-vqa")  # doctest: +SKIP
    """
    folder = Path(local_dir)
    check_replaceable(folder)
    files = [CONFIG_FILE, MASK_FILE, CARD_FILE, CHECKPOINT_FILE]
    source = remote.snapshot(repo_id, files, revision=revision, **kwargs)
    ticket = load_folder(source, with_checkpoint=True)
    wanted = [CONFIG_FILE, CARD_FILE, *ticket.config.files]
    with _files.staged_folder(folder) as stage:
        for name in wanted:
            if (source / name).is_file():
                shutil.copyfile(source / name, stage / name)
    load_folder(folder, with_checkpoint=True)  # what was placed is what was checked
    return folder
