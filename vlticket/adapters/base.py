"""The Adapter: a declared table that names a model family's prunable weights canonically.

A model name is turned into a canonical name in three steps: the wrapper/head prefix is
stripped (``lxmert.``, ``vilt.``, ``uniter.``, ``lxrt_encoder.model.bert.``, ``module.`` ...),
an optional rename maps another code base's names onto the family's canonical ones, and the
result is kept if a :class:`Part` of the table selects it. Canonical names therefore do not depend
on the task head, so a mask found on one head applies unchanged to every other head.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .._naming import preview, unwrap
from ..errors import ArgumentError, NameMismatchError
from ..registry import AdapterLike

OPTIONS = ("embeddings", "pooler", "visual_projection")
PARTITIONS = ("stream", "layer", "component")


class UnknownModelError(NameMismatchError):
    """No adapter recognises a model (or the chosen adapter does not fit it)."""


@dataclass(frozen=True, kw_only=True)
class Part:
    """One row of an adapter's table: canonical names that form one kind of weight.

    Args:
        pattern: regex, matched with ``re.fullmatch`` against canonical names; the named group
            ``n`` (if any) is the layer index used in ``layer``.
        stream: ``"language"``, ``"vision"``, ``"cross"`` (single-stream layers see both
            modalities, so they are ``cross``) or ``"pooler"``.
        layer: group name per layer, a template such as ``"language.layer.{n}"``.
        component: ``"attention"``, ``"cross_attention"``, ``"ffn"``, ``"embeddings"``,
            ``"projection"`` or ``"pooler"``.
        option: ``"layers"`` (always pruned) or the option that adds it: ``"embeddings"``,
            ``"pooler"``, ``"visual_projection"``.
    """

    pattern: str
    stream: str
    layer: str
    component: str
    option: str = "layers"

    def group(self, by: str, match: re.Match) -> str:
        if by == "layer":
            return self.layer.format(**match.groupdict())
        return getattr(self, by)


def layers(where: str, stream: str, *blocks: tuple[str, str]) -> tuple[Part, ...]:
    """Parts for the weight matrices of layers ``{where}.{n}.``; blocks: (suffix, component)."""
    head = re.escape(where) + r"\.(?P<n>\d+)\."
    return tuple(
        Part(
            pattern=head + suffix + r"\.weight",
            stream=stream,
            layer=f"{stream}.layer.{{n}}",
            component=component,
        )
        for suffix, component in blocks
    )


def embeddings(pattern: str, *, stream: str) -> Part:
    """A part of embedding tables (pruned only with the ``embeddings`` option)."""
    return Part(
        pattern=pattern,
        stream=stream,
        layer="embeddings",
        component="embeddings",
        option="embeddings",
    )


def projection(pattern: str) -> Part:
    """A visual feature projection (pruned only with the ``visual_projection`` option)."""
    return Part(
        pattern=pattern,
        stream="vision",
        layer="projection",
        component="projection",
        option="visual_projection",
    )


def pooler(pattern: str = r"pooler\.dense\.weight") -> Part:
    """The pooler's dense weight (pruned only with the ``pooler`` option)."""
    return Part(
        pattern=pattern, stream="pooler", layer="pooler", component="pooler", option="pooler"
    )


# BERT's six weight matrices inside one layer.
BERT_MATRICES = (
    "attention.self.query.weight",
    "attention.self.key.weight",
    "attention.self.value.weight",
    "attention.output.dense.weight",
    "intermediate.dense.weight",
    "output.dense.weight",
)

# The six weight matrices of a BERT layer, as (suffix regex, component).
BERT_LAYER = (
    (r"attention\.self\.(query|key|value)", "attention"),
    (r"attention\.output\.dense", "attention"),
    (r"intermediate\.dense", "ffn"),
    (r"output\.dense", "ffn"),
)


@dataclass(frozen=True, kw_only=True)
class Structure:
    """Where one kind of block keeps its heads or neurons: a row of an adapter's structure table.

    A head is its rows of the ``rows`` weights (query, key, value) and biases plus its columns of
    the ``columns`` weights (the attention output); a neuron is its row of the FFN input and its
    column of the FFN output. Head counts come from the model (see
    :func:`vlticket.adapters.blocks_for`), head sizes from the tensor shapes.

    Args:
        kind: ``"head"`` or ``"neuron"``.
        where: regex of a block's prefix in canonical names, e.g.
            ``r"encoder\\.layer\\.\\d+\\.attention\\."``.
        rows: module names after the prefix whose weight rows (and bias entries) are the units.
        columns: module names after the prefix whose weight columns are the units.
        fused: stacked chunks in each ``rows`` weight (3 for one fused q/k/v weight).
        resizable: whether :func:`vlticket.shrink` may change the block's head count (False
            where the code derives the head size from the hidden size, as timm's Attention).
    """

    kind: str
    where: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    fused: int = 1
    resizable: bool = True


def attention_heads(where: str, q: str, k: str, v: str, out: str, **kw: Any) -> Structure:
    """A :class:`Structure` row for attention heads under ``where`` (module names after it)."""
    return Structure(kind="head", where=where, rows=(q, k, v), columns=(out,), **kw)


def ffn_neurons(where: str, inner: str, out: str) -> Structure:
    """A :class:`Structure` row for FFN neurons under ``where`` (module names after it)."""
    return Structure(kind="neuron", where=where, rows=(inner,), columns=(out,))


def bert_structure(where: str) -> tuple[Structure, ...]:
    """BERT-layout heads and neurons in layers ``{where}.{n}.``."""
    head = re.escape(where) + r"\.\d+\."
    return (
        attention_heads(
            head + r"attention\.", "self.query", "self.key", "self.value", "output.dense"
        ),
        ffn_neurons(head, "intermediate.dense", "output.dense"),
    )


# BERT's two layer norms inside one layer (after attention, after the FFN: post-LN).
BERT_NORMS = {
    "attention.output.LayerNorm": "attention.output.LayerNorm",
    "output.LayerNorm": "output.LayerNorm",
}

Embed = Callable[[Any], Mapping[str, torch.Tensor]]
Forward = Callable[[Any, Mapping[str, torch.Tensor]], torch.Tensor]
EmbeddingHooks = Callable[[nn.Module], tuple[Embed, Forward]]


@dataclass(frozen=True, kw_only=True)
class TextLayers:
    """Where a BERT checkpoint's weights go in a family: the θ0' baseline's map.

    Args:
        layer: template of the family's language layer ``n``, e.g. ``"encoder.layer.{n}."``.
        rename: BERT's name inside a layer -> the family's name inside its language layer,
            for the six weight matrices. BERT names mapped to one family name are stacked
            along rows in ``rename``'s order (the original ViLT's fused ``qkv`` is query, key
            and value).
        embeddings: prefix of the family's text embeddings, e.g. ``"embeddings."``.
        norms: BERT's layer-norm module inside a layer -> the family's, for
            :func:`~vlticket.adapters.init_language_stream` (biases follow ``rename``); empty
            where the family normalises elsewhere (pre-LN ViLT).
        pooler: prefix of the family's BERT-style pooler (``dense``), ``None`` if it has none.
        notes: ``(regex on canonical names, reason)``: why a language-stream tensor has no
            counterpart in a BERT layer, shown in the initialisation report.
    """

    layer: str
    rename: Mapping[str, str]
    embeddings: str
    norms: Mapping[str, str] = field(default_factory=lambda: dict(BERT_NORMS))
    pooler: str | None = "pooler."
    notes: tuple[tuple[str, str], ...] = ()


BERT_TEXT_LAYERS = TextLayers(
    layer="encoder.layer.{n}.", rename={m: m for m in BERT_MATRICES}, embeddings="embeddings."
)
"""BERT's layers onto ``encoder.layer.N`` under BERT's own names (UNITER, LXMERT, VisualBERT)."""


@dataclass(frozen=True, kw_only=True)
class Adapter:
    """Canonical names, the default prunable set and groups of one model family in one form.

    Built from a table, not code: see :class:`Part`. Options add embeddings, the pooler or the
    visual feature projection to the prunable set; they never change canonical names.

    Args:
        name: registry name, e.g. ``"lxmert"``.
        prefix: regex of the wrapper/head prefixes stripped from model names.
        signature: regexes (on stripped names) that every model of this family and form has.
        excludes: regexes (on stripped names) that no model of this family has: they tell apart
            families whose layers share names (CLIP and SigLIP).
        parts: the table of canonical names, groups and options.
        rename: ``(regex, template)`` pairs mapping stripped names of this form to canonical
            names (``re.Match.expand`` templates); names matching none are kept as they are.
        options: options switched on, a subset of ``("embeddings", "pooler",
            "visual_projection")``.
        description: one line shown in listings and errors.
        text_layers: where BERT's weights go (see :class:`TextLayers`), for ``bert_to_vl``.
        embedding_hooks: a function ``model -> (embed, forward)`` giving the embedding inputs
            that :mod:`vlticket.adversarial` perturbs, for this family's models.
        structure: where the attention heads and FFN neurons are (see :class:`Structure`), for
            structured pruning and :func:`vlticket.shrink`.
        fallback: a generic family (BERT) that :func:`adapter_for` picks only when no other
            family fits (LXMERT and UNITER models have BERT's names too).

    Example:
        >>> import vlticket.adapters as adapters
        >>> a = adapters.get("uniter")
        >>> a.canonical("uniter.encoder.layer.3.attention.self.query.weight")
        'encoder.layer.3.attention.self.query.weight'
        >>> a.canonical("vqa_output.0.weight") is None
        True
    """

    name: str
    prefix: str
    signature: tuple[str, ...]
    parts: tuple[Part, ...]
    excludes: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    options: frozenset[str] = frozenset()
    description: str = ""
    text_layers: TextLayers | None = None
    embedding_hooks: EmbeddingHooks | None = None
    structure: tuple[Structure, ...] = ()
    fallback: bool = False
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bad = set(self.options) - set(OPTIONS)
        if bad:
            raise ArgumentError(f"`options`: unknown {sorted(bad)}, expected some of {OPTIONS}")
        compiled = (
            re.compile(f"(?P<_prefix>{self.prefix})(?P<_rest>.*)"),
            tuple(re.compile(s) for s in self.signature),
            tuple((re.compile(p), t) for p, t in self.rename),
            tuple((re.compile(p.pattern), p) for p in self.parts),
            tuple(re.compile(e) for e in self.excludes),
        )
        object.__setattr__(self, "_compiled", compiled)

    def with_options(
        self, *, embeddings: bool = False, pooler: bool = False, visual_projection: bool = False
    ) -> Adapter:
        """The same adapter with exactly these optional weights added to the default set.

        Args:
            embeddings: word, position, token-type (and image position / type) embeddings.
            pooler: the pooler's dense weight.
            visual_projection: LXMERT's ``visn_fc``/``box_fc``, ViLT's patch projection,
                UNITER's ``img_linear``/``pos_linear``.
        """
        flags = {"embeddings": embeddings, "pooler": pooler, "visual_projection": visual_projection}
        return replace(self, options=frozenset(k for k, v in flags.items() if v))

    # -- names ------------------------------------------------------------------------------
    def _split(self, name: str) -> tuple[str, str]:
        m = self._compiled[0].fullmatch(name)
        return m["_prefix"], m["_rest"]

    def _part(self, canonical: str) -> tuple[Part, re.Match] | None:
        for regex, part in self._compiled[3]:
            m = regex.fullmatch(canonical)
            if m:
                return part, m
        return None

    def _to_canonical(self, rest: str) -> str:
        for regex, template in self._compiled[2]:
            m = regex.fullmatch(rest)
            if m:
                return m.expand(template)
        return rest

    def stripped(self, name: str) -> str:
        """Any model name (biases, norms and heads too) with the prefix stripped and renamed as
        canonical names are; unlike :meth:`canonical` it does not ask whether it is prunable."""
        return self._to_canonical(self._split(name)[1])

    def canonical(self, name: str) -> str | None:
        """The canonical name of one model name, or ``None`` if it is not prunable here."""
        canon = self.stripped(name)
        found = self._part(canon)
        if found is None or found[0].option not in {"layers", *self.options}:
            return None
        return canon

    def matches(self, names: Iterable[str]) -> bool:
        """Whether these model names look like this family and form: every signature found,
        no exclude."""
        rests = {self._split(n)[1] for n in names}
        if any(e.fullmatch(r) for e in self._compiled[4] for r in rests):
            return False
        return all(any(s.fullmatch(r) for r in rests) for s in self._compiled[1])

    def names(self, model_or_names: nn.Module | Mapping[str, Any] | Iterable[str]) -> dict:
        """``{canonical name: model name}`` of the prunable weights, in the model's order.

        Raises :class:`UnknownModelError` if the names do not look like this family, and
        :class:`~vlticket.errors.NameMismatchError` if they hold two backbones.
        """
        names = list(model_names(model_or_names))
        if not self.matches(names):
            raise UnknownModelError(
                f"the model does not look like {self.name!r}: expected names matching "
                f"{list(self.signature)} after the prefix /{self.prefix}/, found "
                f"{preview(names)}; try vlticket.adapters.adapter_for(model)"
            )
        out: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        for name in names:
            canon = self.canonical(name)
            if canon is None:
                continue
            if canon in out:
                raise NameMismatchError(
                    f"{self.name!r}: {out[canon]!r} and {name!r} both map to canonical name "
                    f"{canon!r}; does the model hold two backbones? Give the adapter one of them"
                )
            out[canon] = name
            prefixes.setdefault(self._split(name)[0], name)
        if len(prefixes) > 1:
            raise NameMismatchError(
                f"{self.name!r}: prunable weights under several prefixes "
                f"{sorted(prefixes)} (e.g. {sorted(prefixes.values())}); give the adapter "
                "one backbone"
            )
        return out

    def prunable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """``{canonical name: the model's own Parameter}``: what the core masks and rewinds.

        Example:
            >>> params = adapter.prunable(model)                       # doctest: +SKIP
            >>> mask = vlticket.prune_magnitude(params, sparsity=0.5)  # doctest: +SKIP
        """
        return prunable_by_names(self, model)

    # -- groups -----------------------------------------------------------------------------
    def groups(
        self, names: nn.Module | Mapping[str, Any] | Iterable[str], by: str | None = None
    ) -> dict[str, list[str]]:
        """Canonical names grouped for per-component sparsity and IoU.

        Args:
            names: a model (its canonical prunable names), a mask or other mapping (its keys),
                or canonical names, e.g. ``list(mask)``.
            by: ``"stream"`` (language / vision / cross / pooler), ``"layer"`` (e.g.
                ``language.layer.0`` or ``cross.layer.3``) or ``"component"`` (attention /
                cross_attention / ffn / embeddings / projection / pooler). Each is a partition:
                every name is in exactly one group (``"other"`` for names outside the table).
                ``None`` gives all three partitions in one dict.

        Example:
            >>> g = vlticket.adapters.get("lxmert").groups(list(mask))     # doctest: +SKIP
            >>> vlticket.adapters.group_sparsity(mask, g)["vision"]         # doctest: +SKIP
        """
        return grouped(group_names(self, names), by, self._group_of)

    def _group_of(self, name: str, by: str) -> str:
        found = self._part(name)
        return "other" if found is None else found[0].group(by, found[1])

    def __repr__(self) -> str:
        opts = f", options={sorted(self.options)}" if self.options else ""
        return f"Adapter({self.name!r}{opts})"


def grouped(names: Iterable[str], by: str | None, group_of) -> dict[str, list[str]]:
    if by is not None and by not in PARTITIONS:
        raise ArgumentError(f"`by`: expected one of {PARTITIONS} or None, found {by!r}")
    names = list(names)
    out: dict[str, dict[str, None]] = {}  # dicts as ordered sets: by=None merges partitions
    for partition in PARTITIONS if by is None else (by,):
        for name in names:
            out.setdefault(group_of(name, partition), {})[name] = None
    return {g: list(members) for g, members in out.items()}


def group_names(adapter: AdapterLike, source: Any) -> list[str]:
    """The names ``groups`` groups: a model's canonical prunable names, a mapping's keys, or
    the names themselves."""
    if isinstance(source, nn.Module):
        return list(adapter.names(source))
    if isinstance(source, Mapping):
        return list(source.keys())
    if isinstance(source, (str, bytes, torch.Tensor)) or not isinstance(source, Iterable):
        raise ArgumentError(
            "`names`: expected a model, a mask (or other mapping) or a list of names, "
            f"found {type(source).__name__}"
        )
    return list(source)


def prunable_by_names(adapter: AdapterLike, model: nn.Module) -> dict[str, nn.Parameter]:
    """``{canonical name: Parameter}`` through ``adapter.names``, shared by every adapter kind."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"`model`: expected an nn.Module, found {type(model).__name__}")
    params = dict(unwrap(model).named_parameters())
    return {canon: params[name] for canon, name in adapter.names(params).items()}


def model_names(source: Any) -> Iterable[str]:
    if isinstance(source, nn.Module):
        return (n for n, _ in unwrap(source).named_parameters())
    if isinstance(source, Mapping):
        return iter(source.keys())
    if isinstance(source, (str, bytes, torch.Tensor)) or not isinstance(source, Iterable):
        raise ArgumentError(
            "`model_or_names`: expected an nn.Module, a state dict or a list of names, "
            f"found {type(source).__name__}"
        )
    return iter(source)
