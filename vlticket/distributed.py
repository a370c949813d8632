"""Exact global magnitude pruning inside a ``torch.distributed`` job (DDP, FSDP2 / DTensor).

Every rank calls :func:`prune_magnitude_distributed` at the same point of its loop, with the
same arguments, and gets the mask the single-process :func:`vlticket.prune_magnitude` would
compute on the full weights, bit for bit:

* plain tensors (DDP: every rank holds a replica) are pruned locally on each rank with no
  communication, then one small all-reduce of a checksum proves the ranks agree;
* DTensor weights sharded ``Shard(0)`` (FSDP2's layout, uneven shards included; ``Replicate``
  mesh dimensions, as in HSDP, counted once) are pruned from the local shards: only counts
  cross ranks (a few all-reduces of at most a few thousand integers), never weights. Ties
  are broken as in one process: name order, then global row-major index.

The result for a DTensor weight is a DTensor bool mask with the weight's placements, so
``mask.apply(model)`` and ``mask.attach(model, optimizer)`` work on the sharded model.

Example, IMP with rewinding inside an existing loop. ``model`` is the module FSDP2's
``fully_shard`` was applied to, or ``ddp_model.module`` under DDP (so names carry no
``module.`` prefix)::

    import torch.distributed as dist
    from vlticket import Checkpoint
    from vlticket.distributed import gather_mask, prune_magnitude_distributed

    theta_i = Checkpoint.capture(model)            # each rank: its own shards, at step i
    mask = None
    for r in range(9):
        handle = mask.attach(model, optimizer) if mask is not None else None
        train(ddp_or_fsdp_model, optimizer)        # the user's loop, unchanged
        if handle is not None:
            handle.remove()
        mask = prune_magnitude_distributed(model, amount=0.1, mask=mask)  # on every rank
        theta_i.restore(model, mask=mask)          # rewind, keeping the mask
    full = gather_mask(mask)                       # a collective: every rank calls it
    if dist.get_rank() == 0:
        full.save("ticket.safetensors")
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from ._naming import AUTO, AdapterArg, Weights
from .core import Mask
from .core.selection import TensorPart, check_request, local_reduce, select, targets
from .errors import ArgumentError, MismatchError

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def _all_reduce(group: dist.ProcessGroup | None):
    """``reduce(values, op)`` over ``group``: small int64 arrays only."""
    on_gpu = dist.get_backend(group) == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")

    def reduce(values: np.ndarray, op: str) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(device)
        dist.all_reduce(t, op=_OPS[op], group=group)
        return t.cpu().numpy()

    return reduce


def _sharded_part(name: str, w: DTensor, keep: torch.Tensor | None, world: int) -> TensorPart:
    """The local shard of a DTensor and where it sits in the global row order."""
    mesh, placements = w.device_mesh, w.placements
    if mesh.size() != world:
        raise ArgumentError(
            f"`weights[{name!r}]`: its device mesh spans {mesh.size()} ranks but the process "
            f"group has {world}; give a group made of the mesh's ranks"
        )
    coord = mesh.get_coordinate()
    shard_dims = []
    for dim, p in enumerate(placements):
        if type(p) is Shard and p.dim == 0:
            shard_dims.append(dim)
        elif not isinstance(p, Replicate):
            raise ArgumentError(
                f"`weights[{name!r}]`: supported placements are Shard(0) and Replicate(), "
                f"found {placements}; redistribute to Shard(0) (FSDP2's layout) first"
            )
    if len(shard_dims) > 1:
        raise ArgumentError(
            f"`weights[{name!r}]`: sharded along dim 0 on {len(shard_dims)} mesh dimensions, "
            "expected at most one"
        )
    counted = all(coord[d] == 0 for d, p in enumerate(placements) if isinstance(p, Replicate))
    shard, shards = (coord[shard_dims[0]], mesh.size(shard_dims[0])) if shard_dims else (0, 1)
    if isinstance(keep, DTensor):
        if keep.placements != placements:
            raise ArgumentError(
                f"`mask[{name!r}]`: placements {keep.placements} differ from the weight's "
                f"{placements}"
            )
        keep = keep.to_local()
    local = w.to_local()
    if keep is not None and keep.shape != local.shape:
        raise ArgumentError(
            f"`mask[{name!r}]`: expected a DTensor or the local shard's shape "
            f"{tuple(local.shape)}, found a tensor of shape {tuple(keep.shape)}"
        )
    return TensorPart(local, keep, w.numel(), shard, shards, counted)


def _checksum(masks: dict[str, torch.Tensor]) -> int:
    crc = 0
    for name, m in masks.items():
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(np.packbits(m.detach().cpu().reshape(-1).numpy()).tobytes(), crc)
    return crc


def _check_agree(masks: dict[str, torch.Tensor], reduce) -> None:
    crc = _checksum(masks)
    both = reduce(np.array([crc, -crc], np.int64), "max")
    if int(both[0]) != crc or int(-both[1]) != crc:
        raise MismatchError(
            "the masks of replicated weights differ across ranks, so the replicas' weights "
            "differ: prune right after an optimizer step that DDP synchronised, or broadcast "
            "the parameters from rank 0 first"
        )


def prune_magnitude_distributed(
    weights: Weights,
    *,
    sparsity: float | None = None,
    amount: float | None = None,
    mask: Mask | None = None,
    scope: str = "global",
    largest: bool = False,
    adapter: AdapterArg = AUTO,
    group: dist.ProcessGroup | None = None,
) -> Mask:
    """:func:`vlticket.prune_magnitude` across the ranks of ``group``; call it on every rank.

    Arguments as in :func:`vlticket.prune_magnitude`, plus:

    Args:
        group: the process group (default: the world). DTensor weights must live on a device
            mesh spanning exactly its ranks.

    Returns a Mask with the same names: plain bool tensors for plain weights (identical on
    every rank), DTensor bool masks with the weights' placements for DTensor weights.

    Example:
        >>> mask = prune_magnitude_distributed(fsdp_model, sparsity=0.2)  # doctest: +SKIP
    """
    if not dist.is_initialized():
        raise ArgumentError(
            "torch.distributed is not initialised: call dist.init_process_group first, or use "
            "vlticket.prune_magnitude in a single process"
        )
    check_request(sparsity, amount, scope)
    if isinstance(weights, nn.parallel.DistributedDataParallel):
        weights = weights.module
    tensors, keeps = targets(weights, mask, adapter)
    reduce = _all_reduce(group)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    sharded = {n for n, t in tensors.items() if isinstance(t, DTensor)}
    parts = {}
    for name, t in tensors.items():
        keep = keeps.get(name)
        if name in sharded:
            parts[name] = _sharded_part(name, t, keep, world)
        else:
            keep = keep.full_tensor() if isinstance(keep, DTensor) else keep
            # With no sharded weight every rank counts its own replica: no communication.
            parts[name] = TensorPart(t, keep, t.numel(), counted=not sharded or rank == 0)
    local = select(
        parts,
        sparsity=sparsity,
        amount=amount,
        scope=scope,
        largest=largest,
        reduce=reduce if sharded else local_reduce,
    )
    _check_agree({n: m for n, m in local.items() if n not in sharded}, reduce)
    out = {}
    for name, m in local.items():
        t = tensors[name]
        if name in sharded:
            m = DTensor.from_local(
                m, t.device_mesh, t.placements, run_check=False, shape=t.shape, stride=t.stride()
            )
        out[name] = m
    return Mask(out)


def gather_mask(mask: Mask) -> Mask:
    """The whole mask as plain tensors on every rank, e.g. to save it; call it on every rank.

    DTensor entries are gathered (a collective); plain entries are returned as they are.

    Example:
        >>> full = gather_mask(mask)  # doctest: +SKIP
        >>> if dist.get_rank() == 0: full.save("ticket.safetensors")  # doctest: +SKIP
    """
    return Mask({n: m.full_tensor() if isinstance(m, DTensor) else m for n, m in mask.items()})
