"""BERT: the ``bert`` family adapter, and the θ0' baseline (BERT's weights on a V+L model).

The adapter names transformers' ``BertModel`` weights (``bert.`` stripped from ``BertFor*``
heads), e.g. ``encoder.layer.0.attention.self.query.weight``; it is a fallback, since LXMERT and
UNITER models hold BERT's names too.

BERT layer ``N`` goes to the V+L model's language layer ``N`` (UNITER and ViLT: its ``N``-th
single-stream layer; LXMERT: ``encoder.layer.N``, its language encoder) with the same shapes.
Only weight matrices are mapped (plus the text embeddings on request): biases and layer norms
stay the model's own, like every other weight outside the prunable set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from .._naming import check_shapes
from ..errors import ArgumentError, NameMismatchError
from ..registry import registered
from .base import BERT_LAYER, Adapter, bert_structure, embeddings, layers, pooler
from .detect import adapter_for

BERT = Adapter(
    name="bert",
    prefix=r"(?:module\.|_orig_mod\.)*(?:bert\.)?",
    signature=(
        r"encoder\.layer\.\d+\.attention\.self\.query\.weight",
        r"embeddings\.word_embeddings\.weight",
    ),
    parts=(
        *layers("encoder.layer", "language", *BERT_LAYER),
        embeddings(r"embeddings\.(word|position|token_type)_embeddings\.weight", stream="language"),
        pooler(),
    ),
    description="BERT: transformers BertModel / BertFor* (a fallback when no V+L family fits)",
    structure=bert_structure("encoder.layer"),
    fallback=True,
)

_BERT_NAME = re.compile(
    r"(?:module\.)?(?:bert\.)?(?:encoder\.layer\.(?P<n>\d+)\.(?P<layer>.+)|embeddings\.(?P<emb>"
    r"(?:word|position|token_type)_embeddings\.weight))"
)


def bert_to_vl(
    bert_state_dict: Mapping[str, torch.Tensor],
    target: str | nn.Module,
    *,
    embeddings: bool = False,
) -> dict[str, torch.Tensor]:
    """BERT's weight matrices under a V+L family's canonical names, for the θ0' baseline.

    Args:
        bert_state_dict: a ``BertModel`` (or ``Bert*`` head, ``bert.`` prefix) state dict.
        target: a family whose adapter says where BERT's weights go (``"uniter"``,
            ``"lxmert"``, ``"vilt"``); or the V+L model itself, which
            also keeps only the layers the model has (LXMERT has fewer language layers than
            BERT has layers) and checks every shape.
        embeddings: also map the word, position and token-type embeddings.

    Example:
        >>> theta0p = vlticket.Checkpoint(bert_to_vl(bert.state_dict(), model))  # doctest: +SKIP
        >>> adapter = vlticket.adapters.adapter_for(model)         # doctest: +SKIP
        >>> theta0p.restore(model, mask, adapter=adapter)           # doctest: +SKIP
    """
    model = None
    if isinstance(target, nn.Module):
        model, adapter = target, adapter_for(target, embeddings=embeddings)
    else:
        adapter = next((a for a in _with_text_layers() if a.name == target), None)
    if adapter is None or getattr(adapter, "text_layers", None) is None:
        family = adapter.name if adapter is not None else target
        known = sorted(a.name for a in _with_text_layers())
        raise ArgumentError(f"`target`: BERT weights map onto {known}, found {family!r}")
    layer, suffixes, emb_prefix = (
        adapter.text_layers.layer,
        adapter.text_layers.rename,
        adapter.text_layers.embeddings,
    )
    out = {}
    for name, t in bert_state_dict.items():
        m = _BERT_NAME.fullmatch(name)
        if m is None:
            continue
        if m["layer"] in suffixes:
            out[layer.format(n=m["n"]) + suffixes[m["layer"]]] = t
        elif m["emb"] and embeddings:
            out[emb_prefix + m["emb"]] = t
    if not out:
        raise NameMismatchError(
            "`bert_state_dict` has no BERT layer weights such as "
            "'encoder.layer.0.attention.self.query.weight' (with or without a 'bert.' prefix)"
        )
    if model is not None:
        own = adapter.prunable(model)
        out = {n: t for n, t in out.items() if n in own}
        check_shapes({n: t.shape for n, t in out.items()}, own, what="BERT", where="the model")
    return out


def _with_text_layers() -> list[Adapter]:
    """The registered family adapters that say where BERT's weights go."""
    return [a for a in registered() if isinstance(a, Adapter) and a.text_layers is not None]
