"""CLIP-style dual encoders (transformers ``CLIP*`` and ``Siglip*``): a text and a vision stream.

Canonical names are the whole model's, e.g.
``vision_model.encoder.layers.0.self_attn.q_proj.weight``. transformers names the towers' own
models (``CLIPVisionModel``, ``SiglipTextModel`` ...) without the ``vision_model.`` /
``text_model.`` prefix, so each family comes in three forms: ``"clip"`` (the whole model and the
``*WithProjection`` / ``*ForImageClassification`` variants), ``"clip-text"`` and
``"clip-vision"`` (the bare towers, renamed onto the canonical names); likewise ``"siglip"``.
A ticket of the vision stream therefore moves between ``CLIPVisionModel``,
``CLIPVisionModelWithProjection`` and ``CLIPForImageClassification``.

The prunable set is every attention and MLP matrix of both encoders; the embeddings, the patch
embedding (``visual_projection`` option) and the pooling heads and contrastive projections
(``pooler`` option) are added on request. CLIP and SigLIP share the layer layout; SigLIP's
pooling heads and CLIP's ``pre_layrnorm`` tell them apart.
"""

from __future__ import annotations

from .base import Adapter, Part, embeddings, layers, pooler, projection

_LAYER = (
    (r"self_attn\.(q|k|v)_proj", "attention"),
    (r"self_attn\.out_proj", "attention"),
    (r"mlp\.fc1", "ffn"),
    (r"mlp\.fc2", "ffn"),
)
_ENCODERS = (
    *layers("text_model.encoder.layers", "language", *_LAYER),
    *layers("vision_model.encoder.layers", "vision", *_LAYER),
    embeddings(r"text_model\.embeddings\.(token|position)_embedding\.weight", stream="language"),
    embeddings(
        r"vision_model\.embeddings\.(class_embedding|position_embedding\.weight)", stream="vision"
    ),
    projection(r"vision_model\.embeddings\.patch_embedding\.weight"),
)
_PREFIX = r"(?:module\.|_orig_mod\.)*"
_LAYERS = r"encoder\.layers\.\d+\.self_attn\.q_proj\.weight"


def _family(
    name: str,
    title: str,
    parts: tuple[Part, ...],
    *,
    text: tuple[str, tuple[str, ...]],
    vision: tuple[str, tuple[str, ...]],
    whole: tuple[tuple[str, ...], tuple[str, ...]],
) -> tuple[Adapter, Adapter, Adapter]:
    """The whole-model form and the two bare-tower forms of one dual-encoder family.

    ``text`` / ``vision`` / ``whole``: (signature, excludes) regexes telling that form of this
    family from the other family's.
    """
    signature, excludes = whole
    towers = []
    for stream, tower, (marker, others) in (
        ("text", "text_model", text),
        ("vision", "vision_model", vision),
    ):
        towers.append(
            Adapter(
                name=f"{name}-{stream}",
                prefix=_PREFIX,
                signature=(_LAYERS, marker),
                excludes=others,
                parts=parts,
                rename=((r"(?!text_model\.|vision_model\.)(.*)", tower + r".\1"),),
                description=f"{title}: transformers' bare {stream} tower, renamed to "
                f"{tower}.* (the {name!r} adapter's names)",
            )
        )
    whole_form = Adapter(
        name=name,
        prefix=_PREFIX,
        signature=(rf"(?:text|vision)_model\.{_LAYERS}", *signature),
        excludes=excludes,
        parts=parts,
        description=f"{title}: whole model, *WithProjection and *ForImageClassification "
        "(text and vision streams)",
    )
    return whole_form, towers[0], towers[1]


CLIP, CLIP_TEXT, CLIP_VISION = _family(
    "clip",
    "CLIP",
    (*_ENCODERS, pooler(r"(text|visual)_projection\.weight")),
    text=(r"final_layer_norm\.weight", (r"head\.weight",)),
    vision=(r"pre_layrnorm\.weight", ()),
    whole=((), (r"vision_model\.head\.probe", r"text_model\.head\.weight")),
)

SIGLIP, SIGLIP_TEXT, SIGLIP_VISION = _family(
    "siglip",
    "SigLIP",
    (
        *_ENCODERS,
        pooler(r"text_model\.head\.weight"),
        pooler(
            r"vision_model\.head\.(attention\.in_proj_weight|attention\.out_proj\.weight"
            r"|mlp\.fc1\.weight|mlp\.fc2\.weight)"
        ),
    ),
    text=(r"head\.weight", ()),
    vision=(r"head\.probe", ()),
    whole=((r"vision_model\.head\.probe|text_model\.head\.weight",), ()),
)

ADAPTERS = (CLIP, CLIP_TEXT, CLIP_VISION, SIGLIP, SIGLIP_TEXT, SIGLIP_VISION)
