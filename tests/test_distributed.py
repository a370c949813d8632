"""Two gloo processes on CPU: distributed masks equal the single-process mask bit for bit.

One spawn runs every case (start-up dominates); each rank writes the full masks it got, and
the tests below compare them with :func:`vlticket.prune_magnitude` on the full weights.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

import vlticket
from vlticket import Mask
from vlticket.core import _passes as passes
from vlticket.core import _select as vp

WORLD = 2


def case_weights(seed: int, ties: bool) -> dict[str, torch.Tensor]:
    """Uneven row counts (7 and 3 split 4+3 and 2+1; 1 row leaves rank 1 empty), some ties."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "enc.0.weight": (7, 5),
        "enc.1.weight": (3, 4),
        "enc.2.weight": (1, 6),
        "enc.3.weight": (40, 30),
    }
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g)
        out[name] = t.round() if ties else t
    return out


CASES = {
    # name: (seed, ties, prune kwargs, prior-mask kwargs or None, tiny search caps)
    "sparsity": (0, False, {"sparsity": 0.3}, None, False),
    "ties": (1, True, {"sparsity": 0.55}, None, False),
    "amount_prior": (2, True, {"amount": 0.4}, {"sparsity": 0.2}, False),
    "largest": (3, True, {"sparsity": 0.25, "largest": True}, None, False),
    "tensor": (4, True, {"sparsity": 0.5, "scope": "tensor"}, None, False),
    "tiny_caps": (5, False, {"amount": 0.3}, {"sparsity": 0.1}, True),
    "tiny_caps_ties": (6, True, {"sparsity": 0.45}, None, True),
}


def _full(mask: Mask) -> dict[str, torch.Tensor]:
    from vlticket.distributed import gather_mask

    return {n: m.contiguous() for n, m in gather_mask(mask).items()}


def train_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))


def train_attached(model: nn.Module, mask: Mask, rank: int | None, steps: int = 4) -> None:
    """AdamW with clipping, so the masked gradients' norm matters. ``rank`` None: one process
    on the whole batch (which DDP and FSDP2 split in halves) masking by hand, without hooks."""
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    g = torch.Generator().manual_seed(11)
    handle = mask.attach(model, opt) if rank is not None else None
    for _ in range(steps):
        x = torch.randn(8, 6, generator=g)
        if rank is not None:
            x = x.chunk(WORLD)[rank]
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        if handle is None:
            for name, p in model.named_parameters():
                if name in mask:
                    p.grad.mul_(mask[name])
        nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        opt.step()
        if handle is None:
            mask.apply(model)
    if handle is not None:
        handle.remove()


def _worker(rank: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from vlticket.distributed import prune_magnitude_distributed

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD
    )
    mesh = init_device_mesh("cpu", (WORLD,))
    mesh2 = init_device_mesh("cpu", (WORLD, 1))  # HSDP-like: replicate across, shard within
    errors = {}

    def save(case: str, mask: Mask) -> None:
        save_file(_full(mask), os.path.join(out_dir, f"{case}.rank{rank}.safetensors"))

    # Sharded weights, as FSDP2 lays them out; prior masks are sharded the same way.
    saved = vp._SAMPLE, vp._MIN_CAP, passes.CHUNK
    for case, (seed, ties, kwargs, prior_kw, tiny) in CASES.items():
        if tiny:
            vp._SAMPLE, vp._MIN_CAP, passes.CHUNK = 8, 2, 16
        full = case_weights(seed, ties)
        sharded = {n: distribute_tensor(t, mesh, [Shard(0)]) for n, t in full.items()}
        prior = None
        if prior_kw is not None:
            prior = prune_magnitude_distributed(sharded, **prior_kw)
        save(case, prune_magnitude_distributed(sharded, mask=prior, **kwargs))
        vp._SAMPLE, vp._MIN_CAP, passes.CHUNK = saved

    # Mixed placements: Replicate on a 1-D mesh, (Replicate, Shard(0)) on a 2-D mesh, a plain
    # tensor: each weight is counted once.
    full = case_weights(7, True)
    names = list(full)
    mixed = {
        names[0]: distribute_tensor(full[names[0]], mesh, [Replicate()]),
        names[1]: distribute_tensor(full[names[1]], mesh2, [Replicate(), Shard(0)]),
        names[2]: full[names[2]].clone(),
        names[3]: distribute_tensor(full[names[3]], mesh, [Shard(0)]),
    }
    save("mixed", prune_magnitude_distributed(mixed, sparsity=0.4))

    # DDP: replicated plain parameters, pruned without communication, checked by checksum.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    ddp = nn.parallel.DistributedDataParallel(model)
    save("ddp", prune_magnitude_distributed(ddp, sparsity=0.6))

    # Replicas that differ must not silently give different masks.
    drift = {"w": torch.full((4, 4), float(rank + 1)) * torch.arange(16.0).reshape(4, 4)}
    drift["w"][0, 0] = 100.0 * (1 - rank)
    try:
        prune_magnitude_distributed(drift, sparsity=0.5)
    except vlticket.MismatchError as e:
        errors["drift"] = str(e)

    # FSDP2 itself.
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    fsdp = nn.Sequential(nn.Linear(5, 9), nn.Linear(9, 3))
    fully_shard(fsdp, mesh=mesh)
    save("fsdp2", prune_magnitude_distributed(fsdp, amount=0.35))

    # Training with the mask attached, each rank on its own half of the batch.
    torch.manual_seed(0)
    ddp = nn.parallel.DistributedDataParallel(train_model())
    train_attached(ddp, prune_magnitude_distributed(ddp, sparsity=0.6), rank)
    save_file(
        dict(ddp.module.state_dict()), os.path.join(out_dir, f"train_ddp.rank{rank}.safetensors")
    )
    torch.manual_seed(0)
    fsdp = train_model()
    fully_shard(fsdp, mesh=mesh)
    train_attached(fsdp, prune_magnitude_distributed(fsdp, sparsity=0.6), rank)
    full_weights = {n: p.full_tensor().contiguous() for n, p in fsdp.named_parameters()}
    save_file(full_weights, os.path.join(out_dir, f"train_fsdp2.rank{rank}.safetensors"))

    with open(os.path.join(out_dir, f"errors.rank{rank}.json"), "w") as f:
        json.dump(errors, f)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("dist"))
    mp.start_processes(_worker, args=(out_dir,), nprocs=WORLD, join=True, start_method="spawn")

    def load(case: str) -> list[dict[str, torch.Tensor]]:
        files = [os.path.join(out_dir, f"{case}.rank{r}.safetensors") for r in range(WORLD)]
        return [load_file(f) for f in files]

    def errors(rank: int) -> dict:
        with open(os.path.join(out_dir, f"errors.rank{rank}.json")) as f:
            return json.load(f)

    return load, errors


def _expected(case: str) -> Mask:
    seed, ties, kwargs, prior_kw, _ = CASES[case]
    w = case_weights(seed, ties)
    prior = vlticket.prune_magnitude(w, **prior_kw) if prior_kw is not None else None
    return vlticket.prune_magnitude(w, mask=prior, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_mask_equals_single_process(results, case):
    load, _ = results
    expected = _expected(case)
    for got in load(case):
        assert Mask(got) == expected


def test_replicated_placements_are_counted_once(results):
    load, _ = results
    expected = vlticket.prune_magnitude(case_weights(7, True), sparsity=0.4)
    for got in load("mixed"):
        assert Mask(got) == expected
        assert Mask(got).num_pruned == round(0.4 * expected.numel)


def test_ddp_masks_identical_on_every_rank(results):
    load, _ = results
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    expected = vlticket.prune_magnitude(model, sparsity=0.6)
    names = {f"{n}" for n in expected}
    for got in load("ddp"):
        assert set(got) == names  # the inner module's names, not "module.0.weight"
        assert Mask(got) == expected


def test_fsdp2_mask_equals_single_process(results):
    load, _ = results
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 9), nn.Linear(9, 3))
    expected = vlticket.prune_magnitude(model, amount=0.35)
    for got in load("fsdp2"):
        assert Mask(got) == expected


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_training_attached_matches_one_process(results, wrapper):
    """Pruned weights stay zero on every rank, and the run equals one process on the whole
    batch: the gradients were masked before clipping and averaging."""
    load, _ = results
    torch.manual_seed(0)
    model = train_model()
    mask = vlticket.prune_magnitude(model, sparsity=0.6)
    mask.apply(model)
    train_attached(model, mask, rank=None)
    expected = model.state_dict()
    for got in load(f"train_{wrapper}"):
        for name, w in got.items():
            if name in mask:
                assert torch.all(w[~mask[name]] == 0), name
            torch.testing.assert_close(w, expected[name], rtol=1e-5, atol=1e-6)


def test_diverged_replicas_raise_on_every_rank(results):
    _, errors = results
    for rank in range(WORLD):
        assert "differ across ranks" in errors(rank).get("drift", "")


def test_needs_an_initialised_process_group():
    from vlticket.distributed import prune_magnitude_distributed

    with pytest.raises(vlticket.ArgumentError, match="init_process_group"):
        prune_magnitude_distributed({"w": torch.ones(2, 2)}, sparsity=0.5)
