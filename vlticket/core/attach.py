"""Keeping a mask in force while the user's unchanged training loop runs.

No reparametrisation: a post-accumulate-grad hook zeroes the pruned entries of each gradient (so
gradient clipping and logging see the sparse gradient), and hooks around ``optimizer.step()``
keep the pruned weights at exactly zero.

For torch's elementwise optimizers (``_ZERO_PRESERVING``) a pruned entry with zero weight, zero
gradient and zero optimizer state is updated to exactly zero, so re-zeroing every weight after
each step would be a wasted pass over the model. Instead, before each step, autograd's version
counters tell in O(1) per tensor whether anything wrote a weight, a gradient or an optimizer
state since the hooks last made it safe (``load_state_dict``, gradient noise, clipping, another
optimizer); only those tensors are re-zeroed. Any other optimizer gets the full pass after its
step, and so does a tensor whose ``eps`` rounds to 0 in its dtype (Adam's 1e-8 in float16: 0/0
would write NaN into its pruned entries).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from ..errors import ArgumentError

# Each float dtype's same-width integer: a pruned entry is zeroed by multiplying its bits by 0,
# which gives +0.0 whatever the float was (NaN * 0 is NaN; NaN's bits * 0 are +0.0's).
_BITS = {
    torch.float32: (torch.int32, np.uint32),
    torch.float64: (torch.int64, np.uint64),
    torch.float16: (torch.int16, np.uint16),
    torch.bfloat16: (torch.int16, None),
}

_ZERO_PRESERVING = frozenset(
    {
        torch.optim.SGD,
        torch.optim.Adam,
        torch.optim.AdamW,
        torch.optim.Adamax,
        torch.optim.NAdam,
        torch.optim.RAdam,
        torch.optim.Adagrad,
        torch.optim.RMSprop,
    }
)
"""Optimizers (exact types: a subclass may change the update) whose step leaves an entry at
exactly zero when its weight, gradient and state are zero: their rules are elementwise and
weight decay of a zero weight is zero."""


def _zero_pruned(t: torch.Tensor, keep: torch.Tensor) -> None:
    """Set the pruned entries of ``t`` to exactly +0.0 in place, even where they hold NaN or inf.

    The bits are multiplied by ``keep`` as integers: as fast as ``t *= keep`` (which would keep
    a NaN), with no extra mask in memory. On CPU NumPy does it: torch's product with a bool
    tensor is several times slower there, and this runs on every gradient of every step.
    """
    t = t.detach()
    bits = _BITS.get(t.dtype)
    if bits is None or type(t) is not torch.Tensor or t.shape != keep.shape:
        t.masked_fill_(~keep, 0)  # a tensor subclass (DTensor) or an exotic dtype
        return
    torch_int, numpy_int = bits
    if (
        numpy_int is not None
        and t.device.type == "cpu"
        and t.is_contiguous()
        and keep.is_contiguous()
    ):
        a = t.numpy().view(numpy_int)
        np.multiply(a, keep.numpy(), out=a)
    else:
        t.view(torch_int).mul_(keep)


def _and_not(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a & ~b`` for bool tensors (``a > b``; NumPy's is several times faster on CPU)."""
    if a.device.type == "cpu" and a.is_contiguous() and b.is_contiguous():
        return torch.from_numpy(np.greater(a.numpy(), b.numpy()))
    return torch.gt(a, b)


def hookable_optimizer(optimizer: object) -> torch.optim.Optimizer:
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


class _Stamp:
    """A tensor as the hooks last left it: the same object, not written since."""

    __slots__ = ("ref", "version")

    def __init__(self, t: torch.Tensor) -> None:
        self.ref = weakref.ref(t)
        self.version = t._version

    def holds(self, t: torch.Tensor | None) -> bool:
        return t is not None and self.ref() is t and t._version == self.version


def _states(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The optimizer's per-entry state for ``p`` (momentum, moments), by state key."""
    state = optimizer.state.get(p, {})
    return [
        (str(k), v) for k, v in state.items() if isinstance(v, torch.Tensor) and v.shape == p.shape
    ]


def _plain(p: torch.Tensor) -> bool:
    """Version counters see every autograd-visible write to a plain tensor; a subclass such
    as DTensor keeps its data elsewhere, so it gets the full re-zeroing."""
    return type(p.detach()) is torch.Tensor


@functools.lru_cache(maxsize=64)
def _vanishes(eps: float, dtype: torch.dtype) -> bool:
    """Whether ``eps`` rounds to 0 in ``dtype`` (1e-8 in float16): an adaptive optimizer then
    divides 0 by 0 at a pruned entry, so a zero entry does not stay zero."""
    return float(torch.tensor(eps, dtype=dtype)) == 0.0


def _inexact(optimizer: torch.optim.Optimizer) -> set[int]:
    """Ids of the parameters whose step the fast path cannot trust to keep a zero entry zero:
    tensor subclasses, and those whose group's ``eps`` vanishes in their dtype."""
    out = set()
    for group in optimizer.param_groups:
        eps = group.get("eps")
        for p in group["params"]:
            if not _plain(p) or (
                isinstance(eps, (int, float)) and p.is_floating_point() and _vanishes(eps, p.dtype)
            ):
                out.add(id(p))
    return out


class MaskHandle:
    """An attached mask. ``remove()`` detaches it; usable as a context manager.

    Parameters keep their identity and ``state_dict()`` keys never change while attached.
    Gradients are masked for parameters that require grad when the mask is attached (attach
    again after unfreezing one). Weights or optimizer state loaded while attached are re-zeroed
    before the next ``optimizer.step()``, but a forward pass before that sees loaded weights:
    call ``mask.apply(model)`` right after a load. Writes through ``.data`` bypass autograd's
    version counters, so the fast path of torch's elementwise optimizers cannot see them.
    """

    def __init__(
        self,
        mask: Mapping[str, torch.Tensor],
        params: Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        for name, p in params.items():
            if not (isinstance(p, torch.Tensor) and p.is_leaf):
                raise ArgumentError(
                    f"cannot attach to {name!r}: expected a leaf parameter, found a view or a "
                    "computed tensor; give the adapter's or module's own parameters"
                )
        step_owner = hookable_optimizer(optimizer) if optimizer is not None else None  # check first
        self.mask = mask
        self._keep = {n: mask[n].to(p.device) for n, p in params.items()}
        self._params = dict(params)
        self._hooks: list[RemovableHandle] = []
        # (weight name, "" or optimizer state key) -> the tensor as last zeroed or stepped
        self._stamps: dict[tuple[str, str], _Stamp] = {}
        self._masked_grads: dict[str, _Stamp] = {}
        self._optimizers: list[weakref.ref] = []  # whose state update_ zeroes
        for name, p in self._params.items():
            self._zero(name, "", p)
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_hook(name)))
        if step_owner is not None:
            self._add(step_owner)

    def _grad_hook(self, name: str):
        keep = self._keep[name]

        def hook(p: torch.Tensor) -> None:
            if p.grad is not None:
                _zero_pruned(p.grad, keep)
                self._masked_grads[name] = _Stamp(p.grad)

        return hook

    @torch.no_grad()
    def _zero(self, name: str, key: str, t: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Zero the pruned entries of ``t``: weight ``name`` (key "") or its state ``key``."""
        _zero_pruned(t, self._keep[name] if keep is None else keep)
        self._stamps[name, key] = _Stamp(t)

    def add_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep the pruned weights at zero through each ``optimizer.step()`` (one more optimizer).

        The optimizer's state for pruned weights (momentum, Adam moments from dense training)
        is zeroed too, so it carries nothing over to them.
        """
        self._add(hookable_optimizer(optimizer))

    def _add(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizers.append(weakref.ref(optimizer))
        for name, p in self._owned(optimizer):
            for key, state in _states(optimizer, p):
                self._zero(name, key, state)
        if type(optimizer) in _ZERO_PRESERVING:
            self._hooks.append(optimizer.register_step_pre_hook(self._before_exact_step))
            self._hooks.append(optimizer.register_step_post_hook(self._after_exact_step))
        else:
            self._hooks.append(optimizer.register_step_post_hook(self._after_any_step))

    def _owned(self, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return [(n, p) for n, p in self._params.items() if id(p) in ids]

    def _fresh(self, name: str, key: str, t: torch.Tensor) -> bool:
        stamp = self._stamps.get((name, key))
        return stamp is not None and stamp.holds(t)

    def _before_exact_step(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        """Re-zero only what was written since the hooks last left it safe."""
        inexact = _inexact(optimizer)
        for name, p in self._owned(optimizer):
            if id(p) in inexact:  # a subclass (writes the version counter misses) or a vanishing
                if p.grad is not None:  # eps: mask its gradient again, re-zero it after the step
                    _zero_pruned(p.grad, self._keep[name])
                continue
            if not self._fresh(name, "", p):
                self._zero(name, "", p)
            masked = self._masked_grads.pop(name, None)
            if p.grad is not None and not (masked is not None and masked.holds(p.grad)):
                _zero_pruned(p.grad, self._keep[name])
            for key, state in _states(optimizer, p):
                if not self._fresh(name, key, state):
                    self._zero(name, key, state)

    def _after_exact_step(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        inexact = _inexact(optimizer)
        for name, p in self._owned(optimizer):
            if id(p) in inexact:
                self._zero(name, "", p)
                continue
            self._stamps[name, ""] = _Stamp(p)
            for key, state in _states(optimizer, p):
                self._stamps[name, key] = _Stamp(state)

    def _after_any_step(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        for name, p in self._owned(optimizer):
            self._zero(name, "", p)

    @property
    def attached(self) -> bool:
        return bool(self._params)

    # -- changing the mask while attached -----------------------------------------------------
    @property
    def kept(self) -> Mapping[str, torch.Tensor]:
        """The keep tensors in force, by name, each on its weight's device: a read-only view of
        live tensors (change one with :meth:`update_`, never by writing to it)."""
        return MappingProxyType(self._keep)

    @property
    def params(self) -> Mapping[str, torch.Tensor]:
        """The attached parameters by name (empty once removed)."""
        return MappingProxyType(self._params)

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        """The optimizers through whose ``step()`` the mask is kept in force."""
        return tuple(o for o in (r() for r in self._optimizers) if o is not None)

    @torch.no_grad()
    def update_(self, name: str, keep: torch.Tensor, *, reset: torch.Tensor | None = None) -> None:
        """Replace tensor ``name``'s mask in place and keep the new one in force (dynamic sparse
        training: drop and grow without re-attaching).

        The weight and its state in every attached optimizer are set to exactly 0 where ``keep``
        is False and where ``reset`` is True (RigL's grown weights start at 0 with fresh
        optimizer state): one pass over each, as when attaching. A gradient already accumulated
        is masked again before the next ``optimizer.step()``. ``handle.mask[name]`` is updated
        too. Everything is checked before anything is written.

        Args:
            name: the attached tensor's name (a key of :attr:`kept`).
            keep: the new keep tensor, bool, of the weight's shape.
            reset: optional bool tensor of the same shape: entries to zero even where kept.

        Example:
            >>> import torch, vlticket
            >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
            >>> h = vlticket.Mask({"w": torch.tensor([True, True, False])}).attach({"w": w})
            >>> h.update_("w", torch.tensor([False, True, True]))
            >>> w.tolist(), h.kept["w"].tolist()
            ([0.0, 2.0, 0.0], [False, True, True])
        """
        p = self._params.get(name) if isinstance(name, str) else None
        if p is None:
            raise ArgumentError(
                f"`name`: {name!r} is not an attached tensor"
                + ("" if self._params else " (the handle was removed)")
            )
        old = self._keep[name]
        for param, t in (("keep", keep), ("reset", reset)):
            if t is None and param == "reset":
                continue
            if not isinstance(t, torch.Tensor) or t.dtype != torch.bool or t.shape != old.shape:
                found = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t)
                raise ArgumentError(
                    f"`{param}` for tensor {name!r}: expected a bool tensor of shape "
                    f"{tuple(old.shape)}, found {found}"
                )
        keep = keep.to(old.device)
        live = keep if reset is None else _and_not(keep, reset.to(old.device))
        old.copy_(keep)  # in place: the gradient hook closes over this tensor
        if self.mask[name] is not old:
            self.mask[name].copy_(keep.to(self.mask[name].device))
        self._zero(name, "", p, live)
        for optimizer in self.optimizers:
            if any(q is p for group in optimizer.param_groups for q in group["params"]):
                for key, state in _states(optimizer, p):
                    self._zero(name, key, state, live)
        # a gradient already masked with the old keep is masked again before the next step
        self._masked_grads.pop(name, None)

    def remove(self) -> None:
        """Detach: training after this call may revive pruned weights."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._params.clear()
        self._stamps.clear()
        self._masked_grads.clear()
        self._optimizers.clear()

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self._params else "removed"
        return f"MaskHandle({len(self._keep)} tensors, {state})"
