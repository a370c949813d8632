"""UNITER (original code base): single-stream, BERT layers under ``uniter.encoder.layer.N``.

Canonical names are the names inside ``UniterModel``, e.g.
``encoder.layer.0.attention.self.query.weight``; the ``uniter.`` (task heads such as
``vqa_output``, ``itm_output``, ``rank_output``, ``nlvr2_output``) and ``module.`` prefixes are
stripped. Every layer sees both modalities, so all layers are in the ``cross`` stream.
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
    embeddings(r"img_embeddings\.mask_embedding\.weight", stream="vision"),
    projection(r"img_embeddings\.(img_linear|pos_linear)\.weight"),
    pooler(),
)

UNITER = Adapter(
    name="uniter",
    prefix=r"(?:module\.|_orig_mod\.)*(?:uniter\.)?",
    signature=(
        r"img_embeddings\.img_linear\.weight",
        r"encoder\.layer\.\d+\.attention\.self\.query\.weight",
    ),
    parts=PARTS,
    description="UNITER original code base (UniterModel under `uniter.`)",
    text_layers=BERT_TEXT_LAYERS,
    structure=bert_structure("encoder.layer"),
)
