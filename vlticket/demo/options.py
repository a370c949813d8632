"""The demo's options: defaults, the ``--tiny`` run, and a parser that checks every value.

A bad value is a usage error (exit 2) raised by argparse itself, so it stops the command before
anything is loaded or written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULTS = {
    "seed": 0,
    "threads": 1,
    "pretrain_steps": 600,
    "pretrain_target": 0.8,
    "steps": 120,
    "batch_size": 32,
    "lr": 1e-3,
    "sparsity": 0.95,
    "amount": 0.46,  # five pruning rounds to 0.95: 46%, 71%, 84%, 92%, 95%
    "max_images": None,
}
TINY = {"pretrain_steps": 40, "steps": 8, "sparsity": 0.5, "amount": 0.5, "max_images": 200}


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, found {value}")
        return value

    return parse


def _between(low: float, high: float, *, high_included: bool = False):
    closing = "]" if high_included else ")"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
        if not (low < value < high or (high_included and value == high)):
            raise argparse.ArgumentTypeError(
                f"expected a number in ({low:g}, {high:g}{closing}, found {text}"
            )
        return value

    return parse


def _folder(text: str) -> str:
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder, found the file {text!r}")
    return text


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (used by ``vlticket demo``).

    Every value is checked here, so a bad one is a usage error (exit 2) before anything is
    loaded or written. Options left out take ``DEFAULTS``, or ``TINY`` with ``--tiny``.
    """
    d = DEFAULTS
    positive, fraction = _at_least(1), _between(0.0, 1.0)
    parser.add_argument(
        "--out", type=_folder, default="vlticket-demo", help="output folder (resumed if it exists)"
    )
    parser.add_argument("--seed", type=_at_least(0), help=f"seed of θ0 and training ({d['seed']})")
    parser.add_argument("--threads", type=positive, help=f"torch CPU threads ({d['threads']})")
    parser.add_argument(
        "--pretrain-steps", type=positive, help=f"most pre-training steps ({d['pretrain_steps']})"
    )
    parser.add_argument(
        "--pretrain-target",
        type=_between(0.0, 1.0, high_included=True),
        help="stop pre-training once θ0 answers this fraction of colour questions "
        f"({d['pretrain_target']})",
    )
    parser.add_argument(
        "--steps", type=positive, help=f"training steps per round and baseline ({d['steps']})"
    )
    parser.add_argument("--batch-size", type=positive, help=f"({d['batch_size']})")
    parser.add_argument("--lr", type=_between(0.0, float("inf")), help=f"({d['lr']})")
    parser.add_argument(
        "--sparsity", type=fraction, help=f"target sparsity, in (0, 1) ({d['sparsity']})"
    )
    schedule = parser.add_mutually_exclusive_group()
    schedule.add_argument(
        "--amount", type=fraction, help=f"fraction pruned per IMP round ({d['amount']})"
    )
    schedule.add_argument(
        "--rounds", type=positive, help="number of pruning rounds (instead of --amount)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a reduced run in seconds (tests; numbers meaningless)"
    )


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: options given, else ``TINY`` with ``--tiny``, else ``DEFAULTS``."""
    s = {**DEFAULTS, **(TINY if args.tiny else {})}
    s.update({k: v for k in DEFAULTS if (v := getattr(args, k, None)) is not None})
    if args.rounds is not None:
        s["amount"] = 1.0 - (1.0 - s["sparsity"]) ** (1.0 / args.rounds)
    return s
