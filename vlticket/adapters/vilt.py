"""ViLT in two forms: transformers' ``Vilt*`` models and the original (timm-style) code base.

Canonical names are transformers' ``ViltModel`` names, e.g.
``encoder.layer.0.attention.attention.query.weight``, for both forms. The one exception is the
original fused attention input ``transformer.blocks.N.attn.qkv.weight``: a mask or hook needs a
leaf tensor, and q, k and v are rows of one tensor there, so its canonical name is
``encoder.layer.N.attention.attention.qkv.weight``. :func:`to_transformers` splits it (rows
``0:H``, ``H:2H``, ``2H:3H`` are query, key, value) and :func:`to_original` fuses it back, for
masks, checkpoints and plain mappings alike. Prefixes ``vilt.`` and ``module.`` are stripped.
Whole state dicts convert with :func:`state_dict_to_transformers` / :func:`state_dict_to_original`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import nn

from .._naming import unwrap
from ..core import Checkpoint, Mask
from ..errors import NameMismatchError, ShapeMismatchError
from .base import (
    BERT_MATRICES,
    Adapter,
    Embed,
    Forward,
    Structure,
    TextLayers,
    attention_heads,
    embeddings,
    ffn_neurons,
    layers,
    pooler,
    projection,
)

_LAYER = (
    (r"attention\.attention\.(query|key|value|qkv)", "attention"),
    (r"attention\.output\.dense", "attention"),
    (r"intermediate\.dense", "ffn"),
    (r"output\.dense", "ffn"),
)

PARTS = (
    *layers("encoder.layer", "cross", *_LAYER),
    embeddings(
        r"embeddings\.text_embeddings\.(word|position|token_type)_embeddings\.weight",
        stream="language",
    ),
    embeddings(r"embeddings\.(cls_token|position_embeddings)", stream="vision"),
    embeddings(r"embeddings\.token_type_embeddings\.weight", stream="cross"),
    projection(r"embeddings\.patch_embeddings\.projection\.weight"),
    pooler(),
)

_L = r"encoder\.layer\.\d+\."
_FFN = ffn_neurons(_L, "intermediate.dense", "output.dense")
STRUCTURE = (
    attention_heads(
        _L + r"attention\.", "attention.query", "attention.key", "attention.value", "output.dense"
    ),
    _FFN,
)
# The original's fused q/k/v (rows: q of every head, then k, then v): timm's Attention derives
# the head size from the hidden size and reshapes its output to it, so it cannot run with fewer
# heads: heads are masked here and removed after conversion to transformers' ViLT.
STRUCTURE_ORIGINAL = (
    Structure(
        kind="head",
        where=_L + r"attention\.",
        rows=("attention.qkv",),
        columns=("output.dense",),
        fused=3,
        resizable=False,
    ),
    _FFN,
)


def embedding_hooks(model: nn.Module) -> tuple[Embed, Forward]:
    """Adversarial-training hooks for transformers' ``ViltModel`` / ``ViltFor*``: perturbs word
    and image embeddings.

    The batch is a mapping with ``input_ids`` and ``pixel_values`` (optional ``attention_mask``,
    ``token_type_ids``, ``pixel_mask``), as ViltProcessor makes it. The forward returns
    ``.logits`` (the pooled output for a bare ``ViltModel``).
    """
    inner = unwrap(model)
    vilt = getattr(inner, "vilt", inner)

    def embed(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        emb = vilt.embeddings
        pixels = batch["pixel_values"]
        pixel_mask = batch.get("pixel_mask")
        if pixel_mask is None:
            pixel_mask = torch.ones(pixels.shape[0], *pixels.shape[2:], device=pixels.device)
        image, image_mask, _ = emb.visual_embed(
            pixels, pixel_mask, max_image_length=vilt.config.max_image_length
        )
        words = emb.text_embeddings.word_embeddings(batch["input_ids"])
        return {"inputs_embeds": words, "image_embeds": image, "image_mask": image_mask.long()}

    def forward(batch: Mapping[str, torch.Tensor], e: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = model(
            inputs_embeds=e["inputs_embeds"],
            attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"),
            image_embeds=e["image_embeds"],
            pixel_mask=e["image_mask"],
        )
        return out.logits if hasattr(out, "logits") else out.pooler_output

    return embed, forward


# ViLT normalises before attention and FFN (pre-LN, as ViT); BERT's norms sit after them.
_PRE_LN = (
    (
        r"encoder\.layer\.\d+\.layernorm_(before|after)\.(weight|bias)",
        "ViLT normalises before attention and FFN (pre-LN); BERT's layer norms sit after them",
    ),
)

VILT = Adapter(
    name="vilt",
    prefix=r"(?:module\.|_orig_mod\.)*(?:vilt\.)?",
    signature=(  # text embeddings tell ViLT from transformers' ViT, which shares the layers
        r"encoder\.layer\.\d+\.attention\.attention\.query\.weight",
        r"embeddings\.text_embeddings\.word_embeddings\.weight",
    ),
    parts=PARTS,
    description="ViLT: transformers ViltModel / ViltFor* (canonical names = ViltModel's)",
    text_layers=TextLayers(
        layer="encoder.layer.{n}.",
        rename={m: m.replace("attention.self.", "attention.attention.") for m in BERT_MATRICES},
        embeddings="embeddings.text_embeddings.",
        norms={},
        notes=_PRE_LN,
    ),
    embedding_hooks=embedding_hooks,
    structure=STRUCTURE,
)

_BLOCK = r"transformer\.blocks\.(?P<n>\d+)\."
VILT_ORIGINAL = Adapter(
    name="vilt-original",
    prefix=r"(?:module\.|_orig_mod\.)*",
    signature=(_BLOCK + r"attn\.qkv\.weight", r"text_embeddings\.word_embeddings\.weight"),
    parts=PARTS,
    rename=(
        (_BLOCK + r"attn\.qkv\.(weight|bias)", r"encoder.layer.\g<n>.attention.attention.qkv.\2"),
        (_BLOCK + r"attn\.proj\.(weight|bias)", r"encoder.layer.\g<n>.attention.output.dense.\2"),
        (_BLOCK + r"mlp\.fc1\.(weight|bias)", r"encoder.layer.\g<n>.intermediate.dense.\2"),
        (_BLOCK + r"mlp\.fc2\.(weight|bias)", r"encoder.layer.\g<n>.output.dense.\2"),
        (_BLOCK + r"norm1\.(weight|bias)", r"encoder.layer.\g<n>.layernorm_before.\2"),
        (_BLOCK + r"norm2\.(weight|bias)", r"encoder.layer.\g<n>.layernorm_after.\2"),
        (r"text_embeddings\.(.*)", r"embeddings.text_embeddings.\1"),
        (r"token_type_embeddings\.weight", "embeddings.token_type_embeddings.weight"),
        (r"transformer\.pos_embed", "embeddings.position_embeddings"),
        (r"transformer\.cls_token", "embeddings.cls_token"),
        (
            r"transformer\.patch_embed\.proj\.weight",
            "embeddings.patch_embeddings.projection.weight",
        ),
    ),
    description="ViLT original code base (timm `transformer.blocks.N.attn.qkv`, fused q/k/v)",
    text_layers=TextLayers(  # BERT's query, key and value become the rows of the fused qkv
        layer="encoder.layer.{n}.",
        rename={
            m: (
                "attention.attention.qkv.weight"
                if m.startswith("attention.self.")
                else m.replace("attention.self.", "attention.attention.")
            )
            for m in BERT_MATRICES
        },
        embeddings="embeddings.text_embeddings.",
        norms={},
        notes=_PRE_LN,
    ),
    structure=STRUCTURE_ORIGINAL,
)

_QKV = re.compile(r"(.*\.attention\.attention\.)qkv\.(weight|bias)")
_SPLIT = re.compile(r"(.*\.attention\.attention\.)(query|key|value)\.(weight|bias)")
_ORDER = ("query", "key", "value")

T = TypeVar("T", Mask, Checkpoint, dict)


def _rebuild(source, tensors: dict[str, torch.Tensor]):
    if isinstance(source, Mask):
        return Mask(tensors)
    if isinstance(source, Checkpoint):
        return Checkpoint(tensors)
    return tensors


def to_transformers(tensors: T) -> T:
    """Split each fused ``...attention.attention.qkv.weight`` (and ``.bias``) into query, key
    and value: rows ``0:H``, ``H:2H``, ``2H:3H``.

    Works on a :class:`~vlticket.Mask`, a :class:`~vlticket.Checkpoint` or a mapping keyed by
    canonical names, and returns the same kind; other names pass through unchanged.

    Example:
        >>> mask_hf = vilt.to_transformers(mask_original)   # doctest: +SKIP
        >>> mask_hf.apply(hf_model, adapter=vlticket.adapters.get("vilt"))   # doctest: +SKIP
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        m = _QKV.fullmatch(name)
        if m is None:
            out[name] = t
            continue
        if t.dim() not in (1, 2) or t.shape[0] % 3:
            raise ShapeMismatchError(
                f"tensor {name!r}: expected a fused q/k/v {m[2]} with 3*H rows, found shape "
                f"{tuple(t.shape)}"
            )
        for part, chunk in zip(_ORDER, t.chunk(3, dim=0), strict=True):
            out[f"{m[1]}{part}.{m[2]}"] = chunk.clone()
    return _rebuild(tensors, out)


def to_original(tensors: T) -> T:
    """Fuse each layer's query, key and value back into ``...attention.attention.qkv.*``.

    The inverse of :func:`to_transformers`; a layer with only some of the three raises
    :class:`~vlticket.errors.NameMismatchError`.
    """
    out: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        m = _SPLIT.fullmatch(name)
        if m is None:
            out[name] = t
            continue
        key = (m[1], m[3])
        pending.setdefault(key, {})[m[2]] = t
        if len(pending[key]) == 3:
            parts = pending.pop(key)
            out[f"{m[1]}qkv.{m[3]}"] = torch.cat([parts[p] for p in _ORDER])
    if pending:
        (layer, kind), have = next(iter(pending.items()))
        raise NameMismatchError(
            f"{layer}qkv.{kind} needs query, key and value; found only {sorted(have)}"
        )
    return _rebuild(tensors, out)


# Whole state dicts (biases, norms and the VQA head too): original name <-> transformers name.
_STATE_DICT_NAMES = (
    ("transformer.blocks.{n}.norm1.{p}", "vilt.encoder.layer.{n}.layernorm_before.{p}"),
    ("transformer.blocks.{n}.attn.qkv.{p}", "vilt.encoder.layer.{n}.attention.attention.qkv.{p}"),
    ("transformer.blocks.{n}.attn.proj.{p}", "vilt.encoder.layer.{n}.attention.output.dense.{p}"),
    ("transformer.blocks.{n}.norm2.{p}", "vilt.encoder.layer.{n}.layernorm_after.{p}"),
    ("transformer.blocks.{n}.mlp.fc1.{p}", "vilt.encoder.layer.{n}.intermediate.dense.{p}"),
    ("transformer.blocks.{n}.mlp.fc2.{p}", "vilt.encoder.layer.{n}.output.dense.{p}"),
    ("transformer.norm.{p}", "vilt.layernorm.{p}"),
    ("transformer.patch_embed.proj.{p}", "vilt.embeddings.patch_embeddings.projection.{p}"),
    ("transformer.cls_token", "vilt.embeddings.cls_token"),
    ("transformer.pos_embed", "vilt.embeddings.position_embeddings"),
    ("text_embeddings.{p}", "vilt.embeddings.text_embeddings.{p}"),
    ("token_type_embeddings.{p}", "vilt.embeddings.token_type_embeddings.{p}"),
    ("pooler.{p}", "vilt.pooler.{p}"),
    ("vqa_classifier.{p}", "classifier.{p}"),
)


def _template_regex(template: str) -> re.Pattern:
    regex = re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{p\}", "(?P<p>.+)")
    return re.compile(regex)


_TO_HF = tuple((_template_regex(o), h) for o, h in _STATE_DICT_NAMES)
_TO_ORIGINAL = tuple((_template_regex(h), o) for o, h in _STATE_DICT_NAMES)


def _renamed(state_dict, table) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in state_dict.items():
        if name.endswith("position_ids"):  # a buffer, recomputed by both code bases
            continue
        for regex, template in table:
            m = regex.fullmatch(name)
            if m:
                name = template.format(**m.groupdict())
                break
        out[name] = t
    return out


def state_dict_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """An original ViLT state dict under transformers' ``ViltFor*`` names, q/k/v split.

    The VQA head ``vqa_classifier.*`` becomes ``classifier.*``; names outside the backbone and
    that head pass through unchanged, so ``load_state_dict(..., strict=True)`` reports them.

    Example:
        >>> sd = vilt.state_dict_to_transformers(original.state_dict())  # doctest: +SKIP
        >>> hf.load_state_dict(sd)                                        # doctest: +SKIP
    """
    return to_transformers(_renamed(state_dict, _TO_HF))


def state_dict_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """A transformers ``ViltFor*`` state dict under the original ViLT names, q/k/v fused."""
    return _renamed(to_original(dict(state_dict)), _TO_ORIGINAL)
