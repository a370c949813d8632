"""The model card (``README.md``) of a ticket folder, written from its config.

The YAML header (library, base model, license, tags) makes the Hub list the ticket under its base
model; the body says how the mask was found, how to apply it, and its sparsity per group.
"""

from __future__ import annotations

import json

from huggingface_hub import ModelCard, ModelCardData

from .config import TicketConfig

_METHODS = {
    "imp": "iterative magnitude pruning",
    "one-shot": "one-shot magnitude pruning",
    "random": "random pruning",
}
_SEARCH_TEXT = (
    ("amount", "{:.0%} of the remaining weights pruned per round"),
    ("rounds", "{} rounds"),
    ("rewind_step", "weights rewound to step {}"),
    ("scope", "{} ranking"),
    ("granularity", "whole units pruned: {}"),
    ("pattern", "{} semi-structured pattern"),
    ("seed", "seed {}"),
)


def model_card(config: TicketConfig, repo_id: str = "") -> str:
    """The text of a ticket's model card.

    Args:
        config: the ticket's config.
        repo_id: the Hub repo the ticket goes to, shown in the usage snippet.

    Example:
        >>> text = model_card(ticket.config, "user/vilt-vqa-ticket")  # doctest: +SKIP
        >>> text.startswith("---\\nbase_model: dandelin/vilt-b32-mlm")  # doctest: +SKIP
        True
    """
    base, sparsity = config.base_model, config.sparsity
    data = ModelCardData(
        library_name="vlticket",
        base_model=base,
        license=config.license,
        tags=["lottery-ticket", "pruning-mask", *([config.task] if config.task else [])],
    )
    rows = "\n".join(
        f"| {g} | {s['weights']:,} | {s['kept']:,} | {s['sparsity']:.2%} |"
        for g, s in sparsity["groups"].items()
    )
    body = (
        f"# Lottery ticket{f' for {base}' if base else ''}\n\n"
        f"A binary pruning mask (a *lottery ticket*) made with vlticket. It keeps "
        f"{sparsity['kept']:,} of {sparsity['weights']:,} weights (sparsity "
        f"{sparsity['overall']:.2%}). {', '.join(_how_found(config))}.\n\n"
        f"{_result(config)}"
        "## Use\n\n```python\nimport vlticket\n\n"
        f"ticket = vlticket.Ticket.from_pretrained({json.dumps(repo_id or '<repo_id>')})\n"
        "ticket.apply(model)  # checks names and shapes first, then zeroes the pruned weights\n"
        "```\n\n## Sparsity\n\n| group | weights | kept | sparsity |\n|---|---:|---:|---:|\n"
        f"| **all** | {sparsity['weights']:,} | {sparsity['kept']:,} | "
        f"{sparsity['overall']:.2%} |\n{rows}\n"
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _how_found(config: TicketConfig) -> list[str]:
    method = _METHODS.get(config.method or "", "an unrecorded method")
    return [f"Found by {method}"] + [
        text.format(getattr(config, key))
        for key, text in _SEARCH_TEXT
        if getattr(config, key) is not None
    ]


def _result(config: TicketConfig) -> str:
    if not config.task and config.score is None:
        return ""
    result = f"Task: {config.task or 'unrecorded'}"
    if config.score is not None:
        result += f"; {config.metric or 'score'} {config.score:.4g}"
        if config.dense_score is not None:
            result += f" (dense model: {config.dense_score:.4g})"
    return result + ".\n\n"
