"""Checkpoint: a CPU snapshot of named weights to rewind to (θ0, θi) or to swap in (θ0', θ0'')."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import BinaryIO

import numpy as np
import torch

from .. import _files
from .._naming import AdapterArg, Weights, check_layout, check_names, named_tensors
from ..errors import ArgumentError, FileFormatError, VlticketError
from .mask import Mask

logger = logging.getLogger(__name__)

FORMAT = "vlticket.checkpoint"
FORMAT_VERSION = "1"
_SAFE_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


class Checkpoint(Mapping[str, torch.Tensor]):
    """Named weights copied to the CPU, to restore into the same parameters later.

    A Checkpoint is a mapping of name to tensor (no item assignment), so it can also be passed
    wherever vlticket reads ``weights`` (e.g. to prune by the magnitudes of θ0); ``Mask.apply``
    refuses it, so a snapshot is never zeroed by accident.

    Example:
        >>> import torch, vlticket
        >>> model = torch.nn.Linear(4, 2)
        >>> theta0 = vlticket.Checkpoint.capture(model)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> theta0.restore(model)
        >>> bool(torch.equal(model.weight, theta0["weight"]))
        True
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], *, copy: bool = True) -> None:
        self._data = {}
        for name, t in named_tensors(tensors, param="tensors").items():
            if not t.is_floating_point():
                raise ArgumentError(
                    f"`tensors[{name!r}]`: expected floating point, found {t.dtype}"
                )
            if t.is_meta:
                raise ArgumentError(f"`tensors[{name!r}]` is on the meta device: no values")
            self._data[name] = t.detach().to("cpu", copy=copy)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        n = sum(t.numel() for t in self._data.values())
        return f"Checkpoint({len(self)} tensors, {n:,} values)"

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(t.shape) for n, t in self._data.items()}

    @classmethod
    def capture(
        cls,
        module_or_weights: Weights,
        names: Iterable[str] | None = None,
        *,
        adapter: AdapterArg = None,
    ) -> Checkpoint:
        """Copy the current weights to the CPU: θ0 before training, θi at a rewind step.

        Args:
            module_or_weights: a module (all floating-point parameters, or the adapter's
                prunable set) or a mapping of name to tensor.
            names: capture only these names (every one must exist).
            adapter: capture the adapter's prunable tensors under their canonical names.
        """
        tensors = named_tensors(module_or_weights, adapter=adapter, param="module_or_weights")
        tensors = {n: t for n, t in tensors.items() if t.is_floating_point()}
        if names is not None:
            names = list(names)
            check_names(names, tensors, what="`names`", where="the model", exact=False)
            tensors = {n: tensors[n] for n in names}
        return cls(tensors)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        rename: Mapping[str, str] | Callable[[str], str | None] | None = None,
    ) -> Checkpoint:
        """Weights from another model, e.g. BERT's for the θ0' baseline.

        Args:
            state_dict: the other model's tensors.
            rename: a mapping from the other model's names to ours (names not in it are
                dropped), or a function returning our name or ``None`` to drop the tensor.
        """
        state_dict = named_tensors(state_dict, param="state_dict")
        if rename is None:
            picked = dict(state_dict)
        elif isinstance(rename, Mapping):
            check_names(rename, state_dict, what="`rename`", where="`state_dict`", exact=False)
            if len(set(rename.values())) != len(rename):
                raise ArgumentError("`rename` maps two tensors to one name")
            picked = {new: state_dict[old] for old, new in rename.items()}
        elif callable(rename):
            picked = {}
            for old, t in state_dict.items():
                new = rename(old)
                if new is not None:
                    if new in picked:
                        raise ArgumentError(f"`rename` maps two tensors to {new!r}")
                    picked[new] = t
        else:
            raise ArgumentError(
                f"`rename`: expected a mapping or a function, found {type(rename).__name__}"
            )
        return cls({n: t for n, t in picked.items() if t.is_floating_point()})

    def restore(
        self,
        module_or_weights: Weights,
        mask: Mask | None = None,
        *,
        adapter: AdapterArg = None,
        strict: bool = False,
        partial: bool = False,
    ) -> list[str] | None:
        """Copy the values back into the same parameter objects; with a mask, re-apply it.

        ``restore(model, mask)`` is the IMP rewind. Every name and shape is checked before
        anything is written. ``strict=True`` also requires the model to have no other
        floating-point parameters than the checkpoint's.

        Only the checkpoint's tensors are rewound. With ``adapter`` that is the adapter's prunable
        set; to rewind every parameter (biases, layer norms, head) capture without an adapter and
        apply the canonical-name mask separately: ``theta0.restore(model);
        mask.apply(model, adapter=adapter)``.

        Args:
            partial: restore only the checkpoint's tensors the model has (e.g. θ0' from a BERT
                with fewer layers than the model) instead of raising for the others. Shapes
                are still checked first; on a mismatch nothing changes. Returns the names of
                the model's tensors that were not restored (also logged), so what kept its own
                values is never silent.

        Example:
            >>> import torch, vlticket
            >>> theta = vlticket.Checkpoint({"0.weight": torch.zeros(2, 2), "9.w": torch.zeros(1)})
            >>> theta.restore(torch.nn.Sequential(torch.nn.Linear(2, 2)), partial=True)
            ['0.bias']
        """
        targets, data, floating = self._checked(module_or_weights, mask, adapter, strict, partial)
        with torch.no_grad():
            for name, value in data.items():
                targets[name].copy_(value)
        if mask is not None:
            mask.apply({n: targets[n] for n in mask})
        if not partial:
            return None
        kept_own = [n for n in floating if n not in data]
        if kept_own:
            logger.info(
                "restore: restored %d tensors; %d model tensors kept their values: %s",
                len(data),
                len(kept_own),
                kept_own if len(kept_own) <= 6 else [*kept_own[:6], "..."],
            )
        return kept_own

    def check(
        self,
        module_or_weights: Weights,
        mask: Mask | None = None,
        *,
        adapter: AdapterArg = None,
        strict: bool = False,
        partial: bool = False,
    ) -> None:
        """Raise as :meth:`restore` would on a mismatch, without writing anything."""
        self._checked(module_or_weights, mask, adapter, strict, partial)

    def _checked(
        self,
        module_or_weights: Weights,
        mask: Mask | None,
        adapter: AdapterArg,
        strict: bool,
        partial: bool,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The model's tensors, the checkpoint's tensors to copy, and the model's floating
        tensors, every name and shape checked."""
        if strict and partial:
            raise ArgumentError("`strict` and `partial` exclude each other: choose one")
        targets = named_tensors(module_or_weights, adapter=adapter, param="module_or_weights")
        data = self._data
        if partial:
            data = {n: t for n, t in self._data.items() if n in targets}
            skipped = [n for n in self._data if n not in targets]
            if skipped:
                logger.info("restore: %d checkpoint tensors not in the model", len(skipped))
        meta = [n for n in data if n in targets and targets[n].is_meta]
        if meta:
            raise ArgumentError(
                f"`module_or_weights`: {meta[0]!r} is on the meta device; materialise the model "
                "(e.g. `model.to_empty(device='cpu')`) before restoring"
            )
        floating = {n: t for n, t in targets.items() if t.is_floating_point()}
        shapes = {n: tuple(t.shape) for n, t in data.items()}
        check_layout(shapes, floating, what="the checkpoint", where="the model", exact=strict)
        if mask is not None:
            if not isinstance(mask, Mask):
                raise ArgumentError(
                    f"`mask`: expected a vlticket.Mask, found {type(mask).__name__}"
                )
            check_layout(mask.shapes(), targets, what="`mask`", where="the model", exact=False)
        return targets, data, floating

    def shuffled(self, seed: int | None = None) -> Checkpoint:
        """The θ0'' baseline: every tensor's values randomly permuted within that tensor."""
        rng = np.random.default_rng(seed)
        out = {}
        for name, t in self._data.items():
            perm = torch.from_numpy(rng.permutation(t.numel()))
            out[name] = t.reshape(-1)[perm].reshape(t.shape)
        return Checkpoint(out)

    def save(self, path: str | os.PathLike) -> None:
        """Write as safetensors (dtypes kept), atomically."""
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "names": json.dumps(list(self._data)),
        }
        _files.save_safetensors({n: t.contiguous() for n, t in self._data.items()}, meta, path)

    @classmethod
    def load(cls, path: str | os.PathLike, f: BinaryIO | None = None) -> Checkpoint:
        """Read a checkpoint written by :meth:`save` (safetensors only, header validated).

        Every malformed file is a FileFormatError. ``f``: the file already opened by
        ``_files.open_regular`` (then ``path`` only names it).
        """
        if f is None:
            with _files.open_regular(path) as f:
                return cls.load(path, f)
        header, meta = _files.read_header(path, f)
        _files.require_format(path, meta, FORMAT, {FORMAT_VERSION})
        try:
            names = json.loads(meta["names"])
        except (KeyError, ValueError, RecursionError) as e:
            raise FileFormatError(f"{str(path)!r}: checkpoint metadata has no valid 'names'") from e
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FileFormatError(
                f"{str(path)!r}: checkpoint metadata 'names' must be a list of tensor names"
            )
        if set(names) != set(header) or len(names) != len(header):
            raise FileFormatError(f"{str(path)!r}: tensors do not match the names in the metadata")
        for name in names:
            if header[name]["dtype"] not in _SAFE_DTYPES:
                raise FileFormatError(
                    f"{str(path)!r}: tensor {name!r} has dtype {header[name]['dtype']}, "
                    f"expected one of {sorted(_SAFE_DTYPES)}"
                )
        tensors = _files.load_tensors(path, names, f=f, header=header)
        try:
            return cls(tensors, copy=False)
        except VlticketError as e:
            raise FileFormatError(f"{str(path)!r}: {e}") from e
