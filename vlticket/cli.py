"""The ``vlticket`` command: inspect, compare, push and pull tickets, and run the demo.

A PATH is a ticket folder (written by ``save_pretrained`` or ``vlticket pull``) or a
``.safetensors`` mask file; a Hub repo id (``user/name``) otherwise. A name that is neither is
reported as "no such folder or file" without asking the Hub.

Exit codes: 0 success; 1 expected failure (unreadable, hostile or mismatching file, Hub or
network error), reported as one line on stderr without a traceback; 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

from . import demo
from ._version import __version__
from .adapters import groups_for
from .core import Mask, chance_iou_matrix, group_stats, iou_matrix
from .errors import ArgumentError, FileFormatError, VlticketError
from .hub import TICKET_FILES, Ticket, TicketConfig, download_ticket, push_folder

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Example:
        >>> from vlticket.cli import main
        >>> main(["inspect", "vilt-vqa-ticket"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_demo=_command(argv) == "demo")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): return the code, don't exit
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.run(args)
    except BrokenPipeError:  # `vlticket inspect ... | head`: the reader left, not an error
        sys.stderr.close()
        return EXIT_OK
    except _expected_errors() as e:
        print(f"vlticket {args.command}: error: {_one_line(e, args)}", file=sys.stderr)
        return EXIT_FAILURE


def build_parser(with_demo: bool = False) -> argparse.ArgumentParser:
    """The argument parser; the demo's own options are added only when ``with_demo``."""
    parser = argparse.ArgumentParser(
        prog="vlticket",
        description="Inspect, compare, push and pull lottery-ticket masks.",
        epilog="Exit codes: 0 ok, 1 failure (message on stderr), 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"vlticket {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "inspect",
        help="sparsity overall, per group and per tensor",
        description="Print the sparsity of a mask overall, per group and per tensor.",
    )
    p.add_argument(
        "source", metavar="PATH_OR_REPO", help="ticket folder, .safetensors mask, or repo id"
    )
    p.add_argument("--revision", help="branch, tag or commit of a Hub repo")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(run=_inspect)

    p = sub.add_parser(
        "iou",
        help="IoU matrix between masks",
        description=(
            "Intersection over union of the weights kept by each pair of masks, next to the "
            "chance level: the expected IoU of two independent random masks at the same "
            "densities d1, d2, which is d1*d2 / (d1 + d2 - d1*d2)."
        ),
    )
    p.add_argument("sources", metavar="PATH_OR_REPO", nargs="+", help="two or more masks")
    p.add_argument("--groups", action="store_true", help="also one matrix per group")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="save heatmaps, one panel per matrix (with --groups: per group); needs vlticket[plot]",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(run=_iou)

    p = sub.add_parser(
        "push",
        help="upload a ticket folder to the Hub",
        description=(
            "Upload a ticket folder (or a .safetensors mask) to a Hub repo in one commit. "
            "Arguments in the order of `hf upload`: REPO_ID, then DIR (the reverse order is "
            "recognised and swapped, with a note)."
        ),
    )
    p.add_argument("repo_id", metavar="REPO_ID", help="e.g. user/vilt-vqa-ticket")
    p.add_argument("path", metavar="DIR", help="ticket folder or .safetensors mask file")
    p.add_argument("--revision", help="branch to commit to (created if missing)")
    p.add_argument("--message", default="Upload vlticket mask", help="commit message")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead")
    p.add_argument("--token", help="Hub token (default: saved login or HF_TOKEN)")
    p.set_defaults(run=_push)

    p = sub.add_parser(
        "pull",
        help="download a ticket repo into a folder",
        description=(
            "Download a ticket repo's files into DIR and validate them. DIR must be new or "
            "empty unless --force is given."
        ),
    )
    p.add_argument("repo_id", metavar="REPO_ID", help="e.g. user/vilt-vqa-ticket")
    p.add_argument("path", metavar="DIR", help="folder to create (or an empty one)")
    p.add_argument("--revision", help="branch, tag or commit")
    p.add_argument("--token", help="Hub token (default: saved login or HF_TOKEN)")
    p.add_argument(
        "--force", action="store_true", help="replace the ticket files of a non-empty DIR"
    )
    p.add_argument("--force-download", action="store_true", help="ignore the cache")
    p.set_defaults(run=_pull)

    _add_demo(sub, with_demo)
    return parser


# -- demo ---------------------------------------------------------------------------------------
def _add_demo(sub: Any, with_demo: bool) -> None:
    help_text = "run the end-to-end demo (vlticket demo --help for its options)"
    if not with_demo:
        sub.add_parser("demo", help=help_text, add_help=False)
        return
    p = sub.add_parser("demo", help=help_text, description=(demo.__doc__ or "").strip() or None)
    demo.configure_parser(p)
    p.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    progress = logging.getLogger("vlticket.demo")
    handler = None
    if not logging.getLogger().handlers and not progress.handlers:  # progress on stderr
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
    try:
        report = demo.run(args)
    except KeyboardInterrupt:  # every file is written atomically: the folder stays resumable
        print("vlticket demo: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if handler is not None:
            progress.removeHandler(handler)
    print(report)
    return EXIT_OK


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"vlticket: error: {message}", file=sys.stderr)
    return code


# -- loading ------------------------------------------------------------------------------------
def _load(source: str, revision: str | None = None) -> tuple[Mask, TicketConfig | None]:
    """(mask, ticket config or None) from a folder, a .safetensors file or a Hub repo."""
    path = Path(source)
    if path.is_file() or source.endswith(".safetensors"):
        if path.suffix != ".safetensors":
            raise FileFormatError(f"{source!r}: expected a ticket folder or a .safetensors file")
        return Mask.load(path), None
    if not path.is_dir():
        _check_repo_id(source, "PATH_OR_REPO")
    ticket = Ticket.from_pretrained(source, revision=revision)
    return ticket.mask, ticket.config


def _check_repo_id(name: str, param: str) -> None:
    """Refuse, without a request, a name that cannot be a ticket repo (``user/name``)."""
    valid = re.fullmatch(r"[^/]+/[^/]+", name) is not None
    with contextlib.suppress(HFValidationError):
        validate_repo_id(name)
        if valid:
            return
    if param == "REPO_ID":
        raise ArgumentError(f"REPO_ID: expected a Hub repo id like 'user/name', found {name!r}")
    raise ArgumentError(f"{name!r}: no such folder or file (nor a Hub repo id like 'user/name')")


# -- inspect ------------------------------------------------------------------------------------
def _inspect(args: argparse.Namespace) -> int:
    mask, config = _load(args.source, args.revision)
    overall = {"weights": mask.numel, "kept": mask.num_kept, "sparsity": mask.sparsity}
    groups = group_stats(mask, _groups(mask, config))
    layers = {  # each tensor a group of its own
        name: {"shape": list(mask[name].shape), **stats}
        for name, stats in group_stats(mask, {n: [n] for n in mask}).items()
    }
    if args.json:
        report = {"source": args.source, "overall": overall, "groups": groups, "layers": layers}
        if config:
            saved = json.loads(config.to_json())
            report["config"] = {k: saved.get(k) for k in _SUMMARY_KEYS}
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"{args.source}")
    for line in _describe(config):
        print(f"  {line}")
    print()
    rows = [["all", overall["weights"], overall["kept"], overall["sparsity"]]]
    rows += [[g, s["weights"], s["kept"], s["sparsity"]] for g, s in groups.items()]
    print(_table(["group", "weights", "kept", "sparsity"], rows))
    print()
    rows = [
        [n, "x".join(map(str, s["shape"])), s["weights"], s["kept"], s["sparsity"]]
        for n, s in layers.items()
    ]
    print(_table(["tensor", "shape", "weights", "kept", "sparsity"], rows))
    return EXIT_OK


_SUMMARY_KEYS = ("base_model", "adapter", "search", "task", "metric", "vlticket_version")


def _groups(mask: Mask, config: TicketConfig | None) -> dict[str, list[str]]:
    if config is None:
        return groups_for(mask)
    return groups_for(mask, config.adapter, config.adapter_options)


def _describe(config: TicketConfig | None) -> list[str]:
    if config is None:
        return ["(mask file without a ticket config)"]
    c = config
    search = {
        k: getattr(c, k)
        for k in ("method", "amount", "rounds", "rewind_step", "scope", "seed")
        if getattr(c, k) is not None
    }
    metric = {
        k: v
        for k, v in (("name", c.metric), ("score", c.score), ("dense_score", c.dense_score))
        if v is not None
    }
    options = f" (options: {', '.join(c.adapter_options)})" if c.adapter_options else ""
    lines = [
        f"base model: {c.base_model or '-'}"
        + (f" @ {c.base_model_revision}" if c.base_model_revision else ""),
        f"adapter: {(c.adapter or '-') + options}",
        "found by: " + (", ".join(f"{k}={v}" for k, v in search.items()) or "-"),
    ]
    if c.task or metric:
        parts = [f"task: {c.task or '-'}", *(f"{k}={v}" for k, v in metric.items())]
        lines.append("  ".join(parts))
    return lines


# -- iou ----------------------------------------------------------------------------------------
def _iou(args: argparse.Namespace) -> int:
    if len(args.sources) < 2:
        return _fail("iou needs at least two masks", EXIT_USAGE)
    if len(set(args.sources)) != len(args.sources):
        return _fail("iou: the same mask is given twice")
    loaded = [_load(s) for s in args.sources]
    masks = {s: m for s, (m, _) in zip(args.sources, loaded, strict=True)}
    names, overall = iou_matrix(masks)  # checks that all masks have one layout
    matrices = {"all": overall}
    chance = {"all": chance_iou_matrix([masks[k].density for k in names])}
    if args.groups:
        for group, members in _groups(masks[names[0]], loaded[0][1]).items():
            sub = {k: Mask({n: m[n] for n in members}) for k, m in masks.items()}
            matrices[group] = iou_matrix(sub)[1]
            chance[group] = chance_iou_matrix([sub[k].density for k in names])
    if args.plot:
        _plot(names, matrices, chance, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        out = {
            "masks": names,
            "iou": {g: m.tolist() for g, m in matrices.items()},
            "chance": chance,
        }
        print(json.dumps(out, indent=2))
        return EXIT_OK
    labels = [f"[{i}]" for i in range(len(names))]
    for i, name in enumerate(names):
        print(f"{labels[i]} {name}")
    print("\nchance: the IoU of two random masks at the same sparsities, in parentheses")
    for group, matrix in matrices.items():
        print(f"\nIoU ({group})")
        rows = [
            [
                labels[i],
                *(f"{matrix[i, j]:.4f} ({chance[group][i][j]:.4f})" for j in range(len(names))),
            ]
            for i in range(len(names))
        ]
        print(_table(["", *labels], rows))
    return EXIT_OK


def _plot(names: list[str], matrices: dict[str, Any], chance: dict[str, Any], path: str) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ArgumentError("--plot needs matplotlib: pip install 'vlticket[plot]'") from e
    n, panels = len(names), len(matrices)
    columns = min(panels, 3)
    rows = -(-panels // columns)
    size = 1.3 * n + 2.5
    fig = Figure(figsize=(size * columns + 2, size * rows), layout="constrained")
    labels = [Path(s).name or s for s in names]
    image = None
    for k, (group, matrix) in enumerate(matrices.items()):
        ax = fig.add_subplot(rows, columns, k + 1)
        image = ax.imshow(matrix.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(n), labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels if k % columns == 0 else [])  # labels once per row
        for i in range(n):
            for j in range(n):
                value = float(matrix[i, j])
                ax.text(
                    j,
                    i,
                    f"{value:.2f}\n({chance[group][i][j]:.2f})",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if value > 0.6 else "white",
                )
        ax.set_title(f"IoU ({group})")
    fig.colorbar(image, ax=fig.axes, label="IoU of kept weights (chance in parentheses)")
    fig.savefig(path, dpi=120)


# -- push / pull --------------------------------------------------------------------------------
def _push(args: argparse.Namespace) -> int:
    if Path(args.repo_id).exists() and not Path(args.path).exists():
        args.repo_id, args.path = args.path, args.repo_id
        print(
            f"vlticket push: note: pushing {args.path!r} to {args.repo_id!r} (the order is "
            "REPO_ID DIR, as in `hf upload`)",
            file=sys.stderr,
        )
    path = Path(args.path)
    options = dict(
        commit_message=args.message,
        private=args.private or None,
        token=args.token,
        revision=args.revision,
        create_pr=args.create_pr,
    )
    if path.is_dir():
        url = push_folder(path, args.repo_id, **options)
    elif path.is_file():
        mask, _ = _load(args.path)
        url = Ticket(mask).push_to_hub(args.repo_id, **options)
    else:
        raise ArgumentError(f"DIR: {args.path!r} is neither a ticket folder nor a mask file")
    print(url)
    return EXIT_OK


def _pull(args: argparse.Namespace) -> int:
    """Download into a temporary sibling folder, then move only the ticket's files into DIR:
    DIR never holds a half download or huggingface_hub's ``.cache/`` bookkeeping."""
    _check_repo_id(args.repo_id, "REPO_ID")
    target = Path(args.path)
    if target.exists() and not target.is_dir():
        raise ArgumentError(f"DIR: {args.path!r} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not args.force:
        raise ArgumentError(
            f"DIR: {args.path!r} is not empty; choose a new folder, or pass --force to replace "
            "its ticket files"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vlticket-pull-", dir=target.parent) as staging:
        folder = download_ticket(
            args.repo_id,
            staging,
            revision=args.revision,
            token=args.token,
            force_download=args.force_download,
        )
        pulled = [f for f in Path(folder).iterdir() if f.is_file() and f.name in TICKET_FILES]
        target.mkdir(exist_ok=True)
        for name in TICKET_FILES:  # a stale file of an older ticket would not match its config
            if not (Path(folder) / name).is_file():
                (target / name).unlink(missing_ok=True)
        for f in pulled:
            os.replace(f, target / f.name)
    print(target)
    return EXIT_OK


# -- helpers ------------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [headers] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(not isinstance(r[i], str) for r in rows) and i > 0 for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        parts = [
            c.rjust(w) if numeric[i] else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can cause and fix: reported as one line, without a traceback. The
    library turns the Hub's errors into ``HubError`` (a ``VlticketError``) already."""
    return (VlticketError, OSError)


def _one_line(error: BaseException, args: argparse.Namespace) -> str:
    return " ".join(str(error).split()) or type(error).__name__
