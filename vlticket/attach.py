"""Keeping a mask in force while the user's unchanged training loop runs.

Two hooks per attachment, no reparametrisation: a post-accumulate-grad hook zeroes the pruned
entries of each gradient (so gradient clipping and logging see the sparse gradient), and an
optimizer step post-hook re-zeroes the pruned weights (so momentum, Adam moments from dense
training and weight decay cannot revive them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from .errors import ArgumentError

if TYPE_CHECKING:
    from .masks import Mask


_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)


def _zero_pruned(t: torch.Tensor, keep: torch.Tensor) -> None:
    """``t *= keep`` in place. On CPU NumPy does it: torch's float-by-bool product is many
    times slower there, and this runs twice per parameter per training step."""
    t = t.detach()
    if (
        t.device.type == "cpu"
        and t.dtype in _NUMPY_DTYPES
        and t.is_contiguous()
        and keep.is_contiguous()
        and type(t) is torch.Tensor
        and t.shape == keep.shape
    ):
        a = t.numpy()
        np.multiply(a, keep.numpy(), out=a)
    else:
        t.mul_(keep)


def _hookable(optimizer: object) -> torch.optim.Optimizer:
    """The optimizer whose ``step()`` runs: wrappers such as accelerate's hold it in
    ``.optimizer`` and may skip ``Optimizer.__init__``, so hooks must go on the inner one."""
    while not hasattr(optimizer, "_optimizer_step_post_hooks") and isinstance(
        getattr(optimizer, "optimizer", None), torch.optim.Optimizer
    ):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer) or not hasattr(
        optimizer, "_optimizer_step_post_hooks"
    ):
        raise ArgumentError(
            f"`optimizer`: expected a torch.optim.Optimizer, found {type(optimizer).__name__}"
        )
    return optimizer


class MaskHandle:
    """An attached mask. ``remove()`` detaches it; usable as a context manager.

    Parameters keep their identity and ``state_dict()`` keys never change while attached.
    Gradients are masked for parameters that require grad when the mask is attached (attach
    again after unfreezing one). Loading weights into the model while attached puts pruned
    values back until the next ``optimizer.step()``; call ``mask.apply(model)`` after a load.
    """

    def __init__(
        self,
        mask: Mask,
        params: Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        for name, p in params.items():
            if not (isinstance(p, torch.Tensor) and p.is_leaf):
                raise ArgumentError(
                    f"cannot attach to {name!r}: expected a leaf parameter, found a view or a "
                    "computed tensor; give the adapter's or module's own parameters"
                )
        step_owner = _hookable(optimizer) if optimizer is not None else None  # check first
        self.mask = mask
        self._keep = {n: mask[n].to(p.device) for n, p in params.items()}
        self._params = dict(params)
        self._hooks: list[RemovableHandle] = []
        self._zero_weights()
        for name, p in self._params.items():
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_hook(name)))
        if step_owner is not None:
            self._add(step_owner)

    def _grad_hook(self, name: str):
        keep = self._keep[name]

        def hook(p: torch.Tensor) -> None:
            if p.grad is not None:
                _zero_pruned(p.grad, keep)

        return hook

    @torch.no_grad()
    def _zero_weights(self, *_: object) -> None:
        for name, p in self._params.items():
            _zero_pruned(p, self._keep[name])

    def add_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Re-zero the pruned weights after each ``optimizer.step()`` (one more optimizer).

        The optimizer's state for pruned weights (momentum, Adam moments from dense training)
        is zeroed too, so it carries nothing over to them.
        """
        self._add(_hookable(optimizer))

    @torch.no_grad()
    def _add(self, optimizer: torch.optim.Optimizer) -> None:
        for name, p in self._params.items():
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    _zero_pruned(value, self._keep[name])
        self._hooks.append(optimizer.register_step_post_hook(self._zero_weights))

    @property
    def attached(self) -> bool:
        return bool(self._params)

    def remove(self) -> None:
        """Detach: training after this call may revive pruned weights."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._params.clear()

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self._params else "removed"
        return f"MaskHandle({len(self._keep)} tensors, {state})"
