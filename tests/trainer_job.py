"""IMP around a real Hugging Face Trainer on a tiny ViLT, for the Trainer integration tests.

Usage: python trainer_job.py RUN_DIR OUT_MASK [--die-after-round R]
With --die-after-round R the process exits abruptly (os._exit) right after round R is reported,
as a kill would leave it; running it again resumes.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from transformers import Trainer, TrainingArguments, ViltConfig, ViltForQuestionAnswering

import vlticket
from vlticket.integrations.transformers import TicketCallback


class Batches(torch.utils.data.Dataset):
    """Random questions and images whose answer is the first token's parity."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 60, (n, 6), generator=g)
        self.pixels = torch.randn(n, 3, 32, 32, generator=g)
        self.labels = torch.nn.functional.one_hot(self.ids[:, 0] % 2, 2).float()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "pixel_values": self.pixels[i], "labels": self.labels[i]}


def build() -> ViltForQuestionAnswering:
    torch.manual_seed(0)
    config = ViltConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=16,
        num_labels=2,
        vocab_size=64,
        max_position_embeddings=16,
    )
    return ViltForQuestionAnswering(config)


def search(run_dir: str, die_after: int = -1, progress_file: str | None = None) -> vlticket.Mask:
    torch.set_num_threads(1)
    model = build()
    adapter = vlticket.adapter_for(model)
    train, dev = Batches(64, 1), Batches(32, 2)
    ticket_search = vlticket.TicketSearch(
        model, sparsity=0.5, amount=0.3, adapter=adapter, run_dir=run_dir, progress=False
    )
    for rnd in ticket_search:
        args = TrainingArguments(
            output_dir=os.path.join(run_dir, "trainer"),
            max_steps=6,
            learning_rate=1e-3,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,
            max_grad_norm=1.0,
            warmup_steps=2,
            lr_scheduler_type="linear",
            weight_decay=0.01,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            seed=rnd.index,
            data_seed=rnd.index,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=dev,
            callbacks=[TicketCallback(rnd)],
        )
        trainer.train()
        params = adapter.prunable(model)
        revived = sum(int(params[n][~k].count_nonzero()) for n, k in rnd.mask.items())
        metrics = trainer.evaluate()
        rnd.report(eval_loss=metrics["eval_loss"])
        if progress_file:
            with open(progress_file, "a") as f:
                f.write(json.dumps({"round": rnd.index, "revived": revived}) + "\n")
        if rnd.index == die_after:
            os._exit(3)
    return ticket_search.mask


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("out_mask")
    parser.add_argument("--die-after-round", type=int, default=-1)
    parser.add_argument("--progress")
    args = parser.parse_args()
    search(args.run_dir, args.die_after_round, args.progress).save(args.out_mask)


if __name__ == "__main__":
    main()
