"""BERT: the ``bert`` family adapter, and the θ0' baseline (BERT's weights on a V+L model).

The adapter names transformers' ``BertModel`` weights (``bert.`` stripped from ``BertFor*``
heads), e.g. ``encoder.layer.0.attention.self.query.weight``; it is a fallback, since LXMERT and
UNITER models hold BERT's names too.

BERT layer ``N`` goes to the V+L model's language layer ``N`` (UNITER and ViLT: its ``N``-th
single-stream layer; LXMERT: ``encoder.layer.N``, its language encoder) with the same shapes.
Only weight matrices are mapped (plus the text embeddings on request): biases and layer norms
stay the model's own, like every other weight outside the prunable set. The original ViLT
fuses q/k/v into one tensor: BERT's query, key and value are stacked into it. To initialise a
language stream from BERT with every tensor (biases, layer norms, pooler), as LXMERT and UNITER
were built, see :func:`vlticket.adapters.init_language_stream`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import torch
from torch import nn

from .._naming import check_shapes
from ..errors import ArgumentError, NameMismatchError
from ..registry import registered
from .base import BERT_LAYER, Adapter, bert_structure, embeddings, layers, pooler
from .detect import adapter_for

logger = logging.getLogger(__name__)

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
    r"(?:module\.)?(?:bert\.|distilbert\.)?(?:(?:encoder|transformer)\.layer\.(?P<n>\d+)\."
    r"(?P<layer>.+)|embeddings\.(?P<emb>(?:word|position|token_type)_embeddings\.weight))"
)
# DistilBERT's modules inside a layer, under BERT's names (its layers are BERT layers under
# other names); used for weights here and for weights and biases by `init_language_stream`.
DISTILBERT_MODULES = {
    "attention.q_lin": "attention.self.query",
    "attention.k_lin": "attention.self.key",
    "attention.v_lin": "attention.self.value",
    "attention.out_lin": "attention.output.dense",
    "sa_layer_norm": "attention.output.LayerNorm",
    "ffn.lin1": "intermediate.dense",
    "ffn.lin2": "output.dense",
    "output_layer_norm": "output.LayerNorm",
}
_DISTILBERT = {f"{k}.weight": f"{v}.weight" for k, v in DISTILBERT_MODULES.items()}


class BertWeights(dict):
    """What :func:`bert_to_vl` returns: ``{canonical name: BERT tensor}``, and what it mapped.

    Attributes:
        layers: the BERT layers mapped (each onto the model's layer of the same index).
        unused: BERT layers left out because the model has no such language layer.
        left_out: the model's language layers that got no BERT layer (only with a model as
            ``target``): they keep their own weights, e.g. from a smaller or distilled BERT.
        adapter: the family adapter whose prunable set names every tensor here (with
            ``embeddings=True`` when the embeddings were mapped): restore with it, e.g.
            ``Checkpoint(w).restore(model, mask, adapter=w.adapter)``.
    """

    layers: list[int]
    unused: list[int]
    left_out: list[int]
    adapter: Adapter

    def summary(self) -> str:
        """One line, e.g. ``mapped 2 BERT layers (0-1); left out layers 2-3 of the model``."""
        text = f"mapped {len(self.layers)} BERT layers ({spans(self.layers)})"
        if self.unused:
            text += f"; BERT layers {spans(self.unused)} have no place in the model"
        if self.left_out:
            text += f"; left out layers {spans(self.left_out)} of the model (own weights kept)"
        return text


def bert_to_vl(
    bert_state_dict: Mapping[str, torch.Tensor],
    target: str | nn.Module,
    *,
    embeddings: bool = False,
) -> BertWeights:
    """BERT's weight matrices under a V+L family's canonical names, for the θ0' baseline.

    BERT (``bert.`` prefix or none) and DistilBERT (``distilbert.``) checkpoints are read; a
    checkpoint with fewer layers than the model maps what exists. With the model as ``target``
    the result says which of the model's layers were left out (:attr:`BertWeights.left_out`,
    also logged as a warning): restore it with ``Checkpoint.restore(..., partial=True)``.

    Args:
        bert_state_dict: a ``BertModel`` (or ``Bert*`` head, ``bert.`` prefix) or
            ``DistilBertModel`` state dict.
        target: a family whose adapter says where BERT's weights go (``"uniter"``,
            ``"lxmert"``, ``"vilt"``, ``"vilt-original"``); or the V+L model itself, which
            also keeps only the layers the model has (LXMERT has fewer language layers than
            BERT has layers) and checks every shape.
        embeddings: also map the word, position and token-type embeddings. The family's default
            adapter prunes no embeddings, so restore with the result's ``.adapter`` (the
            family's adapter with ``embeddings=True``).

    Example:
        >>> theta0p = bert_to_vl(bert.state_dict(), model)               # doctest: +SKIP
        >>> theta0p.summary()                                            # doctest: +SKIP
        'mapped 2 BERT layers (0-1); left out layers 2-3 of the model (own weights kept)'
        >>> ckpt = vlticket.Checkpoint(theta0p)                          # doctest: +SKIP
        >>> ckpt.restore(model, mask, adapter=theta0p.adapter)           # doctest: +SKIP
    """
    model = None
    if isinstance(target, nn.Module):
        model, adapter = target, adapter_for(target)
    else:
        adapter = next((a for a in _with_text_layers() if a.name == target), None)
    if adapter is None or getattr(adapter, "text_layers", None) is None:
        family = adapter.name if adapter is not None else target
        known = sorted(a.name for a in _with_text_layers())
        raise ArgumentError(f"`target`: BERT weights map onto {known}, found {family!r}")
    if embeddings:  # the family's default prunable set has none: use the form that has them
        adapter = adapter.with_options(embeddings=True)
    text = adapter.text_layers
    pieces: dict[str, dict[str, torch.Tensor]] = {}  # target name -> {BERT name: tensor}
    layer_of: dict[str, int] = {}
    for name, t in bert_state_dict.items():
        m = _BERT_NAME.fullmatch(name)
        if m is None:
            continue
        inner = _DISTILBERT.get(m["layer"], m["layer"])
        if inner in text.rename:
            n = int(m["n"])
            new = text.layer.format(n=n) + text.rename[inner]
            pieces.setdefault(new, {})[inner] = t
            layer_of[new] = n
        elif m["emb"] and embeddings:
            pieces[text.embeddings + m["emb"]] = {m["emb"]: t}
    if not pieces:
        raise NameMismatchError(
            "`bert_state_dict` has no BERT layer weights such as "
            "'encoder.layer.0.attention.self.query.weight' (with or without a 'bert.' prefix)"
        )
    out = BertWeights(_stacked(pieces, text.rename))
    out.layers, out.unused, out.left_out = sorted(set(layer_of.values())), [], []
    out.adapter = adapter
    if model is not None:
        own = adapter.prunable(model)
        kept = {n: t for n, t in out.items() if n in own}
        check_shapes({n: t.shape for n, t in kept.items()}, own, what="BERT", where="the model")
        mapped = {layer_of[n] for n in kept if n in layer_of}
        out.unused = sorted(set(out.layers) - mapped)
        out.layers = sorted(mapped)
        out.left_out = sorted(_model_layers(own, text.layer) - mapped)
        for name in set(out) - set(kept):
            del out[name]
        if out.left_out:
            logger.warning("bert_to_vl: %s", out.summary())
        else:
            logger.info("bert_to_vl: %s", out.summary())
    return out


def _stacked(pieces: dict[str, dict[str, torch.Tensor]], rename: Mapping[str, str]) -> dict:
    """One tensor per target: BERT tensors sharing a target are stacked in ``rename`` order."""
    out = {}
    for target, found in pieces.items():
        suffix = rename.get(next(iter(found)))  # None for embeddings
        order = [b for b, t in rename.items() if t == suffix] if suffix else list(found)
        if len(order) == 1:
            out[target] = found[order[0]]
            continue
        missing = [b for b in order if b not in found]
        if missing:
            raise NameMismatchError(
                f"{target!r} stacks BERT's {order}; `bert_state_dict` lacks {missing} there"
            )
        out[target] = torch.cat([found[b] for b in order])
    return out


def _model_layers(own: Mapping[str, torch.Tensor], template: str) -> set[int]:
    """Indices of the model's layers that BERT layers map onto (its language layers)."""
    head = re.escape(template).replace(r"\{n\}", r"(\d+)")
    return {int(m[1]) for n in own if (m := re.match(head, n))}


def spans(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``'0-2, 5'``."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "none"


def _with_text_layers() -> list[Adapter]:
    """The registered family adapters that say where BERT's weights go."""
    return [a for a in registered() if isinstance(a, Adapter) and a.text_layers is not None]
