"""VisualBERT (transformers ``VisualBert*``): single-stream, BERT layers over text and regions.

Canonical names are ``VisualBertModel``'s, e.g. ``encoder.layer.0.attention.self.query.weight``;
the ``visual_bert.`` prefix of the task models (``VisualBertForQuestionAnswering``,
``...ForVisualReasoning``, ``...ForPreTraining``, ``...ForMultipleChoice``,
``...ForRegionToPhraseAlignment``) and ``module.`` are stripped. Like UNITER, every layer sees
both modalities (stream ``cross``), and the language layers start from BERT's (θ0').
"""

from __future__ import annotations

from .base import (
    BERT_LAYER,
    BERT_TEXT_LAYERS,
    Adapter,
    bert_structure,
    embeddings,
    layers,
    pooler,
    projection,
)

PARTS = (
    *layers("encoder.layer", "cross", *BERT_LAYER),
    embeddings(r"embeddings\.(word|position|token_type)_embeddings\.weight", stream="language"),
    embeddings(r"embeddings\.visual_(token_type|position)_embeddings\.weight", stream="vision"),
    projection(r"embeddings\.visual_projection\.weight"),
    pooler(),
)

VISUALBERT = Adapter(
    name="visualbert",
    prefix=r"(?:module\.|_orig_mod\.)*(?:visual_bert\.)?",
    signature=(
        r"embeddings\.visual_projection\.weight",
        r"encoder\.layer\.\d+\.attention\.self\.query\.weight",
    ),
    parts=PARTS,
    description="VisualBERT: transformers VisualBertModel / VisualBertFor* (single stream)",
    text_layers=BERT_TEXT_LAYERS,
    structure=bert_structure("encoder.layer"),
)
