"""vlticket vs torch.nn.utils.prune at BERT-base and LXMERT scale: ``python benchmarks/run.py``.

Every measurement runs in a fresh process (``tasks.py``) so memory peaks are its own; repeats of
competing methods are interleaved inside a process so load from other users hits both alike.
Prints a table and writes ``benchmarks/RESULTS.md``. ``--quick`` runs tiny models (a smoke test).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import export_tasks
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MB = 1 << 20


def run_task(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "tasks.py"), json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=HERE,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"task {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(xs) -> float:
    return float(np.median(xs))


def span(xs, scale=1.0, unit="s", digits=3) -> str:
    xs = [x * scale for x in xs]
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f} {unit} (n=1)"
    return f"{med(xs):.{digits}f} {unit} [{min(xs):.{digits}f}–{max(xs):.{digits}f}, n={len(xs)}]"


def machine(threads: int) -> list[str]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores ({cpu}), torch threads: {threads}",
        f"- torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}",
        f"- load average at start: {os.getloadavg()[0]:.2f} (the machine may be shared)",
    ]


def bench_prune(model: str, args, rows: list) -> None:
    torch_runs = args.torch_repeats if model == "bert-base" else max(1, args.torch_repeats // 2)
    for scenario, label in (
        ("dense20", "global prune to 20% from dense"),
        ("imp9", "IMP round 9 (amount=0.1 at 61.3%)"),
    ):
        base = {"model": model, "quick": args.quick, "scenario": scenario, "threads": args.threads}
        r = run_task(base | {"task": "prune", "repeats": args.repeats})
        theirs = [run_task(base | {"task": "prune_torch"}) for _ in range(torch_runs)]
        ours, floor = r["times"]["vlticket"], r["times"]["floor"]
        torch_t = [x["seconds"] for x in theirs]
        ratios = [a / b for a, b in zip(ours, floor, strict=True)]
        mask_mb, ours_mb = r["mask_bytes"] / MB, r["peak"] / MB
        torch_mb = med([x["peak"] for x in theirs]) / MB
        differ = max(x["differ"]["count"] for x in theirs)
        if not differ:
            same = "same masks"
        elif all(x["differ"]["ties_only"] for x in theirs):
            same = f"same masks but for {differ} ties at the threshold"
        else:
            same = "MASKS DIFFER"
        rows.append(
            (
                f"{label}: time",
                model,
                span(ours),
                span(torch_t),
                f"{med(torch_t) / med(ours):.0f}× faster ({same}); "
                f"{med(ratios):.1f}× the read floor ({span(floor)})",
            )
        )
        rows.append(
            (
                f"{label}: peak extra memory",
                model,
                f"{ours_mb:.0f} MB = {ours_mb / mask_mb:.2f}× the bool masks ({mask_mb:.0f} MB)",
                f"{torch_mb:.0f} MB",
                f"{torch_mb / max(ours_mb, 1e-9):.0f}× less "
                f"(read floor: {r['floor_peak'] / MB:.0f} MB)",
            )
        )


def bench_rounds(model: str, args, rows: list) -> None:
    r = run_task(
        {"task": "imp_rounds", "model": model, "quick": args.quick, "threads": args.threads}
    )
    ratio = [a / b for a, b in zip(r["times"], r["floors"], strict=True)]
    kept = r["retained"]
    rows.append(
        (
            "9 IMP rounds in a row: time per round",
            model,
            span(r["times"]),
            "—",
            f"{med(ratio):.1f}× the read floor",
        )
    )
    rows.append(
        (
            "9 IMP rounds: memory retained after round 1 → 9",
            model,
            f"{kept[0] / MB:.1f} → {kept[-1] / MB:.1f} MB",
            "—",
            f"growth {(kept[-1] - kept[0]) / MB:+.1f} MB",
        )
    )


def bench_train(args, rows: list) -> None:
    for adamw in ("fused", "for-loop"):
        r = run_task(
            {
                "task": "train_step",
                "quick": args.quick,
                "sparsity": 0.5,
                "batch": 4,
                "seq": 64,
                "adamw": adamw,
                "repeats": args.train_repeats,
                "threads": args.threads,
            }
        )
        t = r["times"]
        over = [v / d - 1 for v, d in zip(t["vlticket"], t["dense"], strict=True)]
        over_torch = [v / d - 1 for v, d in zip(t["torch"], t["dense"], strict=True)]
        upkeep = med(r["upkeep"]) / med(t["dense"])
        note = (
            f"vlticket's hooks {1e3 * med(r['upkeep']):.0f} ms = {100 * upkeep:.1f}% of a "
            f"dense step; end to end {100 * med(over):+.1f}% vs dense "
            f"(torch's hooks {100 * med(over_torch):+.1f}%)"
        )
        if "sqrt_zero" in r:
            note += (
                f"; AdamW's sqrt of the pruned weights' zero second moments takes "
                f"{1e3 * r['sqrt_zero']:.0f} ms vs {1e3 * r['sqrt_one']:.0f} ms on non-zero "
                "values (torch's CPU sqrt)"
            )
        rows.append(
            (
                f"training step (fwd+bwd+AdamW {adamw}, 4×64 tokens), 50% mask attached",
                "bert-base",
                span(t["vlticket"]),
                f"{span(t['torch'])} (dense {span(t['dense'])})",
                note,
            )
        )


def bench_disk(model: str, args, rows: list) -> None:
    r = run_task(
        {"task": "disk", "model": model, "quick": args.quick, "repeats": 3, "threads": args.threads}
    )
    n = r["numel"]
    ours, theirs = r["vlticket"], r["torch"]
    rows.append(
        (
            "mask on disk: bits per weight",
            model,
            f"{8 * ours['bytes'] / n:.3f}",
            f"{8 * theirs['bytes'] / n:.1f}",
            f"{theirs['bytes'] / ours['bytes']:.0f}× smaller",
        )
    )
    rows.append(
        (
            "mask on disk: save / load",
            model,
            f"{span(ours['save'])} / {span(ours['load'])}",
            f"{span(theirs['save'])} / {span(theirs['load'])}",
            f"{med(theirs['save']) / med(ours['save']):.0f}× / "
            f"{med(theirs['load']) / med(ours['load']):.0f}× faster",
        )
    )


def bench_iou(model: str, args, rows: list) -> None:
    r = run_task(
        {
            "task": "iou",
            "model": model,
            "quick": args.quick,
            "repeats": 3,
            "peer_repeats": 1,
            "threads": args.threads,
        }
    )
    ours, theirs = r["times"]["vlticket"], r["times"]["pairwise"]
    rows.append(
        (
            "IoU matrix of 8 masks at 70% sparsity",
            model,
            span(ours),
            f"{span(theirs)} (pairwise AND/OR)",
            f"{med(theirs) / med(ours):.0f}× faster; agree: {r['agree']}",
        )
    )


def bench_shrink(args, rows: list) -> None:
    r = run_task(
        {
            "task": "shrink",
            "quick": args.quick,
            "repeats": 3,
            "forward_repeats": 3 if args.quick else 7,
            "batch": 8,
            "tokens": 32 if args.quick else 128,
            "threads": 2,
        }
    )
    lat, cpu, t = r["latency"], r["cpu"], r["times"]
    model = "bert-base" if not args.quick else "bert-tiny"
    shape = "8×128 tokens, 2 threads" if not args.quick else "8×32 tokens, 2 threads"
    neurons = f"FFN {r['width']} wide (align=8)"

    def faster(peer: str, ours: str) -> str:
        return (
            f"{med(lat[peer]) / med(lat[ours]):.2f}× (CPU time "
            f"{med(cpu[peer]) / med(cpu[ours]):.2f}×)"
        )

    rows.append(
        (
            f"forward {shape}: shrunk (1/3 heads, 40% neurons removed; {neurons})",
            model,
            span(lat["shrunk"]),
            f"{span(lat['dense'])} (dense)",
            f"{faster('dense', 'shrunk')} faster; agree: {r['agree']}",
        )
    )
    rows.append(
        (
            f"forward {shape}: shrunk vs a hand-built BERT of the exact kept shape",
            model,
            span(lat["shrunk"]),
            f"{span(lat['hand'])} (hand-built)",
            faster("hand", "shrunk"),
        )
    )
    rows.append(
        (
            f"forward {shape}: shrunk with align=1 (exact kept shape) vs the hand-built BERT",
            model,
            span(lat["exact"]),
            f"{span(lat['hand'])} (hand-built)",
            f"{faster('hand', 'exact')}; vs dense {faster('dense', 'exact')}",
        )
    )
    p, d = r["params"], r["disk"]
    rows.append(
        (
            "parameters / bytes on disk (save_pretrained)",
            model,
            f"{p['shrunk'] / 1e6:.1f} M / {d['shrunk'] / MB:.0f} MiB",
            f"{p['dense'] / 1e6:.1f} M / {d['dense'] / MB:.0f} MiB (dense)",
            f"{p['dense'] / p['shrunk']:.2f}× / {d['dense'] / d['shrunk']:.2f}× smaller",
        )
    )
    rows.append(
        (
            "shrink: time / peak extra memory",
            model,
            f"{span(t['shrink'])} / {med(r['shrink_peak']) / MB:.0f} MiB",
            f"{span(t['read'])} (one read pass) / {r['model_bytes'] / MB:.0f} MiB (model)",
            f"{med(t['shrink']) / med(t['read']):.2f}× the read pass; "
            f"{med(r['shrink_peak']) / r['model_bytes']:.2f}× the model size",
        )
    )
    rows.append(
        (
            "prune_structured by group norm: heads / neurons",
            model,
            f"{span(t['prune_heads'])} / {span(t['prune_neurons'])}",
            f"{span(t['read'])} (one read pass); goal ≤ 0.1 s",
            f"{med(t['prune_heads']) / med(t['read']):.2f}× / "
            f"{med(t['prune_neurons']) / med(t['read']):.2f}× the read pass; "
            f"load average in the task: {r['load']:.2f}",
        )
    )


def bench_export(args, rows: list) -> None:
    """Issue 13: CSR layers and forward, sparse checkpoints, N:M selection (2 threads)."""
    base = {"quick": args.quick, "threads": args.threads, "repeats": args.repeats}
    r = run_task({**base, "task": "csr_layers"})
    mix = dict(zip(export_tasks.SHAPES, export_tasks.LAYER_MIX, strict=True))
    crossover = None
    for s in export_tasks.SPARSITIES:
        per = {}
        for o, i in mix:
            t = r[f"{o}x{i}@{s}"]
            per[f"{o}×{i}"] = (med(t["dense"]), med(t["csr"]))
        dense = sum(mix[k] * v[0] for k, v in zip(mix, per.values(), strict=True))
        csr = sum(mix[k] * v[1] for k, v in zip(mix, per.values(), strict=True))
        if crossover is None and csr < dense:
            crossover = s
        shapes = ", ".join(f"{k} {d / c:.2f}×" for k, (d, c) in per.items())
        rows.append(
            (
                f"CSR Linear, 8×128 tokens, sparsity {s}",
                "bert-base layers",
                f"{1e3 * csr:.1f} ms per layer's Linears",
                f"{1e3 * dense:.1f} ms (dense F.linear)",
                f"{dense / csr:.2f}× ({shapes})",
            )
        )
    rows.append(("CSR crossover sparsity", "bert-base layers", f"{crossover}", "", ""))
    for s in (0.9, 0.95):
        f = run_task({**base, "task": "csr_forward", "sparsity": s})
        t = f["times"]
        rows.append(
            (
                f"encoder forward, 8×128, CSR at {s}",
                "bert-base",
                span(t["csr"]),
                f"{span(t['dense'])} (dense)",
                f"{med(t['dense']) / med(t['csr']):.2f}×; max |diff| {f['max_abs_diff']:.1e}",
            )
        )
    c = run_task({**base, "task": "sparse_checkpoint"})
    t = c["times"]
    rows.append(
        (
            "sparse checkpoint at 70%: bits per pruned-tensor weight",
            "bert-base",
            f"{c['bits_per_weight']:.2f} (target ≤ {0.3 * 32 + 1.1:.1f})",
            "32 (dense fp32)",
            f"{c['dense_bytes'] / c['sparse_bytes']:.2f}× smaller folder",
        )
    )
    rows.append(
        (
            "sparse checkpoint at 70%: save / load",
            "bert-base",
            f"{span(t['sparse_save'])} / {span(t['sparse_load'])}",
            f"{span(t['dense_save'])} / {span(t['dense_load'])} (safetensors)",
            f"{med(t['dense_save']) / med(t['sparse_save']):.2f}× / "
            f"{med(t['dense_load']) / med(t['sparse_load']):.2f}×",
        )
    )
    rows.append(
        (
            "sparse checkpoint at 70%: load from disk (files dropped from the page cache)",
            "bert-base",
            span(t["sparse_load_cold"]),
            f"{span(t['dense_load_cold'])} (safetensors)",
            f"{med(t['dense_load_cold']) / med(t['sparse_load_cold']):.2f}×",
        )
    )
    rows.append(
        (
            "sparse checkpoint at 70%: load vs a dense load that also checks SHA-256",
            "bert-base",
            f"{span(t['sparse_load'])} (SHA-256 of its files alone: {span(t['sparse_hash'])})",
            f"{span(t['hashed_load'])} (safetensors + SHA-256)",
            f"{med(t['hashed_load']) / med(t['sparse_load']):.2f}×",
        )
    )
    n = run_task({**base, "task": "nm_select"})
    rows.append(
        (
            "2:4 selection vs one read pass",
            "bert-base",
            span(n["nm"]),
            f"{span(n['read'])} (sum |w|)",
            f"{med(n['nm']) / med(n['read']):.1f}× a read pass (goal ≤ 2×)",
        )
    )


def table(rows: list) -> str:
    head = ("benchmark", "model", "vlticket", "peer (torch.nn.utils.prune)", "ratio")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models: a smoke test")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: stable ratios on a shared machine)",
    )
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--torch-repeats", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    p.add_argument(
        "--only",
        choices=("prune", "train", "files", "shrink", "export"),
        help="one group: prune and IMP rounds, the training step, disk and IoU, structured "
        "tickets (shrink), or sparse export (CSR, sparse checkpoints, N:M)",
    )
    args = p.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.train_repeats = 3 if args.quick else 9
    start = time.time()
    info = machine(args.threads)
    rows: list = []
    wanted = {args.only} if args.only else {"prune", "train", "files", "shrink", "export"}
    for model in ("bert-base", "lxmert"):
        if "prune" in wanted:
            bench_prune(model, args, rows)
            bench_rounds(model, args, rows)
    if "train" in wanted:
        bench_train(args, rows)
    for model in ("bert-base", "lxmert"):
        if "files" in wanted:
            bench_disk(model, args, rows)
            bench_iou(model, args, rows)
    if "shrink" in wanted:
        bench_shrink(args, rows)
    if "export" in wanted:
        bench_export(args, rows)
    quick = " (--quick)" if args.quick else ""
    quick += f" (--only {args.only})" if args.only else ""
    info.append(
        f"- load average at end: {os.getloadavg()[0]:.2f}; "
        f"total run time {time.time() - start:.0f} s{quick}"
    )
    text = "\n".join(info) + "\n\n" + table(rows) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(
            "# vlticket benchmarks\n\nWritten by `python benchmarks/run.py"
            + (" --quick" if args.quick else "")
            + (f" --only {args.only}" if args.only else "")
            + "`.\n\n"
            + text
            + NOTES
        )


NOTES = """
Notes. Times are median [min–max] over repeats; ratios are medians of the same run. The
read floor is one pass `sum(w.abs().sum())` over the same weights. Peak extra memory is the
process's resident high-water mark (reset just before the call) minus its resident size before,
so torch's own allocations count. Peers: `torch.nn.utils.prune.global_unstructured` with
`L1Unstructured` (same masks on tie-free weights, checked by the test suite), its forward
pre-hooks for training, `torch.save` of its state dict (`weight_orig` + float `weight_mask`),
and a straightforward pairwise AND/OR for IoU. Weights are random (BERT-base init scale)
with the encoder shapes of BERT-base (= UNITER-base) and the default LXMERT.
"""

if __name__ == "__main__":
    main()
