"""IMP around a Hugging Face Trainer: a tiny ViltForQuestionAnswering on the demo's easy-vqa data.

python examples/trainer_imp.py [OUT_DIR]   (needs `pip install -e ".[demo]"`; a few minutes
on a 2-core CPU). From random weights (no pre-training, unlike `vlticket demo`) the accuracies
say little; the point is the wiring. One Trainer per round; `TicketCallback` adds the optimizer
the Trainer creates to the running round, so pruned weights stay exactly zero under its warm-up
schedule, gradient accumulation and clipping. Killed, the same command resumes from the last
finished round.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

import vlticket
from vlticket.demo import data as demo_data
from vlticket.demo import model as demo_model
from vlticket.integrations.transformers import TicketCallback


class Questions(torch.utils.data.Dataset):
    """easy-vqa questions as ViltForQuestionAnswering inputs (soft labels: one-hot)."""

    def __init__(self, split: demo_data.Split, images: torch.Tensor) -> None:
        self.split, self.images = split, images

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.split
        return {
            "input_ids": s.input_ids[i],
            "attention_mask": s.attention_mask[i],
            "pixel_values": self.images[s.image_index[i]],
            "labels": torch.nn.functional.one_hot(s.labels[i], len(s.answers)).float(),
        }


def accuracy(prediction) -> dict[str, float]:
    predicted = np.argmax(prediction.predictions, axis=-1)
    return {"accuracy": float((predicted == np.argmax(prediction.label_ids, axis=-1)).mean())}


def main(out_dir: str = "runs/trainer-imp") -> None:
    torch.manual_seed(0)
    data = demo_data.load(max_images=400)
    train = Questions(data.train.task("A"), data.train_images)
    test = Questions(data.test.task("A"), data.test_images)
    model = demo_model.build_model(len(data.vocab), len(data.answers))
    search = vlticket.TicketSearch(
        model,
        sparsity=0.5,
        amount=0.5,
        run_dir=out_dir,
        adapter=vlticket.adapter_for(model),
        progress=False,
    )
    for rnd in search:
        args = TrainingArguments(
            output_dir=f"{out_dir}/trainer",
            max_steps=100,
            learning_rate=1e-3,
            per_device_train_batch_size=32,
            gradient_accumulation_steps=2,
            warmup_steps=10,
            max_grad_norm=1.0,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            seed=rnd.index,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=test,
            compute_metrics=accuracy,
            callbacks=[TicketCallback(rnd)],
        )
        trainer.train()
        rnd.report(accuracy=trainer.evaluate()["eval_accuracy"])
        print(
            f"round {rnd.index}: sparsity {rnd.sparsity:.3f}, "
            f"accuracy {search.history[-1]['metrics']['accuracy']:.3f}"
        )
    print(vlticket.relaxed_ticket(search.history, p=0.99))


if __name__ == "__main__":
    main(*sys.argv[1:])
