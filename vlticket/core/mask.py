"""The Mask: named boolean tensors, True = weight kept.

A mask is plain data. It never reparametrises a model: ``apply`` zeroes weights in place and
``attach`` keeps them at zero during training, so parameters and ``state_dict`` keys never change.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import torch
from torch import nn

from .._files import read_header
from .._naming import AdapterArg, Weights, check_layout, named_tensors, prunable_tensors
from ..errors import ArgumentError
from . import mask_file, nm
from ._passes import count_true
from .attach import MaskHandle


def _validated(name: Any, value: Any) -> torch.Tensor:
    if not isinstance(name, str):
        raise ArgumentError(f"mask names must be str, found {name!r}")
    if not isinstance(value, torch.Tensor):
        raise ArgumentError(
            f"mask[{name!r}]: expected a torch.Tensor, found {type(value).__name__}"
        )
    if value.dtype != torch.bool:
        raise ArgumentError(
            f"mask[{name!r}]: expected dtype torch.bool (True = kept), found {value.dtype}; "
            "convert a 0/1 tensor with `t.bool()`"
        )
    if value.layout != torch.strided:
        raise ArgumentError(f"mask[{name!r}]: expected a dense tensor, found layout {value.layout}")
    return value


class Mask(MutableMapping[str, torch.Tensor]):
    """A binary mask over named weights: ``name -> torch.bool tensor``, True = weight kept.

    Args:
        tensors: mapping of parameter name to a ``torch.bool`` tensor. Tensors are stored as
            given (not copied); every value is validated.

    Example:
        >>> import torch, vlticket
        >>> m = vlticket.Mask({"w": torch.tensor([True, False, True, True])})
        >>> m.sparsity
        0.25
        >>> (~m)["w"].tolist()
        [False, True, False, False]
    """

    __hash__ = None  # mutable

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        self._data: dict[str, torch.Tensor] = {}
        for name, value in (tensors or {}).items():
            self[name] = value

    # -- mapping protocol -------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._data[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self._data[name] = _validated(name, value)

    def __delitem__(self, name: str) -> None:
        del self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, {self.numel:,} weights, sparsity {self.sparsity:.4f})"

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def ones(cls, weights: Weights, *, adapter: AdapterArg = None) -> Mask:
        """A mask keeping every weight of ``weights``.

        Args:
            weights: a mapping of name to tensor, or an ``nn.Module`` (then every floating-point
                parameter with two or more dimensions, or the adapter's prunable set).
            adapter: optional adapter whose ``prunable(model)`` names the tensors.
        """
        tensors = prunable_tensors(weights, adapter=adapter)
        return cls(
            {
                # A model built on the meta device gets a real mask, on the CPU.
                n: torch.ones(t.shape, dtype=torch.bool, device="cpu" if t.is_meta else t.device)
                for n, t in tensors.items()
            }
        )

    @classmethod
    def from_torch_prune(cls, module: nn.Module) -> Mask:
        """Read the ``*_mask`` buffers that ``torch.nn.utils.prune`` left on ``module``.

        Names are the original parameter names (``layer.weight``, not ``layer.weight_orig``).
        """
        params = {name for name, _ in module.named_parameters()}
        out = {
            name[: -len("_mask")]: buf.detach().bool()
            for name, buf in module.named_buffers()
            if name.endswith("_mask") and name[: -len("_mask")] + "_orig" in params
        }
        if not out:
            raise ArgumentError("`module` has no torch.nn.utils.prune masks (no *_mask buffers)")
        return cls(out)

    def clone(self) -> Mask:
        return Mask({n: t.clone() for n, t in self._data.items()})

    def to(self, device: torch.device | str) -> Mask:
        """The same mask with every tensor on ``device``."""
        return Mask({n: t.to(device) for n, t in self._data.items()})

    # -- statistics -------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        """Number of weights the mask covers, kept or pruned."""
        return sum(t.numel() for t in self._data.values())

    @property
    def num_kept(self) -> int:
        return sum(count_true(t) for t in self._data.values())

    @property
    def num_pruned(self) -> int:
        return self.numel - self.num_kept

    @property
    def density(self) -> float:
        """Fraction of weights kept (1.0 for an empty mask)."""
        n = self.numel
        return self.num_kept / n if n else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of weights pruned, over all entries of all tensors."""
        return 1.0 - self.density

    def tensor_sparsity(self) -> dict[str, float]:
        """Pruned fraction of each tensor, by name."""
        return {
            n: 1.0 - count_true(t) / t.numel() if t.numel() else 0.0 for n, t in self._data.items()
        }

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(t.shape) for n, t in self._data.items()}

    def satisfies(self, pattern: str) -> bool:
        """Whether every tensor keeps at most N of each M consecutive weights along its last
        dimension (``pattern="N:M"``, e.g. ``"2:4"``); a tensor the pattern cannot tile raises.

        Example:
            >>> vlticket.Mask({"w": torch.tensor([[True, False, False, True]])}).satisfies("2:4")
            True
        """
        nm.check_divides(self.shapes(), pattern)
        return all(nm.satisfies(t, pattern, name=n) for n, t in self._data.items())

    # -- algebra ----------------------------------------------------------------------------
    def _check_same(self, other: Any, op: str) -> Mask:
        if not isinstance(other, Mask):
            raise ArgumentError(f"`{op}` needs two Masks, found {type(other).__name__}")
        check_layout(self.shapes(), other, what="the left mask", where="the right mask")
        return other

    def __and__(self, other: Mask) -> Mask:
        other = self._check_same(other, "&")
        return Mask({n: t & other[n].to(t.device) for n, t in self._data.items()})

    def __or__(self, other: Mask) -> Mask:
        other = self._check_same(other, "|")
        return Mask({n: t | other[n].to(t.device) for n, t in self._data.items()})

    def __invert__(self) -> Mask:
        """The complement subnetwork: kept weights become pruned and vice versa."""
        return Mask({n: ~t for n, t in self._data.items()})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        if set(self._data) != set(other._data):
            return False
        return all(
            t.shape == other[n].shape and torch.equal(t, other[n].to(t.device))
            for n, t in self._data.items()
        )

    # -- in place on a model ----------------------------------------------------------------
    def _targets(self, module_or_weights: Weights, adapter: AdapterArg) -> dict:
        if isinstance(module_or_weights, Mapping) and not isinstance(
            module_or_weights, MutableMapping
        ):
            raise ArgumentError(
                "`module_or_weights`: a read-only mapping such as a Checkpoint is a snapshot and "
                "is never masked in place; use `checkpoint.restore(model, mask)` to rewind a "
                "model and apply the mask"
            )
        targets = named_tensors(module_or_weights, adapter=adapter, param="module_or_weights")
        check_layout(self.shapes(), targets, what="the mask", where="the model", exact=False)
        return {n: targets[n] for n in self._data}

    def apply(self, module_or_weights: Weights, *, adapter: AdapterArg = None) -> None:
        """Zero the pruned weights in place.

        Every name and shape is checked before anything is written: on a mismatch a
        :class:`~vlticket.errors.MismatchError` is raised and the model is untouched.

        Args:
            module_or_weights: an ``nn.Module`` (masked by parameter name) or a mapping.
            adapter: match the mask's canonical names through this adapter.
        """
        targets = self._targets(module_or_weights, adapter)
        with torch.no_grad():
            for name, t in targets.items():
                t.masked_fill_(~self._data[name].to(t.device), 0)

    def attach(
        self,
        module: Weights,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        adapter: AdapterArg = None,
    ) -> MaskHandle:
        """Keep pruned weights at exactly zero while the user's own loop trains ``module``.

        Zeroes the pruned weights and their optimizer state, masks their gradients as they are
        accumulated (so clipping sees the subnetwork's gradient), and with ``optimizer`` keeps
        them at zero through every ``step()``: momentum, Adam state and weight decay cannot
        revive them. For torch's elementwise optimizers (SGD, Adam, AdamW, ...) that costs one
        pass over the gradients per step; any other optimizer also gets the weights re-zeroed
        after its step. On CPU, prefer ``AdamW(..., fused=True)``: the default for-loop AdamW
        pays for torch's slow ``sqrt`` of the pruned weights' zero second moments.
        Returns a :class:`~vlticket.MaskHandle`; call ``remove()`` (or use it as a
        context manager) to detach.

        Example:
            >>> handle = mask.attach(model, optimizer)   # doctest: +SKIP
            >>> train(model, optimizer)                  # doctest: +SKIP
            >>> handle.remove()                          # doctest: +SKIP
        """
        targets = self._targets(module, adapter)
        return MaskHandle(self, targets, optimizer)

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
        """Write the mask as safetensors, 1 bit per weight, atomically (see ``mask_file``).

        ``metadata`` (str to str) is stored in the file's header beside the shapes and format.
        """
        mask_file.save(self._data, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Mask:
        """Read a mask written by :meth:`save`, validating the header before reading data."""
        return cls(mask_file.load(path))

    @staticmethod
    def read_metadata(path: str | os.PathLike) -> dict[str, str]:
        """The string metadata of a mask file, without reading its tensors."""
        return read_header(path)[1]


__all__ = ["Mask"]
