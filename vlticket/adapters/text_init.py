"""A V+L model's language stream initialised from a BERT-family text model.

LXMERT, UNITER and VisualBERT began as BERT: before V+L pre-training, their language layers,
text embeddings and pooler were loaded from a pre-trained BERT. :func:`init_language_stream`
does the same for every family whose adapter says where BERT's layers go
(:class:`~vlticket.adapters.TextLayers`), reading BERT, RoBERTa-style (``roberta.``),
ELECTRA-style and DistilBERT names, and returns a :class:`TextInit` report: what was loaded, what
kept its own value and why, what the text model had no place for and why. Unlike
:func:`~vlticket.adapters.bert_to_vl` (θ0', the weight matrices only) it loads every tensor that
has a counterpart: biases and layer norms included.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .._naming import preview, unwrap
from ..errors import ArgumentError, NameMismatchError, ShapeMismatchError
from ..registry import AdapterLike, registered, resolve
from .base import Adapter, TextLayers
from .bert import DISTILBERT_MODULES, spans
from .detect import adapter_for

logger = logging.getLogger(__name__)

_TEXT_NAME = re.compile(
    r"(?:module\.)*(?:(?:bert|roberta|electra|distilbert)\.)?"
    r"(?:(?:encoder|transformer)\.layer\.(?P<n>\d+)\.(?P<inner>.+)"
    r"|embeddings\.(?P<emb>.+)|pooler\.(?P<pool>.+))"
)
_EMBEDDINGS = (
    "word_embeddings.weight",
    "position_embeddings.weight",
    "token_type_embeddings.weight",
    "LayerNorm.weight",
    "LayerNorm.bias",
)
_POOLER = ("dense.weight", "dense.bias")
# Models that count positions from padding_idx + 1 (their tables have that many extra rows).
_ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
_NOT_ENCODER = "not part of a BERT-family encoder (a task head or another model's tensor)"


@dataclass
class TextInit:
    """What :func:`init_language_stream` did; ``print(report)`` shows it grouped by reason.

    Attributes:
        family: the V+L adapter's name.
        layers: ``{text layer: V+L language layer}`` as loaded.
        parts: the other parts loaded: ``"embeddings"``, ``"pooler"``.
        loaded: ``{V+L model tensor: text model tensors}`` (several for a fused q/k/v).
        left: ``{V+L model tensor: why it kept its own value}``, every other model tensor.
        unused: ``{text model tensor: why it was not loaded}``.
        notes: conversions made on the way (RoBERTa's position offset, dtype casts).
    """

    family: str
    layers: dict[int, int]
    parts: list[str] = field(default_factory=list)
    loaded: dict[str, tuple[str, ...]] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``loaded 39 tensors into 'uniter': text layers 0-1 onto the same
        language layers, embeddings, pooler; 33 left as they were, 0 unused``."""
        parts = [_layer_text(self.layers)] if self.layers else []
        where = ", ".join(parts + self.parts) or "nothing"
        return (
            f"loaded {len(self.loaded)} tensors into {self.family!r}: {where}; "
            f"{len(self.left)} left as they were, {len(self.unused)} unused"
        )

    def __str__(self) -> str:
        lines = [self.summary(), *(f"  note: {n}" for n in self.notes)]
        for title, table in (
            ("left in the V+L model", self.left),
            ("unused in the text model", self.unused),
        ):
            if table:
                lines.append(f"{title}:")
                lines.extend(_by_reason(table))
        return "\n".join(lines)


def init_language_stream(
    vl_model: nn.Module,
    text_model: nn.Module | Mapping[str, torch.Tensor],
    *,
    layers: int | Mapping[int, int] | None = None,
    exclude: Iterable[str] = (),
    pooler: bool = True,
    adapter: AdapterLike | str | None = None,
) -> TextInit:
    """Load a BERT-family text model into a V+L model's language stream, as LXMERT and UNITER
    were initialised: embeddings (word, position, token type), the language layers' attention
    and FFN weights, biases and layer norms, and the pooler.

    Every name, shape and dtype is checked before the first write: on any error nothing changes.
    A tensor loads only where its shape matches; a text model of another width is refused with
    the tensors that differ. RoBERTa-style position tables (``padding_idx + 1`` extra rows) are
    shifted so position 0 is RoBERTa's first real position.

    Args:
        vl_model: the V+L model (LXMERT, UNITER, VisualBERT, ViLT, BLIP, original code bases
            too); its adapter says where BERT's layers go.
        text_model: a ``BertModel``, ``RobertaModel``, ``DistilBertModel`` (or a ``*For*`` head
            model, or its state dict).
        layers: which text layers to load: ``None`` pairs the first layers of both (a text
            model with fewer layers fills the first ones), an int ``k`` the first ``k``, a
            mapping ``{text layer: V+L language layer}`` any other choice (e.g. every second
            layer of a 12-layer BERT onto 6 layers).
        exclude: regexes (``re.fullmatch``) on the V+L model's parameter names to leave as they
            are, e.g. ``[r".*token_type_embeddings.*"]`` for a RoBERTa with one token type.
        pooler: also load the pooler (``pooler.dense``).
        adapter: the V+L family (detected if omitted).

    Example:
        >>> report = init_language_stream(uniter, bert)   # doctest: +SKIP
        >>> print(report.summary())                        # doctest: +SKIP
        loaded 39 tensors into 'uniter': text layers 0-1 onto the same language layers, ...
    """
    family = _family(vl_model, adapter)
    text = family.text_layers
    params = _vl_params(vl_model)
    excluded = _excluded(exclude, params)
    source, roberta_offset = _source(text_model)
    canon_to_name = _by_canonical(family, params)
    layer_re = re.compile(re.escape(text.layer).replace(r"\{n\}", r"(?P<n>\d+)"))
    vl_layers = sorted({int(m["n"]) for c in canon_to_name if (m := layer_re.match(c))})
    text_layers = sorted(
        {int(m["n"]) for m in (_TEXT_NAME.fullmatch(n) for n in source) if m and m["n"]}
    )
    layer_map = _layer_map(layers, text_layers, vl_layers)
    report = TextInit(family=family.name, layers=layer_map)

    plan: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # target -> {BERT name: source}
    for name, tensor in source.items():
        bert_name, target, reason = _target(name, tensor, text, layer_map, layers, vl_layers)
        if target is not None and target not in canon_to_name:
            target, reason = None, f"the V+L model has no {target!r}"
        if target is not None and pooler is False and bert_name.startswith("pooler."):
            target, reason = None, "pooler=False"
        if target is not None and canon_to_name[target] in excluded:
            target, reason = None, f"its place {canon_to_name[target]!r} is excluded (`exclude`)"
        if target is None:
            report.unused[name] = reason
            continue
        if bert_name in plan.get(target, {}):
            raise NameMismatchError(
                f"`text_model`: {plan[target][bert_name][0]!r} and {name!r} are the same BERT "
                f"tensor {bert_name!r}; give one text model"
            )
        plan.setdefault(target, {})[bert_name] = (name, tensor)

    if not plan:
        raise NameMismatchError(
            "`text_model`: no tensor has a place in the V+L model's language stream; expected "
            "BERT-family names such as 'encoder.layer.0.attention.self.query.weight' or "
            f"'embeddings.word_embeddings.weight', found {preview(source)}"
        )
    values = _values(plan, text, params, canon_to_name, roberta_offset, report)
    with torch.no_grad():
        for target, value in values.items():
            params[canon_to_name[target]].copy_(value)
    report.loaded = {
        canon_to_name[t]: tuple(plan[t][b][0] for b in _stack_order(t, plan[t], text))
        for t in values
    }
    report.parts = [
        what
        for what, prefix in (("embeddings", text.embeddings), ("pooler", text.pooler))
        if prefix is not None and any(t.startswith(prefix) for t in values)
    ]
    loaded_names = set(report.loaded)
    for name in params:
        if name not in loaded_names:
            report.left[name] = _why_left(
                family.stripped(name),
                name in excluded,
                text,
                layer_re,
                layer_map,
                layers,
                len(text_layers),
                pooler,
            )
    logger.info("init_language_stream: %s", report.summary())
    return report


def _family(vl_model: nn.Module, adapter: AdapterLike | str | None) -> Adapter:
    if not isinstance(vl_model, nn.Module):
        raise ArgumentError(f"`vl_model`: expected an nn.Module, found {type(vl_model).__name__}")
    found = adapter_for(vl_model) if adapter is None else resolve(adapter)
    if not isinstance(found, Adapter) or found.text_layers is None:
        known = sorted(a.name for a in registered() if getattr(a, "text_layers", None))
        param = "`vl_model`" if adapter is None else "`adapter`"
        raise ArgumentError(
            f"{param}: adapter {getattr(found, 'name', found)!r} does not say where BERT's layers "
            f"go; text models load into {known}"
        )
    return found


def _vl_params(vl_model: nn.Module) -> dict[str, torch.Tensor]:
    params = dict(unwrap(vl_model).named_parameters())
    meta = [n for n, p in params.items() if p.is_meta]
    if meta:
        raise ArgumentError(
            f"`vl_model`: {meta[0]!r} is on the meta device; materialise the model "
            "(e.g. `model.to_empty(device='cpu')`) first"
        )
    return params


def _excluded(exclude: Iterable[str], params: Mapping[str, torch.Tensor]) -> set[str]:
    if isinstance(exclude, str):
        raise ArgumentError(f"`exclude`: expected a list of regexes, found a str {exclude!r}")
    out: set[str] = set()
    for pattern in exclude:
        try:
            regex = re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ArgumentError(f"`exclude`: {pattern!r} is not a valid regex: {e}") from e
        hits = {n for n in params if regex.fullmatch(n)}
        if not hits:
            raise ArgumentError(
                f"`exclude`: {pattern!r} matches no parameter of the V+L model (re.fullmatch on "
                f"the whole name); it has {preview(params)}"
            )
        out |= hits
    return out


def _source(text_model) -> tuple[dict[str, torch.Tensor], int]:
    """The text model's tensors by name, and RoBERTa's position offset (0 if not RoBERTa)."""
    if isinstance(text_model, nn.Module):
        model = unwrap(text_model)
        config = getattr(model, "config", None)
        tensors = dict(model.named_parameters())
        roberta = getattr(config, "model_type", None) in _ROBERTA_TYPES
        pad = getattr(config, "pad_token_id", None)
    elif isinstance(text_model, Mapping):
        tensors, roberta, pad = dict(text_model), False, None
    else:
        raise ArgumentError(
            "`text_model`: expected an nn.Module or a state dict, "
            f"found {type(text_model).__name__}"
        )
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise ArgumentError(
                f"`text_model`: expected str names and tensors, found {name!r}: {type(t).__name__}"
            )
    roberta = roberta or any(n.startswith("roberta.") for n in tensors)
    offset = (pad if isinstance(pad, int) else 1) + 1 if roberta else 0
    return tensors, offset


def _by_canonical(family: Adapter, params: Mapping[str, torch.Tensor]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in params:
        canon = family.stripped(name)
        if canon in out:
            raise NameMismatchError(
                f"`vl_model`: {out[canon]!r} and {name!r} are both {canon!r} to adapter "
                f"{family.name!r}; does the model hold two backbones? Give one of them"
            )
        out[canon] = name
    return out


def _layer_map(layers, text_layers: list[int], vl_layers: list[int]) -> dict[int, int]:
    if layers is None:
        return dict(zip(text_layers, vl_layers, strict=False))
    if isinstance(layers, int) and not isinstance(layers, bool):
        most = min(len(text_layers), len(vl_layers))
        if not 0 <= layers <= most:
            raise ArgumentError(
                f"`layers`: expected 0 to {most} (the text model has {len(text_layers)} layers, "
                f"the V+L model {len(vl_layers)} language layers), found {layers}"
            )
        return dict(zip(text_layers[:layers], vl_layers[:layers], strict=True))
    if not isinstance(layers, Mapping):
        raise ArgumentError(
            "`layers`: expected None, an int (the first k layers) or a mapping "
            f"{{text layer: V+L language layer}}, found {type(layers).__name__}"
        )
    for t, v in layers.items():
        for value, valid, what in (
            (t, text_layers, "text model's layers"),
            (v, vl_layers, "V+L model's language layers"),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value not in valid:
                raise ArgumentError(
                    f"`layers`: {{{t!r}: {v!r}}}: {value!r} is not one of the {what} {valid}"
                )
    targets = list(layers.values())
    twice = sorted({v for v in targets if targets.count(v) > 1})
    if twice:
        raise ArgumentError(f"`layers`: V+L language layers {twice} get more than one text layer")
    return dict(layers)


def _target(name, tensor, text: TextLayers, layer_map, layers, vl_layers):
    """``(BERT name, V+L canonical name, None)`` or ``(BERT name, None, why not)``."""
    m = _TEXT_NAME.fullmatch(name)
    if m is None:
        return name, None, _NOT_ENCODER
    if not tensor.is_floating_point():
        return name, None, "not a floating-point weight (a buffer such as position_ids)"
    if m["emb"] is not None:
        bert = "embeddings." + m["emb"]
        if m["emb"] not in _EMBEDDINGS:
            return bert, None, "no counterpart in BERT's embeddings"
        return bert, text.embeddings + m["emb"], None
    if m["pool"] is not None:
        bert = "pooler." + m["pool"]
        if m["pool"] not in _POOLER or text.pooler is None:
            return bert, None, "the V+L family has no BERT-style pooler"
        return bert, text.pooler + m["pool"], None
    n = int(m["n"])
    module, _, kind = m["inner"].rpartition(".")
    module = DISTILBERT_MODULES.get(module, module)
    bert = f"encoder.layer.{n}.{module}.{kind}"
    if n not in layer_map:
        why = (
            "not in `layers`" if layers is not None else f"it has {len(vl_layers)} language layers"
        )
        return bert, None, f"text layer {n} has no place in the V+L model ({why})"
    if f"{module}.weight" in text.rename and kind in ("weight", "bias"):
        place = text.rename[f"{module}.weight"].rsplit(".", 1)[0]
    elif module in text.norms and kind in ("weight", "bias"):
        place = text.norms[module]
    else:
        notes = "; ".join(reason for _, reason in text.notes)
        return (
            bert,
            None,
            "no counterpart in the V+L model's language layers" + (f" ({notes})" if notes else ""),
        )
    return bert, text.layer.format(n=layer_map[n]) + f"{place}.{kind}", None


def _values(plan, text: TextLayers, params, canon_to_name, offset: int, report: TextInit):
    """One tensor per target (fused q/k/v stacked in ``rename`` order), every shape and dtype
    checked; raises before anything is written."""
    values: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    for target, found in plan.items():
        order = _stack_order(target, found, text)
        missing = [b for b in order if b not in found]
        if missing:
            raise NameMismatchError(
                f"{canon_to_name[target]!r} stacks the text model's {order}; "
                f"`text_model` lacks {missing}"
            )
        tensors = [found[b][1] for b in order]
        value = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        own = params[canon_to_name[target]]
        first = order[0]
        if offset and first == "embeddings.position_embeddings.weight":
            if value.shape[0] == own.shape[0] + offset:
                value = value[offset:]
                report.notes.append(
                    f"{found[first][0]}: rows {offset}: loaded (RoBERTa counts positions from "
                    "padding_idx + 1)"
                )
            else:
                wrong.append(
                    f"{found[first][0]!r}: a RoBERTa-style table needs {offset} rows more than "
                    f"{canon_to_name[target]!r} ({own.shape[0]}), found {value.shape[0]}"
                )
                continue
        if not own.is_floating_point():
            raise ArgumentError(
                f"`vl_model`: {canon_to_name[target]!r} has dtype {own.dtype}, not a "
                "floating-point weight"
            )
        if value.shape != own.shape:
            sources = " + ".join(found[b][0] for b in order)
            wrong.append(
                f"{canon_to_name[target]!r} has shape {tuple(own.shape)}, the text model's "
                f"{sources!r} {tuple(value.shape)}"
            )
            continue
        if value.dtype != own.dtype:
            cast = f"cast from {value.dtype} to {own.dtype}"
            if cast not in report.notes:
                report.notes.append(cast)
        values[target] = value
    if wrong:
        width = any(".layer." in w.split(" has shape")[0] for w in wrong)
        raise ShapeMismatchError(
            f"{len(wrong)} tensors do not fit, nothing was loaded: {'; '.join(wrong[:4])}"
            + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else "")
            + (
                ". A text model of another width (hidden or FFN size) cannot initialise these "
                "layers"
                if width
                else ""
            )
            + ". Tensors load only where shapes match; leave single tensors out with "
            "exclude=[...] (regexes on the V+L model's names)"
        )
    return values


def _stack_order(target: str, found: Mapping[str, tuple], text: TextLayers) -> list[str]:
    """The BERT names whose tensors make ``target``: several for a fused q/k/v, in order."""
    first = next(iter(found))
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", first)
    if m is None or f"{m[2]}.weight" not in text.rename:
        return [first]
    place = text.rename[f"{m[2]}.weight"]
    return [
        f"encoder.layer.{m[1]}.{b.rsplit('.', 1)[0]}.{m[3]}"
        for b, t in text.rename.items()
        if t == place
    ]


def _why_left(canon, excluded, text: TextLayers, layer_re, layer_map, layers, n_text, pooler):
    if excluded:
        return "excluded (`exclude`)"
    m = layer_re.match(canon)
    if m is not None:
        n = int(m["n"])
        if n not in layer_map.values():
            why = "not in `layers`" if layers is not None else f"the text model has {n_text} layers"
            return f"language layer {n} got no text layer ({why})"
        for pattern, reason in text.notes:
            if re.fullmatch(pattern, canon):
                return reason
        inner = canon[m.end() :]
        places = {t.rsplit(".", 1)[0] for t in text.rename.values()} | set(text.norms.values())
        if inner.rsplit(".", 1)[0] in places:
            return "the text model has no counterpart tensor"
        return "no counterpart in a BERT layer"
    if canon.startswith(text.embeddings):
        if canon[len(text.embeddings) :] in _EMBEDDINGS:
            return "the text model has no such embedding"
        return "not a text embedding (no counterpart in BERT)"
    if text.pooler is not None and canon.startswith(text.pooler):
        return "pooler=False" if not pooler else "the text model has no pooler"
    return "outside the language stream"


def _layer_text(layer_map: Mapping[int, int]) -> str:
    if all(t == v for t, v in layer_map.items()):
        return f"text layers {spans(sorted(layer_map))} onto the same language layers"
    return "text layers onto language layers " + ", ".join(
        f"{t}->{v}" for t, v in sorted(layer_map.items())
    )


def _by_reason(table: Mapping[str, str], examples: int = 2) -> list[str]:
    groups: dict[str, list[str]] = {}
    for name, reason in table.items():
        groups.setdefault(reason, []).append(name)
    width = len(str(max(len(v) for v in groups.values())))
    out = []
    for reason, names in groups.items():
        shown = ", ".join(names[:examples]) + (", ..." if len(names) > examples else "")
        out.append(f"  {len(names):>{width}}  {reason}: {shown}")
    return out
