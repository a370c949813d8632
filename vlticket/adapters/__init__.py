"""Adapters: canonical, task-independent names for the prunable weights of a model family.

Built in: ``"bert"`` (transformers BertModel, picked only when no V+L family fits),
``"lxmert"`` (transformers and original LXMERT, one set of names), ``"uniter"``
(original UNITER), ``"vilt"`` (transformers) and ``"vilt-original"`` (timm-style original ViLT;
convert masks and checkpoints with :func:`vilt.to_transformers` / :func:`vilt.to_original`),
``"visualbert"`` (transformers, single stream), ``"clip"`` and ``"siglip"`` (transformers dual
encoders: text and vision streams; ``-text`` / ``-vision`` forms for the bare towers),
``"blip"`` and ``"blip-vision"`` (transformers BLIP: image encoder, text layers with
cross-attention).
Any other ``nn.Module`` works through :class:`PatternAdapter`; a family of your own is a table
registered with :func:`register_adapter`. Importing this package registers the built-ins.
"""

from __future__ import annotations

from ..registry import AdapterLike, available, get, register_adapter
from . import bert, blip, clip, lxmert, uniter, vilt, visualbert
from .base import Adapter, Part, Structure, TextLayers, UnknownModelError
from .bert import bert_to_vl
from .detect import adapter_for
from .groups import groups_for
from .patterns import PatternAdapter
from .structure import Site, blocks_for
from .text_init import TextInit, init_language_stream

for _builtin in (
    bert.BERT,
    lxmert.LXMERT,
    uniter.UNITER,
    vilt.VILT,
    vilt.VILT_ORIGINAL,
    visualbert.VISUALBERT,
    *clip.ADAPTERS,
    *blip.ADAPTERS,
):
    register_adapter(_builtin, replace=True)

__all__ = [
    "Adapter",
    "AdapterLike",
    "Part",
    "PatternAdapter",
    "Site",
    "Structure",
    "TextInit",
    "TextLayers",
    "UnknownModelError",
    "adapter_for",
    "available",
    "bert",
    "bert_to_vl",
    "blip",
    "blocks_for",
    "clip",
    "get",
    "groups_for",
    "init_language_stream",
    "lxmert",
    "register_adapter",
    "uniter",
    "vilt",
    "visualbert",
]
