"""Cheaper tickets against IMP on the demo (easy-vqa, a tiny ViLT) on one task, on CPU.

The model is pre-trained on every question type (θ0), then each method finds a mask at the
demo's sparsity for task A and the masked model is trained once from θ0:

- IMP: rounds of (rewind to θ0, train, prune 30% of the kept weights by magnitude);
- early-bird IMP: the same, each round's training stopped once its mask settles (EarlyBird);
- early-bird one-shot: one dense training stopped when the target-sparsity mask settles;
- magnitude at θ0: one-shot magnitude pruning of the pre-trained weights (no search);
- SNIP, GraSP (a few batches), SynFlow (data-free);
- RigL: dynamic sparse training from the θ0 magnitude mask, in one training run.

Prints accuracy, optimizer steps (search + final training) and the IoU with IMP's mask.
Usage: ``python examples/cheaper_tickets.py [--steps 60] [--max-images 1000] [--seed 0]``.
"""

import argparse
import contextlib
import time

import torch

import vlticket
from vlticket import Checkpoint, DynamicSparsity, EarlyBird
from vlticket.demo import data as demo_data
from vlticket.demo import model as demo_model
from vlticket.saliency import prune_at_init


class _Stop(Exception):
    """Raised from an optimizer hook to end ``demo_model.train`` early (the early-bird break)."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60, help="training steps per run (the demo: 120)")
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.add_argument("--max-images", type=int, default=1000)
    p.add_argument("--sparsity", type=float, default=0.95)
    p.add_argument("--amount", type=float, default=0.3)
    p.add_argument("--check-every", type=int, default=5, help="early-bird check interval")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t_start = time.time()

    data = demo_data.load(max_images=args.max_images)
    train, test = data.train.task("A"), data.test.task("A")
    vocab = int(max(data.train.input_ids.max(), data.test.input_ids.max())) + 1
    model = demo_model.build_model(vocab, len(data.train.answers))
    adapter = vlticket.adapter_for(model)
    demo_model.train(
        model, data.train, data.train_images, steps=args.pretrain_steps, batch_size=64,
        lr=2e-3, seed=args.seed,
    )  # fmt: skip
    theta0 = Checkpoint.capture(model)
    kw = dict(batch_size=32, lr=1e-3)

    def fit(mask, steps, seed, hooks=()):
        """Rewind to θ0, attach ``mask``, train; ``hooks(opt, handle)`` may stop early. Returns
        (accuracy, steps taken)."""
        theta0.restore(model)
        count = {"steps": 0}

        def add_optimizer(opt):
            handle = mask.attach(model, opt, adapter=adapter) if mask is not None else None
            state["handle"] = handle

            def counter(*_):
                count["steps"] += 1

            opt.register_step_post_hook(counter)
            for h in hooks:
                h(opt, handle, count)

        state = {}
        with contextlib.suppress(_Stop):  # the early-bird break
            demo_model.train(
                model, train, data.train_images, steps=steps, seed=seed,
                add_optimizer=add_optimizer, **kw,
            )  # fmt: skip
        if state.get("handle") is not None:
            state["handle"].remove()
        return demo_model.accuracy(model, test, data.test_images), count["steps"]

    def early_bird(eb):
        def hook(opt, handle, count):
            def check(*_):
                if count["steps"] % args.check_every == 0 and eb.check(model):
                    raise _Stop

            opt.register_step_post_hook(check)

        return hook

    rows = {}
    acc, steps = fit(None, args.steps, args.seed)
    rows["dense"] = (acc, steps, None)

    def imp(use_early_bird: bool):
        mask, total, distances = vlticket.Mask.ones(model, adapter=adapter), 0, []
        r = 0
        while mask.sparsity < args.sparsity - 1e-9:
            target = min(args.sparsity, 1 - (1 - mask.sparsity) * (1 - args.amount))
            hooks = ()
            if use_early_bird:
                eb = EarlyBird(sparsity=target, adapter=adapter)
                hooks = (early_bird(eb),)
            _, used = fit(mask, args.steps, args.seed * 1000 + r, hooks)
            total += used
            if use_early_bird:
                distances.append((used, [round(d, 4) for d in eb.distances]))
            mask = vlticket.prune_magnitude(model, sparsity=target, mask=mask, adapter=adapter)
            r += 1
        acc, used = fit(mask, args.steps, args.seed)
        return mask, acc, total + used, distances, r

    imp_mask, acc, steps, _, rounds = imp(False)
    rows["IMP"] = (acc, steps, imp_mask)
    eb_mask, acc, steps, eb_log, _ = imp(True)
    rows["early-bird IMP"] = (acc, steps, eb_mask)

    eb = EarlyBird(sparsity=args.sparsity, adapter=adapter)
    _, one_shot_used = fit(None, args.steps, args.seed, (early_bird(eb),))
    one_shot_log = [round(d, 4) for d in eb.distances]
    acc, final = fit(eb.mask, args.steps, args.seed)
    rows["early-bird one-shot"] = (acc, one_shot_used + final, eb.mask)

    theta0.restore(model)
    magnitude = vlticket.prune_magnitude(model, sparsity=args.sparsity, adapter=adapter)
    acc, steps = fit(magnitude, args.steps, args.seed)
    rows["magnitude at θ0"] = (acc, steps, magnitude)

    g = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(4):
        rows_ = torch.randint(0, len(train), (32,), generator=g)
        batches.append(rows_)

    def loss_fn(m, rows_):
        # the demo's own loss on one batch, via its public helpers' tensors
        ids = train.input_ids[rows_]
        out = m(
            input_ids=ids,
            attention_mask=train.attention_mask[rows_],
            pixel_values=data.train_images[train.image_index[rows_]],
        ).logits
        return torch.nn.functional.cross_entropy(out, train.labels[rows_])

    for method in ("snip", "grasp"):
        theta0.restore(model)
        mask = prune_at_init(
            model, method, sparsity=args.sparsity, loss_fn=loss_fn, batches=batches,
            adapter=adapter,
        )  # fmt: skip
        acc, steps = fit(mask, args.steps, args.seed)
        rows[method.upper()] = (acc, steps, mask)

    theta0.restore(model)
    n_text = train.input_ids.shape[1]
    hidden = model.config.hidden_size

    def ones(m):
        n_img = 1 + (model.config.image_size // model.config.patch_size) ** 2
        return m(
            inputs_embeds=torch.ones(1, n_text, hidden, dtype=torch.float64),
            attention_mask=torch.ones(1, n_text, dtype=torch.long),
            image_embeds=torch.ones(1, n_img, hidden, dtype=torch.float64),
            pixel_mask=torch.ones(1, n_img, dtype=torch.long),
        ).logits

    mask = prune_at_init(model, "synflow", sparsity=args.sparsity, forward=ones, adapter=adapter)
    acc, steps = fit(mask, args.steps, args.seed)
    rows["SynFlow"] = (acc, steps, mask)

    rigl_box = {}

    def rigl(opt, handle, count):
        ds = DynamicSparsity(
            handle, opt, update_every=max(1, args.steps // 12), end=int(0.75 * args.steps)
        )
        rigl_box["ds"] = ds
        opt.register_step_post_hook(lambda *_: ds.step())

    rigl_mask = magnitude.clone()  # the attached mask, updated in place by DynamicSparsity
    acc, steps = fit(rigl_mask, args.steps, args.seed, (rigl,))
    rigl_box["ds"].remove()
    rows["RigL"] = (acc, steps, rigl_mask)

    imp_acc, imp_steps = rows["IMP"][0], rows["IMP"][1]
    print(
        f"task A, sparsity {args.sparsity}, {args.steps} steps per training, seed {args.seed}, "
        f"IMP {rounds} rounds of {args.amount:.0%}, pre-training {args.pretrain_steps} steps, "
        f"{len(train)} train / {len(test)} test questions"
    )
    print(f"{'method':22s} {'accuracy':>8s} {'steps':>6s} {'vs IMP':>7s} {'IoU(IMP)':>8s}")
    for name, (acc, steps, mask) in rows.items():
        iou = f"{vlticket.iou(mask, imp_mask):.3f}" if mask is not None else "-"
        print(f"{name:22s} {acc:8.3f} {steps:6d} {steps / imp_steps:7.3f} {iou:>8s}")
    winners = [
        n
        for n, (acc, steps, _) in rows.items()
        if n not in ("IMP", "dense") and acc >= imp_acc - 0.01 and steps <= imp_steps / 4
    ]
    if winners:
        print(f"within 1 point of IMP with <= 1/4 of its steps: {', '.join(winners)}")
    else:
        shortfalls = ", ".join(
            f"{n} {imp_acc - a:+.3f}" for n, (a, _, _) in rows.items() if n not in ("IMP", "dense")
        )
        print(f"none within 1 point of IMP with <= 1/4 of its steps; IMP minus each: {shortfalls}")
    print("early-bird IMP, per round (steps used, max distance at each check):")
    for used, d in eb_log:
        print(f"  {used:4d} {d}")
    print(f"early-bird one-shot: {one_shot_used} steps, distances {one_shot_log}")
    print(f"SNIP/GraSP scored on 4 batches of 32; SynFlow 100 data-free iterations; "
          f"{time.time() - t_start:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
