"""The Mask: named boolean tensors, True = weight kept.

A mask is plain data. It never reparametrises a model: ``apply`` zeroes weights in place and
``attach`` keeps them at zero during training, so parameters and ``state_dict`` keys never change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .._files import read_header
from .._naming import (
    AUTO,
    AdapterArg,
    Weights,
    auto_adapter,
    check_layout,
    named_tensors,
    prunable_tensors,
    unwrap,
)
from ..errors import ArgumentError, FileFormatError, NameMismatchError
from ..registry import Naming, available, find
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


class AdapterRecord(NamedTuple):
    """How a mask's names were made: a registered adapter's name and its options."""

    name: str
    options: tuple[str, ...] = ()


def record_of(adapter: Naming | None) -> AdapterRecord | None:
    """The record of a registered adapter (``None`` for no adapter or an unregistered one)."""
    name = getattr(adapter, "name", None)
    if not isinstance(name, str) or name not in available():
        return None
    return AdapterRecord(name, tuple(sorted(str(o) for o in getattr(adapter, "options", ()))))


def _checked_record(value: Any) -> AdapterRecord | None:
    if value is None:
        return None
    try:
        name, options = value
        record = AdapterRecord(name, tuple(options))
    except (TypeError, ValueError):
        record = None
    if record is None or not isinstance(name, str) or not all(isinstance(o, str) for o in options):
        raise ArgumentError(f"`adapter`: expected (name, options) or None, found {value!r}")
    return record


def _suffix_hint(names: Iterable[str], module: Any) -> str:
    """How to fix names that differ only by a prefix (a mask made through an adapter)."""
    if not isinstance(module, nn.Module):
        return ""
    params = [n for n, _ in unwrap(module).named_parameters()]
    names = list(names)
    if names and all(any(p.endswith("." + n) for p in params) for n in names):
        return "; the model's names end with the mask's: pass adapter=vlticket.adapter_for(model)"
    return ""


class Mask(MutableMapping[str, torch.Tensor]):
    """A binary mask over named weights: ``name -> torch.bool tensor``, True = weight kept.

    Args:
        tensors: mapping of parameter name to a ``torch.bool`` tensor. Tensors are stored as
            given (not copied); every value is validated.
        adapter: how the names were made, ``(adapter name, options)``, or ``None`` for plain
            parameter names. Pruning with ``adapter=`` records it; ``apply``, ``attach`` and
            ``save`` use it. It is not part of equality.

    Example:
        >>> import torch, vlticket
        >>> m = vlticket.Mask({"w": torch.tensor([True, False, True, True])})
        >>> m.sparsity
        0.25
        >>> (~m)["w"].tolist()
        [False, True, False, False]
    """

    __hash__ = None  # mutable

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor] | None = None,
        *,
        adapter: AdapterRecord | tuple[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.adapter = _checked_record(adapter)
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
    def ones(cls, weights: Weights, *, adapter: AdapterArg = AUTO) -> Mask:
        """A mask keeping every weight of ``weights``.

        Args:
            weights: a mapping of name to tensor, or an ``nn.Module`` (then the adapter's
                prunable set, or every floating-point parameter with two or more dimensions).
            adapter: the adapter whose ``prunable(model)`` names the tensors. By default a
                module of a registered family (LXMERT, UNITER, ViLT ...) uses its family's
                adapter; ``None`` takes every 2-D+ float parameter.

        Raises:
            ArgumentError: there is no weight to cover.
        """
        naming = auto_adapter(weights, adapter)
        tensors = prunable_tensors(weights, adapter=naming)
        return cls(
            {
                # A model built on the meta device gets a real mask, on the CPU.
                n: torch.ones(t.shape, dtype=torch.bool, device="cpu" if t.is_meta else t.device)
                for n, t in tensors.items()
            },
            adapter=record_of(naming),
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
        return Mask({n: t.clone() for n, t in self._data.items()}, adapter=self.adapter)

    def to(self, device: torch.device | str) -> Mask:
        """The same mask with every tensor on ``device``."""
        return Mask({n: t.to(device) for n, t in self._data.items()}, adapter=self.adapter)

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
        out = {n: t & other[n].to(t.device) for n, t in self._data.items()}
        return Mask(out, adapter=self._shared_record(other))

    def __or__(self, other: Mask) -> Mask:
        other = self._check_same(other, "|")
        out = {n: t | other[n].to(t.device) for n, t in self._data.items()}
        return Mask(out, adapter=self._shared_record(other))

    def _shared_record(self, other: Mask) -> AdapterRecord | None:
        # Same names, so one record serves both; two different records cannot both be right.
        if self.adapter is None or other.adapter is None:
            return self.adapter or other.adapter
        return self.adapter if self.adapter == other.adapter else None

    def __invert__(self) -> Mask:
        """The complement subnetwork: kept weights become pruned and vice versa."""
        return Mask({n: ~t for n, t in self._data.items()}, adapter=self.adapter)

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
    def naming(self, module_or_weights: Any, adapter: AdapterArg = AUTO) -> Naming | None:
        """The adapter to match this mask's names with: ``adapter`` if given, else (for a
        module) the one the mask recorded, found in the registry; ``None`` = parameter names."""
        if adapter is not AUTO:
            return auto_adapter(module_or_weights, adapter)
        if self.adapter is None or not isinstance(module_or_weights, nn.Module):
            return None
        return find(self.adapter.name, self.adapter.options)

    def _targets(self, module_or_weights: Weights, adapter: AdapterArg) -> dict:
        if isinstance(module_or_weights, Mapping) and not isinstance(
            module_or_weights, MutableMapping
        ):
            raise ArgumentError(
                "`module_or_weights`: a read-only mapping such as a Checkpoint is a snapshot and "
                "is never masked in place; use `checkpoint.restore(model, mask)` to rewind a "
                "model and apply the mask"
            )
        naming = self.naming(module_or_weights, adapter)
        targets = named_tensors(module_or_weights, adapter=naming, param="module_or_weights")
        try:
            check_layout(self.shapes(), targets, what="the mask", where="the model", exact=False)
        except NameMismatchError as e:
            hint = _suffix_hint(self._data, module_or_weights) if naming is None else ""
            if not hint:
                raise
            raise NameMismatchError(str(e) + hint) from None
        return {n: targets[n] for n in self._data}

    def check(self, module_or_weights: Weights, *, adapter: AdapterArg = AUTO) -> None:
        """Raise as :meth:`apply` would on a mismatch, without writing anything."""
        self._targets(module_or_weights, adapter)

    def apply(self, module_or_weights: Weights, *, adapter: AdapterArg = AUTO) -> None:
        """Zero the pruned weights in place.

        Every name and shape is checked before anything is written: on a mismatch a
        :class:`~vlticket.errors.MismatchError` is raised and the model is untouched.

        Args:
            module_or_weights: an ``nn.Module`` (masked by parameter name) or a mapping.
            adapter: match the mask's canonical names through this adapter; by default the
                one the mask recorded (see ``Mask.adapter``), ``None`` for parameter names.
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
        adapter: AdapterArg = AUTO,
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

        ``metadata`` (str to str) is stored in the file's header beside the shapes and format,
        with the recorded adapter (keys ``adapter`` and ``adapter_options``, a JSON list).
        """
        meta = dict(metadata or {})
        if self.adapter is not None:
            meta.setdefault("adapter", self.adapter.name)
            meta.setdefault("adapter_options", json.dumps(list(self.adapter.options)))
        mask_file.save(self._data, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Mask:
        """Read a mask written by :meth:`save`, validating the header before reading data."""
        shapes_meta = read_header(path)[1]
        record = None
        if shapes_meta.get("adapter"):
            try:
                options = json.loads(shapes_meta.get("adapter_options", "[]"))
                record = _checked_record((shapes_meta["adapter"], options))
            except (ValueError, ArgumentError) as e:
                raise FileFormatError(
                    f"{str(path)!r}: mask metadata has no valid 'adapter_options'"
                ) from e
        return cls(mask_file.load(path), adapter=record)

    @staticmethod
    def read_metadata(path: str | os.PathLike) -> dict[str, str]:
        """The string metadata of a mask file, without reading its tensors."""
        return read_header(path)[1]


__all__ = ["AdapterRecord", "Mask", "record_of"]
