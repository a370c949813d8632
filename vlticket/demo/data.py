"""The demo's data: easy-vqa's questions and 64×64 images (shipped inside the `easy-vqa` package).

Questions become word ids from a vocabulary built on the fly (no tokenizer download); images are
read with Pillow into one float tensor. Two colour tasks split by answer group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import VlticketError

TASKS = {
    "A": ("red", "green", "blue", "yellow"),
    "B": ("black", "gray", "teal", "brown"),
}
_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
MAX_WORDS = 12  # easy-vqa questions have at most 9 words, plus [CLS] and [SEP]


class DemoExtraMissing(VlticketError):
    """The optional packages the demo needs are not installed."""


def require_demo_extra() -> None:
    """Raise a clear message when `vlticket[demo]` is not installed."""
    missing = []
    for module, package in (
        ("easy_vqa", "easy-vqa"),
        ("PIL", "pillow"),
        ("transformers", "transformers"),
        ("matplotlib", "matplotlib"),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise DemoExtraMissing(
            f"the demo needs {', '.join(missing)}; install them with: pip install 'vlticket[demo]'"
        )


@dataclass
class Split:
    """Questions as word ids, the index of each question's image, and answer ids."""

    input_ids: torch.Tensor  # (n, MAX_WORDS) long
    attention_mask: torch.Tensor  # (n, MAX_WORDS) long
    image_index: torch.Tensor  # (n,) long, rows of `images`
    labels: torch.Tensor  # (n,) long, into `answers`
    answers: list[str]

    def __len__(self) -> int:
        return int(self.labels.numel())

    def where(self, keep: torch.Tensor) -> Split:
        return Split(
            self.input_ids[keep],
            self.attention_mask[keep],
            self.image_index[keep],
            self.labels[keep],
            self.answers,
        )

    def task(self, name: str) -> Split:
        """Only the questions whose answer is in task ``name``'s answer group."""
        ids = torch.tensor([self.answers.index(a) for a in TASKS[name]])
        return self.where(torch.isin(self.labels, ids))


@dataclass
class DemoData:
    train: Split
    test: Split
    train_images: torch.Tensor  # (n, 3, 64, 64) float in [-1, 1]
    test_images: torch.Tensor
    vocab: dict[str, int]
    answers: list[str]


def _words(question: str) -> list[str]:
    return question.lower().replace("?", " ?").split()


def _encode(questions: list[str], vocab: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    cls, sep, pad, unk = (vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"))
    rows = []
    for q in questions:  # plain lists, one tensor at the end: a tensor per row costs seconds
        words = [vocab.get(w, unk) for w in _words(q)][: MAX_WORDS - 2]
        rows.append([cls, *words, sep, *[pad] * (MAX_WORDS - 2 - len(words))])
    ids = torch.tensor(rows, dtype=torch.long).reshape(len(questions), MAX_WORDS)
    return ids, (ids != pad).long()


def _load_images(paths: dict[int, str]) -> tuple[torch.Tensor, dict[int, int]]:
    from PIL import Image

    ids = sorted(paths)
    out = np.empty((len(ids), 3, 64, 64), dtype=np.float32)
    for row, image_id in enumerate(ids):
        with Image.open(paths[image_id]) as im:
            pixels = np.asarray(im.convert("RGB").resize((64, 64)), dtype=np.float32)
        out[row] = pixels.transpose(2, 0, 1) / 127.5 - 1.0
    return torch.from_numpy(out), {image_id: row for row, image_id in enumerate(ids)}


def load(max_images: int | None = None) -> DemoData:
    """Load easy-vqa; ``max_images`` keeps only questions on the first images (for --tiny)."""
    require_demo_extra()
    import easy_vqa

    answers = sorted(easy_vqa.get_answers())
    train_q, train_a, train_i = easy_vqa.get_train_questions()
    test_q, test_a, test_i = easy_vqa.get_test_questions()
    words = sorted({w for q in train_q for w in _words(q)})
    vocab = {w: i for i, w in enumerate((*_SPECIALS, *words))}

    def split(questions, labels, image_ids, paths) -> tuple[Split, torch.Tensor]:
        if max_images is not None:
            chosen = set(sorted(paths)[:max_images])
            paths = {i: p for i, p in paths.items() if i in chosen}
            keep = [k for k, i in enumerate(image_ids) if i in chosen]
            questions = [questions[k] for k in keep]
            labels = [labels[k] for k in keep]
            image_ids = [image_ids[k] for k in keep]
        images, row_of = _load_images(paths)
        ids, attention = _encode(questions, vocab)
        return Split(
            ids,
            attention,
            torch.tensor([row_of[i] for i in image_ids]),
            torch.tensor([answers.index(a) for a in labels]),
            answers,
        ), images

    train, train_images = split(train_q, train_a, train_i, easy_vqa.get_train_image_paths())
    test, test_images = split(test_q, test_a, test_i, easy_vqa.get_test_image_paths())
    return DemoData(train, test, train_images, test_images, vocab, answers)
