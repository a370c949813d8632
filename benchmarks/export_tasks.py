"""Measurements of issue 13's exports, one per call of ``tasks.py`` (see ``run.py --only export``).

CSR Linear layers vs dense ``F.linear``, a BERT-base encoder exported vs dense, sparse vs dense
safetensors checkpoints, and N:M selection vs one read pass. Competitors alternate inside each
repeat, so load from other users hits both alike.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from measure import timed
from models import build
from safetensors.torch import load_file, save_file
from torch import nn

import vlticket
from vlticket.export import SparseLinear
from vlticket.hub.config import sha256

SHAPES = ((768, 768), (3072, 768), (768, 3072))  # (out, in): attention, FFN in, FFN out
LAYER_MIX = (4, 1, 1)  # how many of each a BERT layer holds
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)


def csr_layers(spec) -> dict:
    """Median seconds of dense F.linear and SparseLinear on 8 x 128 tokens, per shape/sparsity."""
    g = torch.Generator().manual_seed(0)
    tokens = 8 * 128 if not spec["quick"] else 64
    out = {}
    for o, i in SHAPES:
        w, x = torch.randn(o, i, generator=g), torch.randn(tokens, i, generator=g)
        lin = nn.Linear(i, o)
        for s in SPARSITIES:
            keep = vlticket.prune_magnitude({"w": w}, sparsity=s)["w"]
            dense_w = w * keep
            sparse = SparseLinear(lin, keep)
            with torch.no_grad():
                lin.weight.copy_(dense_w)
                times = {"dense": [], "csr": []}
                for _ in range(spec["repeats"]):
                    times["dense"].append(
                        timed(lambda x=x, lin=lin: F.linear(x, lin.weight, lin.bias))
                    )
                    times["csr"].append(timed(lambda x=x, sparse=sparse: sparse(x)))
            out[f"{o}x{i}@{s}"] = times
    return out


def _bert_base(quick: bool) -> transformers.BertModel:
    torch.manual_seed(0)
    if quick:
        cfg = transformers.BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256
        )
    else:
        cfg = transformers.BertConfig()  # BERT-base: 12 layers, 768 hidden, 3072 FFN
    return transformers.BertModel(cfg).eval()


def _encoder_linears(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{n}.weight": m.weight
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("encoder.")
    }


def csr_forward(spec) -> dict:
    """The whole BERT-base encoder forward, exported to CSR vs masked dense."""
    dense = _bert_base(spec["quick"])
    mask = vlticket.prune_magnitude(_encoder_linears(dense), sparsity=spec["sparsity"])
    mask.apply(dense)
    sparse = vlticket.export(copy.deepcopy(dense), mask, min_sparsity=0.0)
    seq = 128 if not spec["quick"] else 16
    ids = torch.randint(0, dense.config.vocab_size, (8, seq), generator=torch.Generator())
    times = {"dense": [], "csr": []}
    with torch.no_grad():
        diff = float((dense(ids).last_hidden_state - sparse(ids).last_hidden_state).abs().max())
        for _ in range(spec["repeats"]):
            times["dense"].append(timed(lambda: dense(ids)))
            times["csr"].append(timed(lambda: sparse(ids)))
    return {"times": times, "max_abs_diff": diff}


def sparse_checkpoint(spec) -> dict:
    """save_sparse / load_sparse vs safetensors save_file / load_file + load_state_dict."""
    model = _bert_base(spec["quick"])
    mask = vlticket.prune_magnitude(model, sparsity=0.7)
    mask.apply(model)
    target = copy.deepcopy(model)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    times = {k: [] for k in ("dense_save", "dense_load", "hashed_load", "sparse_save")}
    times |= {"sparse_load": [], "sparse_hash": [], "dense_load_cold": [], "sparse_load_cold": []}
    with tempfile.TemporaryDirectory() as tmp:
        dense_path, folder = os.path.join(tmp, "model.safetensors"), os.path.join(tmp, "sparse")
        dense = Path(dense_path)
        files = [Path(folder, f) for f in ("sparse.safetensors", "mask.safetensors")]

        def load_dense():
            return target.load_state_dict(load_file(dense_path))

        for _ in range(spec["repeats"]):
            times["dense_save"].append(timed(lambda: save_file(state, dense_path)))
            times["dense_load"].append(timed(load_dense))
            times["sparse_save"].append(timed(lambda: vlticket.save_sparse(model, mask, folder)))
            times["sparse_load"].append(timed(lambda: vlticket.load_sparse(folder, target)))
            # Like for like: the dense load plus the SHA-256 check load_sparse makes of its files.
            times["hashed_load"].append(timed(lambda: (load_dense(), sha256(dense))))
            times["sparse_hash"].append(timed(lambda: [sha256(f) for f in files]))
            # From disk: the files' pages dropped from the page cache first, as after a download
            # or a reboot, so the read itself counts.
            _drop_cached([dense])
            times["dense_load_cold"].append(timed(load_dense))
            _drop_cached(Path(folder).iterdir())
            times["sparse_load_cold"].append(timed(lambda: vlticket.load_sparse(folder, target)))
        header, _ = vlticket._files.read_header(os.path.join(folder, "sparse.safetensors"))
        mheader, _ = vlticket._files.read_header(os.path.join(folder, "mask.safetensors"))
        span = lambda h, n: h[n]["data_offsets"][1] - h[n]["data_offsets"][0]  # noqa: E731
        masked_bytes = sum(span(header, n) + span(mheader, n) for n in mask)
        return {
            "times": times,
            "bits_per_weight": 8 * masked_bytes / mask.numel,
            "sparsity": mask.sparsity,
            "dense_bytes": os.path.getsize(dense_path),
            "sparse_bytes": sum(
                os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
            ),
        }


def _drop_cached(paths) -> None:
    """Evict the files' pages from the OS page cache (Linux; no privileges needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # only clean pages can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def nm_select(spec) -> dict:
    """prune_magnitude(pattern="2:4") vs one read pass, sum(|w|), over BERT-base's encoder."""
    weights = build("bert-base", spec["quick"])
    times = {"nm": [], "read": []}
    for _ in range(spec["repeats"]):
        times["read"].append(timed(lambda: sum(float(w.abs().sum()) for w in weights.values())))
        times["nm"].append(timed(lambda: vlticket.prune_magnitude(weights, pattern="2:4")))
    return times


TASKS = {
    "csr_layers": csr_layers,
    "csr_forward": csr_forward,
    "sparse_checkpoint": sparse_checkpoint,
    "nm_select": nm_select,
}
