"""Weight shapes of the encoders benchmarked, built directly (random, no download, no model class).

BERT-base's encoder is UNITER-base's shape; LXMERT's default encoder has 9 language, 5 object
relationship and 5 cross-modality layers, all hidden 768 with FFN 3072.
"""

from __future__ import annotations

import torch


def _attention(prefix: str, hidden: int) -> dict[str, tuple[int, int]]:
    return {f"{prefix}.{n}.weight": (hidden, hidden) for n in ("query", "key", "value", "output")}


def _ffn(prefix: str, hidden: int, ffn: int) -> dict[str, tuple[int, int]]:
    return {
        f"{prefix}.intermediate.weight": (ffn, hidden),
        f"{prefix}.output.weight": (hidden, ffn),
    }


def bert_shapes(layers: int = 12, hidden: int = 768, ffn: int = 3072) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for i in range(layers):
        out |= _attention(f"layer.{i}.attention", hidden) | _ffn(f"layer.{i}", hidden, ffn)
    return out


def lxmert_shapes(
    l_layers: int = 9,
    r_layers: int = 5,
    x_layers: int = 5,
    hidden: int = 768,
    ffn: int = 3072,
    visual_feat: int = 2048,
) -> dict[str, tuple]:
    out: dict[str, tuple] = {"visn_fc.weight": (hidden, visual_feat), "box_fc.weight": (hidden, 4)}
    for stack, n in (("l_layers", l_layers), ("r_layers", r_layers)):
        for i in range(n):
            p = f"{stack}.{i}"
            out |= _attention(f"{p}.attention", hidden) | _ffn(p, hidden, ffn)
    for i in range(x_layers):
        p = f"x_layers.{i}"
        for part in ("visual_attention", "lang_self_att", "visn_self_att"):
            out |= _attention(f"{p}.{part}", hidden)
        out |= _ffn(f"{p}.lang", hidden, ffn) | _ffn(f"{p}.visn", hidden, ffn)
    return out


MODELS = {
    "bert-base": bert_shapes,
    "lxmert": lxmert_shapes,
}
QUICK_MODELS = {
    "bert-base": lambda: bert_shapes(layers=2, hidden=256, ffn=1024),
    "lxmert": lambda: lxmert_shapes(2, 1, 1, hidden=256, ffn=1024, visual_feat=512),
}


def shapes(model: str, quick: bool) -> dict[str, tuple]:
    return (QUICK_MODELS if quick else MODELS)[model]()


def build(model: str, quick: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights, tie-free in practice (BERT's init scale)."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * 0.02 for n, s in shapes(model, quick).items()}
