"""Dynamic sparse training in the user's own loop: RigL (Evci et al. 2020) and SET.

Every ``update_every`` steps until ``end``, a fraction ``α/2·(1 + cos(π t / end))`` of each
tensor's active weights (or of all of them, ``scope="global"``) is dropped, smallest magnitude
first, and as many inactive weights are grown: largest *dense* gradient first (RigL), or at
random (SET). Grown weights start at 0 with zeroed optimizer state. Counts are exact and ties
deterministic (the selection of :func:`vlticket.prune_by_score`).

The attached :class:`~vlticket.MaskHandle` masks gradients as they are accumulated, so the dense
gradient RigL needs is caught earlier: a tensor hook, armed only for the backward passes of an
update step, adds each incoming gradient to a buffer before accumulation. The new masks go in
through :meth:`MaskHandle.update_ <vlticket.MaskHandle.update_>`, in place, so the mask stays
attached and current and only the changed entries are written. The update is two exact
selections (drop by ``|w|``, grow by ``|g|``) read straight from the weights and gradients, no
copies of them. Under
``torch.distributed`` the dense gradients are averaged over ranks before growing, and SET draws
from a seeded generator, so every rank computes the same mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from ._naming import check_layout
from .core import MaskHandle
from .core.attach import hookable_optimizer
from .core.selection import TensorPart, counts_to_prune, select
from .errors import ArgumentError, FileFormatError

GROW = ("gradient", "random")
SCOPES = ("global", "tensor")  # as RigL: every tensor keeps its count, or one pool


def _positive_int(value: object, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ArgumentError(f"`{param}`: expected an int > 0, found {value!r}")
    return value


def _dist_world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class DynamicSparsity:
    """Drop-and-grow updates of an attached mask; call :meth:`step` after ``optimizer.step()``.

    Args:
        handle: the mask attached with ``mask.attach(model, optimizer)``; it is kept current.
            Tensors that do not require grad (frozen) keep their mask: they could not train
            what they grow; with RigL so does a tensor no gradient reached in the update
            step's backward passes (nothing to grow by).
        optimizer: the optimizer whose state is reset for grown weights (added to ``handle``
            if the mask was attached without it).
        update_every: ΔT, steps between updates (100 in RigL).
        end: T_end, the step after which the mask is fixed (RigL: 75% of training).
        alpha: the initial fraction updated, in (0, 1) (0.3 in RigL).
        scope: ``"tensor"`` keeps every tensor's count (RigL's default) or ``"global"``.
        grow: ``"gradient"`` (RigL) or ``"random"`` (SET).
        seed: the generator seed for ``grow="random"`` (the same on every rank).

    Example:
        >>> import torch, vlticket
        >>> net = torch.nn.Linear(16, 16)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> handle = vlticket.prune_random(net, sparsity=0.8, seed=0).attach(net, opt)
        >>> rigl = vlticket.DynamicSparsity(handle, opt, update_every=2, end=10)
        >>> for _ in range(4):
        ...     net(torch.randn(4, 16)).pow(2).sum().backward()
        ...     opt.step(); opt.zero_grad()
        ...     updated = rigl.step()
        >>> rigl.updates, handle.mask.num_kept
        (2, 51)
    """

    def __init__(
        self,
        handle: MaskHandle,
        optimizer: torch.optim.Optimizer,
        *,
        update_every: int = 100,
        end: int,
        alpha: float = 0.3,
        scope: str = "tensor",
        grow: str = "gradient",
        seed: int = 0,
    ) -> None:
        if not isinstance(handle, MaskHandle) or not handle.attached:
            raise ArgumentError("`handle`: expected an attached vlticket.MaskHandle")
        self._optimizer = hookable_optimizer(optimizer)
        self.update_every = _positive_int(update_every, "update_every")
        self.end = _positive_int(end, "end")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ArgumentError(f"`alpha`: expected a float in (0, 1), found {alpha!r}")
        if scope not in SCOPES:  # per stream or layer would need the adapter's groups
            raise ArgumentError(f"`scope`: expected one of {SCOPES}, found {scope!r}")
        if grow not in GROW:
            raise ArgumentError(f"`grow`: expected one of {GROW}, found {grow!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ArgumentError(f"`seed`: expected an int, found {seed!r}")
        # a frozen tensor cannot train what it grows: its mask is left as it is
        self._names = [n for n, p in handle.params.items() if p.requires_grad]
        if not self._names:
            raise ArgumentError("`handle`: none of its tensors requires grad; nothing to train")
        self.alpha, self.scope, self.grow, self.seed = float(alpha), scope, grow, seed
        self._handle = handle
        if not any(o is self._optimizer for o in handle.optimizers):
            handle.add_optimizer(self._optimizer)  # grown weights' state is reset through it
        self._generator = torch.Generator().manual_seed(seed)
        self.t = 0
        self.updates = 0
        self._dense: dict[str, torch.Tensor] = {}
        self._armed = False
        self._hooks = [
            p.register_hook(self._catch(n)) for n, p in handle.params.items() if p.requires_grad
        ]
        self._arm()

    # -- the dense gradient -------------------------------------------------------------------
    def _catch(self, name: str):
        def hook(grad: torch.Tensor) -> None:
            if self._armed:
                buf = self._dense.get(name)
                if buf is None:
                    self._dense[name] = grad.detach().clone()
                else:
                    buf.add_(grad.detach())

        return hook

    def _due(self, t: int) -> bool:
        return t % self.update_every == 0 and t < self.end

    def _arm(self) -> None:
        self._dense.clear()
        self._armed = self.grow == "gradient" and self._due(self.t + 1)

    def fraction(self, t: int) -> float:
        """The fraction of active weights updated at step ``t`` (cosine decay to 0 at ``end``)."""
        return self.alpha / 2 * (1 + math.cos(math.pi * t / self.end))

    # -- the update ---------------------------------------------------------------------------
    def step(self) -> bool:
        """Count one training step; update the mask if it is an update step. Returns whether
        it updated. Call it after ``optimizer.step()`` on every step, on every rank."""
        updated = self._due(self.t + 1)
        if updated and not self._handle.attached:
            raise ArgumentError(
                f"`handle` was removed: the update at step {self.t + 1} needs the attached mask "
                "(attach it again and make a new DynamicSparsity, or stop calling step())"
            )
        if updated:  # raises before anything changes (a NaN gradient): the step is not counted
            self._update(self.fraction(self.t + 1))
            self.updates += 1
        self.t += 1
        self._arm()
        return updated

    def _updatable(self) -> list[str]:
        """The trainable tensors a gradient reached in this update step's backward passes (on
        any rank): one no gradient reached has nothing to grow by, and dropping its weights
        would only replace trained ones with zeros. SET grows at random: all of them."""
        if self.grow == "random":
            return self._names
        reached = [n in self._dense for n in self._names]
        if _dist_world() > 1:  # the same tensors on every rank, for the same all_reduce calls
            device = self._handle.kept[self._names[0]].device
            flags = torch.tensor(reached, dtype=torch.int32, device=device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            reached = [bool(f) for f in flags.tolist()]
        return [n for n, r in zip(self._names, reached, strict=True) if r]

    def _grow_scores(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Per tensor: the dense gradient (its sign is ignored by the selection, no copy), or
        seeded uniform noise for SET."""
        kept = {n: self._handle.kept[n] for n in names}
        if self.grow == "random":
            return {
                n: torch.rand(k.shape, generator=self._generator).to(k.device)
                for n, k in kept.items()
            }
        world = _dist_world()
        out = {}
        for n, k in kept.items():
            g = self._dense.get(n)
            if g is None:  # no gradient reached it here, but on another rank: it adds nothing
                g = torch.zeros(k.shape, dtype=self._handle.params[n].dtype, device=k.device)
            if world > 1:
                torch.distributed.all_reduce(g)
                g.div_(world)
            out[n] = g
        return out

    @torch.no_grad()
    def _update(self, frac: float) -> None:
        """Drop by magnitude, grow by score, then write: every new mask is computed (and every
        selection's input checked) before the first write."""
        names = self._updatable()
        if not names:
            return
        kept = {n: self._handle.kept[n] for n in names}
        params = {n: self._handle.params[n] for n in names}
        # the weights themselves: the selection ranks |w| from their bits, without a copy
        drop = {n: TensorPart(p.detach(), kept[n], p.numel()) for n, p in params.items()}
        after = select(drop, sparsity=None, amount=frac, scope=self.scope)
        scores = self._grow_scores(names)
        pools = [[n] for n in kept] if self.scope == "tensor" else [list(kept)]
        grown: dict[str, torch.Tensor] = {}
        for pool in pools:
            numel = sum(kept[n].numel() for n in pool)
            active = sum(_count(kept[n]) for n in pool)
            # as many as the selection dropped: its own count of the pool
            (count,) = counts_to_prune([numel], [active], None, frac, [f"tensor {pool[0]!r}"])
            candidates = {n: _not(after[n]) for n in pool}
            grown.update(_grow(scores, candidates, count, numel - active + count))
        for n in kept:
            self._handle.update_(n, _or_(after[n], grown[n]), reset=grown[n])

    # -- resuming -----------------------------------------------------------------------------
    def _config(self) -> torch.Tensor:
        return torch.tensor(
            [
                self.update_every,
                self.end,
                self.alpha,
                SCOPES.index(self.scope),
                GROW.index(self.grow),
                self.seed,
            ],
            dtype=torch.float64,
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, for ``safetensors.torch.save_file``: step, settings, generator, and the
        current keep tensors (``keep.<name>``)."""
        state = {
            "step": torch.tensor([self.t, self.updates], dtype=torch.int64),
            "config": self._config(),
            "generator": self._generator.get_state(),
        }
        kept = self._handle.kept
        state.update({f"keep.{n}": k.detach().to("cpu").clone() for n, k in kept.items()})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Resume exactly from :meth:`state_dict`: the mask, weights and optimizer state are
        re-masked and the schedule continues. Everything is checked before anything changes.
        """
        if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise ArgumentError("`state`: expected a mapping of name to tensor (state_dict())")
        for key in ("step", "config", "generator"):
            if key not in state:
                raise FileFormatError(f"`state`: missing {key!r}; not a DynamicSparsity state")
        keeps = {k[len("keep.") :]: v for k, v in state.items() if k.startswith("keep.")}
        kept = dict(self._handle.kept)
        check_layout(kept, keeps, what="the attached mask", where="the saved state")
        for n, v in keeps.items():
            if v.dtype != torch.bool:
                raise FileFormatError(f"`state['keep.{n}']`: expected torch.bool, found {v.dtype}")
        step = state["step"]
        if step.dtype != torch.int64 or step.shape != (2,) or bool((step < 0).any()):
            raise FileFormatError(f"`state['step']`: expected 2 non-negative int64, found {step}")
        config = state["config"]
        if config.shape != (6,) or not torch.equal(config.double(), self._config()):
            raise ArgumentError(
                f"`state['config']` {config.tolist()} differs from this object's settings "
                f"{self._config().tolist()} (update_every, end, alpha, scope, grow, seed)"
            )
        generator = state["generator"]
        if generator.dtype != torch.uint8 or generator.shape != self._generator.get_state().shape:
            raise FileFormatError("`state['generator']`: not a CPU generator state")
        self._generator.set_state(generator.clone())
        self.t, self.updates = (int(x) for x in step)
        for n, keep in keeps.items():
            self._handle.update_(n, keep)  # weights and optimizer state re-zeroed where pruned
        self._arm()

    def remove(self) -> None:
        """Remove the gradient hooks (the mask stays attached through its handle)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._armed = False
        self._dense.clear()

    def __repr__(self) -> str:
        return (
            f"DynamicSparsity(grow={self.grow!r}, step={self.t}, updates={self.updates}, "
            f"update_every={self.update_every}, end={self.end})"
        )


# Bool passes through NumPy on CPU: several times faster than torch's there.
def _cpu(*ts: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.is_contiguous() for t in ts)


def _count(t: torch.Tensor) -> int:
    return int(np.count_nonzero(t.numpy())) if _cpu(t) else int(torch.count_nonzero(t))


def _not(t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.logical_not(t.numpy())) if _cpu(t) else ~t


def _or_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if _cpu(a, b):
        np.logical_or(a.numpy(), b.numpy(), out=a.numpy())
        return a
    return a.logical_or_(b)


def _and_not(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.greater(a.numpy(), b.numpy())) if _cpu(a, b) else torch.gt(a, b)


def _grow(
    scores: Mapping[str, torch.Tensor],
    candidates: dict[str, torch.Tensor],
    count: int,
    available: int,
) -> dict[str, torch.Tensor]:
    """The ``count`` best-scored of one pool's ``available`` candidates, as bool tensors."""
    if count <= 0:
        return {n: torch.zeros_like(c) for n, c in candidates.items()}
    if count >= available:
        return candidates
    # Pruning the `count` highest-scored candidates (largest=True) marks exactly those that
    # grow; amount * available rounds back to exactly `count` (the error is far below 1/2).
    parts = {n: TensorPart(scores[n], c, c.numel()) for n, c in candidates.items()}
    try:
        rest = select(parts, sparsity=None, amount=count / available, scope="global", largest=True)
    except ArgumentError as e:  # the selection names the tensor; say it is a gradient
        raise ArgumentError(f"growing by the dense gradient (a diverged step?): {e}") from None
    return {n: _and_not(c, rest[n]) for n, c in candidates.items()}


__all__ = ["GROW", "DynamicSparsity"]
