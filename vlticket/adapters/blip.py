"""BLIP (transformers ``Blip*``): a ViT image encoder and BERT text layers with cross-attention.

Canonical names are the task models', e.g. ``text_encoder.encoder.layer.0.crossattention.self.
query.weight`` and ``vision_model.encoder.layers.0.self_attn.qkv.weight``. ``BlipModel`` names
its text encoder ``text_model.`` and the decoders hold theirs under ``text_decoder.bert.``: both
are renamed (``text_encoder.``, ``text_decoder.``), so a ticket of the image encoder and text
encoder moves between ``BlipModel``, ``BlipForImageTextRetrieval`` and
``BlipForQuestionAnswering``, and the decoder's between ``BlipForQuestionAnswering`` and
``BlipForConditionalGeneration``. ``"blip-vision"`` is the bare ``BlipVisionModel``.

Streams: the image encoder is ``vision``; the text layers' self-attention and FFN are
``language`` (``BlipModel`` runs them without the image for its contrastive text features) and
their cross-attention to the image is ``cross``. The image encoder fuses q/k/v into one ``qkv``
tensor whose rows are query, key and value, as the original ViLT does. Embeddings, the patch
embedding (``visual_projection``), the pooler and contrastive projections (``pooler``) are added
on request; the ITM and LM heads are never pruned. BLIP-2's Q-Former is another layout.
"""

from __future__ import annotations

from .base import (
    BERT_MATRICES,
    Adapter,
    Part,
    Structure,
    TextLayers,
    attention_heads,
    embeddings,
    ffn_neurons,
    pooler,
    projection,
)

_TEXT = r"text_(?P<tower>encoder|decoder)\.encoder\.layer\.(?P<n>\d+)\."
_VISION = r"vision_model\.encoder\.layers\.(?P<n>\d+)\."


def _text(suffix: str, stream: str, component: str) -> tuple[Part, Part]:
    """One kind of text-layer weight, in the encoder and in the decoder."""
    return tuple(
        Part(
            pattern=_TEXT.replace("(?P<tower>encoder|decoder)", tower) + suffix + r"\.weight",
            stream=stream,
            layer=f"{stream}{'.decoder' if tower == 'decoder' else ''}.layer.{{n}}",
            component=component,
        )
        for tower in ("encoder", "decoder")
    )


PARTS = (
    *(
        Part(
            pattern=_VISION + s + r"\.weight",
            stream="vision",
            layer="vision.layer.{n}",
            component=c,
        )
        for s, c in ((r"self_attn\.(qkv|projection)", "attention"), (r"mlp\.fc[12]", "ffn"))
    ),
    *_text(r"attention\.self\.(query|key|value)", "language", "attention"),
    *_text(r"attention\.output\.dense", "language", "attention"),
    *_text(r"crossattention\.self\.(query|key|value)", "cross", "cross_attention"),
    *_text(r"crossattention\.output\.dense", "cross", "cross_attention"),
    *_text(r"(intermediate|output)\.dense", "language", "ffn"),
    embeddings(
        r"text_(encoder|decoder)\.embeddings\.(word|position)_embeddings\.weight", stream="language"
    ),
    embeddings(r"vision_model\.embeddings\.(class_embedding|position_embedding)", stream="vision"),
    projection(r"vision_model\.embeddings\.patch_embedding\.weight"),
    pooler(
        r"text_encoder\.pooler\.dense\.weight|(visual|text)_projection\.weight"
        r"|(vision|text)_proj\.weight"
    ),
)

_T = r"text_(?:encoder|decoder)\.encoder\.layer\.\d+\."
STRUCTURE: tuple[Structure, ...] = (
    # transformers' BlipAttention reshapes by the hidden size: heads are masked, not removed
    Structure(
        kind="head",
        where=r"vision_model\.encoder\.layers\.\d+\.self_attn\.",
        rows=("qkv",),
        columns=("projection",),
        fused=3,
        resizable=False,
    ),
    ffn_neurons(r"vision_model\.encoder\.layers\.\d+\.", "mlp.fc1", "mlp.fc2"),
    *(
        attention_heads(_T + rf"{a}\.", "self.query", "self.key", "self.value", "output.dense")
        for a in ("attention", "crossattention")
    ),
    ffn_neurons(_T, "intermediate.dense", "output.dense"),
)

_PREFIX = r"(?:module\.|_orig_mod\.)*"
_QKV = r"encoder\.layers\.\d+\.self_attn\.qkv\.weight"

BLIP = Adapter(
    name="blip",
    prefix=_PREFIX,
    signature=(r"vision_model\." + _QKV,),
    excludes=(r"qformer\..*",),  # BLIP-2 / InstructBLIP share the image encoder only
    parts=PARTS,
    rename=(
        (r"text_model\.(.*)", r"text_encoder.\1"),
        (r"text_decoder\.bert\.(.*)", r"text_decoder.\1"),
    ),
    description="BLIP: transformers BlipModel, BlipForImageTextRetrieval, "
    "BlipForQuestionAnswering, BlipForConditionalGeneration (vision, language, cross)",
    text_layers=TextLayers(
        layer="text_encoder.encoder.layer.{n}.",
        rename={m: m for m in BERT_MATRICES},
        embeddings="text_encoder.embeddings.",
        pooler="text_encoder.pooler.",
        notes=(
            (
                r"text_encoder\.encoder\.layer\.\d+\.crossattention\..*",
                "cross-attention to the image: BERT has none",
            ),
        ),
    ),
    structure=STRUCTURE,
)

BLIP_VISION = Adapter(
    name="blip-vision",
    prefix=_PREFIX,
    signature=(_QKV, r"post_layernorm\.weight"),
    excludes=(r"qformer\..*",),
    parts=PARTS,
    rename=((r"(?!vision_model\.)(.*)", r"vision_model.\1"),),
    description="BLIP: transformers' bare BlipVisionModel, renamed to vision_model.* (the "
    "'blip' adapter's names)",
    structure=STRUCTURE,
)

ADAPTERS = (BLIP, BLIP_VISION)
