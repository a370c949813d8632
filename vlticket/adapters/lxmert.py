"""LXMERT: transformers' ``Lxmert*`` models and the original code base share canonical names.

Canonical names are the names inside the backbone (transformers' ``LxmertModel``, the original
``LXRTModel``), e.g. ``encoder.x_layers.0.visual_attention.att.query.weight``. The prefix
``lxmert.`` (transformers heads), ``lxrt_encoder.model.bert.`` (original task models;
``lxrt_encoder.model.module.bert.`` when fine-tuned with ``--multiGPU``, which wraps the encoder
in ``nn.DataParallel``), ``bert.`` (original pre-training checkpoints) or ``module.`` is stripped,
so masks and checkpoints captured through this adapter move between all of them unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from .._naming import unwrap
from ..errors import ArgumentError
from .base import (
    BERT_LAYER,
    BERT_TEXT_LAYERS,
    Adapter,
    Embed,
    Forward,
    Structure,
    attention_heads,
    bert_structure,
    embeddings,
    ffn_neurons,
    layers,
    pooler,
    projection,
)

_CROSS = (
    (r"visual_attention\.att\.(query|key|value)", "cross_attention"),
    (r"visual_attention\.output\.dense", "cross_attention"),
    (r"(lang|visn)_self_att\.self\.(query|key|value)", "attention"),
    (r"(lang|visn)_self_att\.output\.dense", "attention"),
    (r"(lang|visn)_inter\.dense", "ffn"),
    (r"(lang|visn)_output\.dense", "ffn"),
)

PARTS = (
    *layers("encoder.layer", "language", *BERT_LAYER),
    *layers("encoder.r_layers", "vision", *BERT_LAYER),
    *layers("encoder.x_layers", "cross", *_CROSS),
    embeddings(r"embeddings\.(word|position|token_type)_embeddings\.weight", stream="language"),
    projection(r"encoder\.visn_fc\.(visn_fc|box_fc)\.weight"),
    pooler(),
)

_X = r"encoder\.x_layers\.\d+\."
STRUCTURE: tuple[Structure, ...] = (
    *bert_structure("encoder.layer"),
    *bert_structure("encoder.r_layers"),
    attention_heads(
        _X + r"visual_attention\.", "att.query", "att.key", "att.value", "output.dense"
    ),
    *(
        attention_heads(
            _X + rf"{s}_self_att\.", "self.query", "self.key", "self.value", "output.dense"
        )
        for s in ("lang", "visn")
    ),
    *(ffn_neurons(_X, f"{s}_inter.dense", f"{s}_output.dense") for s in ("lang", "visn")),
)


def embedding_hooks(model: nn.Module) -> tuple[Embed, Forward]:
    """Adversarial-training hooks for transformers' ``LxmertForQuestionAnswering`` (or
    ``LxmertModel``): perturbs word embeddings and the region features ``visual_feats``.

    The batch is a mapping with ``input_ids``, ``visual_feats``, ``visual_pos`` (optional
    ``attention_mask``, ``token_type_ids``, ``visual_attention_mask``). The forward returns
    ``question_answering_score`` (the pooled output for a bare ``LxmertModel``).
    """
    inner = unwrap(model)
    lxmert = getattr(inner, "lxmert", inner)

    def embed(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        words = lxmert.embeddings.word_embeddings(batch["input_ids"])
        return {"inputs_embeds": words, "visual_feats": batch["visual_feats"]}

    def forward(batch: Mapping[str, torch.Tensor], e: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        token_types = batch.get("token_type_ids")
        if token_types is None:
            token_types = torch.zeros_like(ids)
        out = model(
            inputs_embeds=e["inputs_embeds"],
            visual_feats=e["visual_feats"],
            visual_pos=batch["visual_pos"],
            attention_mask=batch.get("attention_mask"),
            token_type_ids=token_types,
            visual_attention_mask=batch.get("visual_attention_mask"),
        )
        score = getattr(out, "question_answering_score", None)
        return score if score is not None else out.pooled_output

    return embed, forward


# The original ``--multiGPU`` flag wraps ``lxrt_encoder.model`` in nn.DataParallel: ``module.``.
_BACKBONE = r"(?:lxrt_encoder\.)?model\.(?:module\.)?bert\.|bert\."
_PREFIX = rf"(?:module\.|_orig_mod\.)*(?:lxmert\.|{_BACKBONE})?"

LXMERT = Adapter(
    name="lxmert",
    prefix=_PREFIX,
    signature=(r"encoder\.x_layers\.\d+\.visual_attention\.att\.query\.weight",),
    parts=PARTS,
    description="LXMERT: transformers Lxmert* and the original LXRT code (same canonical names)",
    text_layers=BERT_TEXT_LAYERS,
    embedding_hooks=embedding_hooks,
    structure=STRUCTURE,
)

# Whole state dicts (every tensor, heads included) between the two code bases.
_ORIGINAL_HEADS = {"vqa": "lxrt_encoder.model.bert.", "pretraining": "bert."}


def state_dict_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original LXMERT state dict to transformers' names (tensors shared, not copied).

    The backbone prefix (``lxrt_encoder.model.bert.``; ``lxrt_encoder.model.module.bert.`` from
    ``--multiGPU`` runs; ``bert.``) becomes ``lxmert.`` and the original VQA head ``logit_fc.*``
    becomes ``answer_head.logit_fc.*`` (same layer indices); pre-training heads keep their names.

    Example:
        >>> sd = lxmert.state_dict_to_transformers(original.state_dict())  # doctest: +SKIP
        >>> hf.load_state_dict(sd)                                         # doctest: +SKIP
    """
    out = {}
    for name, t in state_dict.items():
        new = re.sub(r"^module\.", "", name)  # a DataParallel around the whole model
        new = re.sub(rf"^(?:{_BACKBONE})", "lxmert.", new)
        new = re.sub(r"^logit_fc\.", "answer_head.logit_fc.", new)
        out[new] = t
    return out


def state_dict_to_original(state_dict: Mapping[str, torch.Tensor], head: str = "vqa") -> dict:
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
