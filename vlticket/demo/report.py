"""The demo's printout (Table 1 of the study in miniature) and its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import data as _data


def plot(results: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: the user's backend stays untouched

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for task, history in results["history"].items():
        xs = [h["sparsity"] for h in history]
        ys = [h["metrics"]["accuracy"] for h in history]
        (line,) = ax.plot(xs, ys, marker="o", label=f"IMP, task {task}")
        row, colour = results["rows"][task], line.get_color()
        ax.scatter(row["sparsity"], row["random"], marker="x", color=colour, label="random pruning")
        ax.scatter(
            row["sparsity"], row["shuffled"], marker="s", color=colour, label="ticket on θ0''"
        )
    ax.set_xlabel("sparsity")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def format_table(results: dict[str, Any]) -> str:
    """Table 1 of the study in miniature, from the numbers of one run."""
    groups = {t: "/".join(_data.TASKS[t]) for t in "AB"}
    shuffled = "θ0\u2032\u2032"
    lines = [
        f"{'task':<34} {'dense':>6} {'99%':>6} {'sparsity':>8} {'IMP':>6} {'random':>7} "
        f"{shuffled:>6}",
    ]
    for task, row in results["rows"].items():
        name = f"{task}: colour is {groups[task]}"
        lines.append(
            f"{name:<34} {row['dense']:6.3f} {row['dense_99']:6.3f} {row['sparsity']:8.3f} "
            f"{row['imp']:6.3f} {row['random']:7.3f} {row['shuffled']:6.3f}"
        )
    rows = results["rows"]
    lines += [
        "",
        f"IoU of the A and B tickets: {results['iou_A_B']:.3f} "
        f"(two random masks at these sparsities: {results['iou_random']:.3f})",
        f"Ticket of A re-trained on B: {results['transfer_A_to_B']:.3f} "
        f"(B's own ticket {rows['B']['imp']:.3f}, random {rows['B']['random']:.3f})",
        "Relaxed winning ticket (>= 99% of dense) up to sparsity: "
        + ", ".join(f"{t} {_fmt(r['relaxed_sparsity'])}" for t, r in rows.items()),
        f"θ0 pre-trained {results['pretrain']['steps']} steps "
        f"(colour accuracy {results['pretrain']['colour']:.3f}); run took "
        f"{results['seconds']:.0f} s",
    ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"
