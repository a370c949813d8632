"""The demo's printout (Table 1 of the study in miniature) and its plot."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from .. import _files
from . import cheaper as _cheaper
from . import data as _data

SHUFFLED = "θ0\u2032\u2032"
COLUMNS = (  # (header, key in a results row); every column but sparsity is a test accuracy
    ("dense acc", "dense"),
    ("99% of dense", "dense_99"),
    ("sparsity", "sparsity"),
    ("IMP", "imp"),
    ("random", "random"),
    ("random (per tensor)", "random_per_tensor"),
    (SHUFFLED, "shuffled"),
    ("structured", "structured"),
)
LEGEND = (
    "Test accuracy of the dense model, 99% of it, then at the ticket's sparsity: the IMP ticket, "
    "a random mask, a random mask matching the ticket tensor by tensor, the ticket on shuffled "
    "θ0; structured: the most attention heads/FFN neurons structured IMP removed while keeping "
    "99% of dense."
)
TABLE2 = (  # (header, key in a pretraining_ticket task row)
    ("dense acc", "dense"),
    ("own ticket", "own"),
    ("pre-training ticket", "pretraining"),
    ("random", "random"),
    ("IoU with own", "iou"),
)
# Where the baselines sit beside the ticket's own point, in fractions of the x axis's span:
# they are all measured at the ticket's sparsity and would otherwise hide each other.
_SERIES = (  # key, label, marker, x offset
    ("shuffled", f"ticket on shuffled θ0 ({SHUFFLED})", "s", 0.04),
    ("random", "random pruning (global)", "X", 0.08),
    ("random_per_tensor", "random pruning (per tensor)", "v", 0.12),
)
_COLOURS = {"A": "tab:blue", "B": "tab:orange"}
_TICKS = (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)


def format_table(results: dict[str, Any]) -> str:
    """Table 1 of the study in miniature, from the numbers of one run."""
    rows = results["rows"]
    widths = [max(len(h), 6) for h, _ in COLUMNS]
    lines = ["task  " + "  ".join(h.rjust(w) for (h, _), w in zip(COLUMNS, widths, strict=True))]
    for task, row in rows.items():
        cells = [_cell(k, row, results.get("structured", {}).get(task)) for _, k in COLUMNS]
        padded = (c.rjust(w) for c, w in zip(cells, widths, strict=True))
        lines.append(f"{task:<4}  " + "  ".join(padded))
    tasks = "; ".join(f"{t}: answers {'/'.join(_data.TASKS[t])}" for t in rows)
    pre = results["pretrain"]
    lines += [
        LEGEND,
        f"Tasks (easy-vqa colour questions) {tasks}.",
        "",
        f"IoU of the A and B tickets: {results['iou_A_B']:.3f} "
        f"(two random masks at these sparsities: {results['iou_random']:.3f})",
        f"Ticket of A re-trained on B: {results['transfer_A_to_B']:.3f} "
        f"(B's own ticket {rows['B']['imp']:.3f}, random {rows['B']['random']:.3f})",
        "Relaxed winning ticket (>= 99% of dense) up to sparsity: "
        + ", ".join(f"{t} {_fmt(r['relaxed_sparsity'])}" for t, r in rows.items()),
        f"θ0 pre-trained {pre['steps']} steps (colour accuracy {pre['colour']:.3f})"
        + (", reused from an earlier run" if pre.get("reused") else "")
        + f"; this run took {results['seconds']:.0f} s",
    ]
    if "pretraining_ticket" in results:
        lines += ["", *_table2(results["pretraining_ticket"])]
    if "structured" in results:
        lines += ["", *_structured(results["structured"])]
    if "csr" in results:
        lines += ["", *_csr(results["csr"])]
    if "cheaper" in results:
        lines += ["", _cheaper.format_table(results["cheaper"])]
    return "\n".join(lines)


def _cell(key: str, row: dict[str, Any], structured: dict[str, Any] | None) -> str:
    if key == "sparsity":
        return f"{row[key]:.1%}"
    if key == "structured":
        best = structured and structured["best_round"]
        if not best:
            return "none"
        kept = structured["rounds"][best - 1]
        return f"{kept['head']:.0%}/{kept['neuron']:.0%}"
    return f"{row[key]:.3f}"


def _table2(pre: dict[str, Any]) -> list[str]:
    """Table 2 in miniature: the pre-training ticket transferred to each task."""
    widths = [max(len(h), 6) for h, _ in TABLE2]
    lines = [
        f"Pre-training ticket (Table 2): IMP on the pre-training objective from θ0, sparsity "
        f"{pre['sparsity']:.1%} (all question types: dense θ0 {pre['objective'][0]:.3f}, "
        f"ticket {pre['objective'][-1]:.3f}), then trained on each task",
        "task  " + "  ".join(h.rjust(w) for (h, _), w in zip(TABLE2, widths, strict=True)),
    ]
    for task, row in pre["tasks"].items():
        cells = (f"{row[k]:.3f}".rjust(w) for (_, k), w in zip(TABLE2, widths, strict=True))
        lines.append(f"{task:<4}  " + "  ".join(cells))
    lines.append(
        "Test accuracy on the task: dense, the task's own IMP ticket, the pre-training ticket and "
        "a random mask, all at the same sparsity; IoU of the pre-training ticket and the task's."
    )
    return lines


def _structured(structured: dict[str, Any]) -> list[str]:
    """Per task: the structured rounds, and the shrunk model's measured speed."""
    lines = ["Structured IMP (whole heads and FFN neurons, L1 norm; stops below 99% of dense):"]
    for task, result in structured.items():
        steps = ", ".join(
            f"{r['head']:.0%}/{r['neuron']:.0%} {r['accuracy']:.3f}" for r in result["rounds"]
        )
        line = f"  {task}: heads/neurons removed and accuracy: {steps}"
        speed = result["speed"]
        if speed is None:
            line += "; no round kept 99% of dense, nothing to shrink"
        else:
            line += (
                f"; shrunk ({speed['params_shrunk']:,} of {speed['params']:,} parameters) "
                f"{_times(speed, 'dense')}"
            )
        lines.append(line)
    return lines


def _csr(csr: dict[str, Any]) -> list[str]:
    """Per task: the exported CSR ticket's speed against the masked dense model."""
    parts = [
        f"{task} {_times(speed, 'masked dense')}, {speed['csr_layers']} of "
        f"{speed['pruned_layers']} pruned layers sparse"
        for task, speed in csr.items()
    ]
    return ["Tickets exported to CSR (vlticket.export, to='csr'): " + "; ".join(parts)]


def _times(speed: dict[str, Any], than: str) -> str:
    ratio = speed["speedup"]
    how = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
    return (
        f"{how} than {than} ({speed['baseline_ms']:.2f} -> {speed['candidate_ms']:.2f} ms per "
        "forward pass, "
        f"batch {speed['batch']}, {speed['threads']} thread{'s' if speed['threads'] > 1 else ''})"
    )


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.1%}"


def plot(results: dict[str, Any], stem: Path) -> list[Path]:
    """Accuracy against the percent of weights remaining, as ``stem``.png (200 dpi) and .svg."""
    from matplotlib.figure import Figure  # no pyplot: the user's backend stays untouched
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullFormatter

    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    history = results["history"]
    remaining = {t: [100.0 * (1.0 - h["sparsity"]) for h in hs] for t, hs in history.items()}
    lowest = min(min(xs) for xs in remaining.values())
    span = max(math.log(100.0 / lowest), math.log(2.0))
    handles = []
    for task, rounds in history.items():
        row, colour = results["rows"][task], _COLOURS.get(task)
        ys = [h["metrics"]["accuracy"] for h in rounds]
        label = f"IMP ticket, task {task} ({'/'.join(_data.TASKS[task])})"
        (line,) = ax.plot(remaining[task], ys, marker="o", lw=2, color=colour, label=label)
        colour = line.get_color()
        handles.append(line)
        ax.axhline(row["dense_99"], color=colour, ls="--", lw=1.2)
        x = 100.0 * (1.0 - row["sparsity"])
        for key, _, marker, offset in _SERIES:
            hollow = key == "shuffled"
            ax.plot(
                [x * math.exp(-offset * span)],
                [row[key]],
                ls="none",
                marker=marker,
                ms=9,
                mfc="white" if hollow else colour,
                mec=colour,
                mew=2,
            )
    for key, label, marker, _ in _SERIES:
        mfc = "white" if key == "shuffled" else "grey"
        handles.append(
            Line2D([], [], ls="none", marker=marker, ms=9, mfc=mfc, mec="grey", mew=2, label=label)
        )
    handles.append(Line2D([], [], color="grey", ls="--", lw=1.2, label="99% of dense (per task)"))
    ax.set_xscale("log")
    ax.set_xlim(100.0 * math.exp(0.05 * span), lowest * math.exp(-0.16 * span))  # 100% left
    ax.xaxis.set_major_locator(FixedLocator([t for t in _TICKS if t >= lowest * 0.9]))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}%")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("weights remaining (log scale; baselines drawn beside the ticket they match)")
    ax.set_ylabel("test accuracy")
    seed = results["settings"]["seed"]
    ax.set_title(f"Lottery tickets in a small ViLT on easy-vqa colour questions (seed {seed})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix[1:], dpi=200)
        _files.atomic_write_bytes(path, buffer.getvalue())
    return paths
