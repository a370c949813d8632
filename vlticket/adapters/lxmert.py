"""LXMERT: transformers' ``Lxmert*`` models and the original code base share canonical names.

Canonical names are the names inside the backbone (transformers' ``LxmertModel``, the original
``LXRTModel``), e.g. ``encoder.x_layers.0.visual_attention.att.query.weight``. The prefix
``lxmert.`` (transformers heads), ``lxrt_encoder.model.bert.`` (original task models),
``bert.`` (original pre-training checkpoints) or ``module.`` is stripped, so masks and
checkpoints captured through this adapter move between all of them unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import ArgumentError
from .base import BERT_LAYER, Adapter, Part, _layers

_CROSS = (
    (r"visual_attention\.att\.(query|key|value)", "cross_attention"),
    (r"visual_attention\.output\.dense", "cross_attention"),
    (r"(lang|visn)_self_att\.self\.(query|key|value)", "attention"),
    (r"(lang|visn)_self_att\.output\.dense", "attention"),
    (r"(lang|visn)_inter\.dense", "ffn"),
    (r"(lang|visn)_output\.dense", "ffn"),
)

PARTS = (
    *_layers("encoder.layer", "language", *BERT_LAYER),
    *_layers("encoder.r_layers", "vision", *BERT_LAYER),
    *_layers("encoder.x_layers", "cross", *_CROSS),
    Part(
        r"embeddings\.(word|position|token_type)_embeddings\.weight",
        "language",
        "embeddings",
        "embeddings",
        "embeddings",
    ),
    Part(
        r"encoder\.visn_fc\.(visn_fc|box_fc)\.weight",
        "vision",
        "projection",
        "projection",
        "visual_projection",
    ),
    Part(r"pooler\.dense\.weight", "pooler", "pooler", "pooler", "pooler"),
)

LXMERT = Adapter(
    name="lxmert",
    prefix=r"(?:module\.|_orig_mod\.)*(?:lxmert\.|lxrt_encoder\.model\.bert\.|model\.bert\.|bert\.)?",
    signature=(r"encoder\.x_layers\.\d+\.visual_attention\.att\.query\.weight",),
    parts=PARTS,
    description="LXMERT: transformers Lxmert* and the original LXRT code (same canonical names)",
)

# Whole state dicts (every tensor, heads included) between the two code bases.
_ORIGINAL_HEADS = {"vqa": "lxrt_encoder.model.bert.", "pretraining": "bert."}


def to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original LXMERT state dict to transformers' names (tensors shared, not copied).

    The backbone prefix becomes ``lxmert.`` and the original VQA head ``logit_fc.*`` becomes
    ``answer_head.logit_fc.*`` (same layer indices); pre-training heads keep their names.

    Example:
        >>> hf.load_state_dict(lxmert.to_transformers(original.state_dict()))   # doctest: +SKIP
    """
    out = {}
    for name, t in state_dict.items():
        new = re.sub(r"^(?:module\.)?(?:lxrt_encoder\.model\.bert\.|bert\.)", "lxmert.", name)
        new = re.sub(r"^logit_fc\.", "answer_head.logit_fc.", new)
        out[new] = t
    return out


def to_original(state_dict: Mapping[str, torch.Tensor], head: str = "vqa") -> dict:
    """Rename a transformers LXMERT state dict to the original code base's names.

    Args:
        state_dict: e.g. ``LxmertForQuestionAnswering(...).state_dict()``.
        head: ``"vqa"`` for the original task models (``lxrt_encoder.model.bert.*`` and
            ``logit_fc.*``) or ``"pretraining"`` (``bert.*``, heads unchanged).
    """
    if head not in _ORIGINAL_HEADS:
        raise ArgumentError(f"`head`: expected one of {sorted(_ORIGINAL_HEADS)}, found {head!r}")
    out = {}
    for name, t in state_dict.items():
        new = re.sub(r"^lxmert\.", _ORIGINAL_HEADS[head], name)
        if head == "vqa":
            new = re.sub(r"^answer_head\.logit_fc\.", "logit_fc.", new)
        out[new] = t
    return out
