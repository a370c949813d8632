"""The offline demo: a reduced end-to-end run, its files, and the missing-extra message."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

import vlticket
from vlticket.cli import main
from vlticket.demo import data as _demo_data
from vlticket.demo import study as demo


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo.configure_parser(parser)
    return parser.parse_args(list(argv))


def test_tiny_demo_end_to_end(tmp_path, capsys):
    pytest.importorskip("easy_vqa")
    out = tmp_path / "demo"
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    for task in "AB":
        row = results["rows"][task]
        ticket = vlticket.Ticket.from_pretrained(out / f"ticket_{task}").mask
        assert ticket.sparsity == pytest.approx(0.5, abs=1e-6)
        assert row["sparsity"] == ticket.sparsity
        history = json.loads((out / f"task_{task}" / "history.json").read_text())["rounds"]
        assert history == results["history"][task]
        assert row["dense"] == history[0]["metrics"]["accuracy"]
        assert row["imp"] == history[-1]["metrics"]["accuracy"]
        # every number in the table row is the run's own
        for key in ("dense", "dense_99", "imp", "random", "shuffled"):
            assert f"{row[key]:.3f}" in printed
    assert f"{results['iou_A_B']:.3f}" in printed
    assert f"{results['transfer_A_to_B']:.3f}" in printed
    iou = vlticket.iou(
        vlticket.Ticket.from_pretrained(out / "ticket_A").mask,
        vlticket.Ticket.from_pretrained(out / "ticket_B").mask,
    )
    assert iou == results["iou_A_B"]
    assert (out / "accuracy_vs_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run starts afresh instead of resuming the first one's rounds
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == results["rows"]


def test_rounds_flag_sets_the_amount():
    settings = demo._settings(parse("--sparsity", "0.9", "--rounds", "4"))
    assert (1 - settings["amount"]) ** 4 == pytest.approx(0.1)
    assert demo._settings(parse("--tiny"))["max_images"] == demo.TINY["max_images"]


def test_missing_extra_gives_a_clear_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # import easy_vqa now raises ImportError
    with pytest.raises(_demo_data.DemoExtraMissing, match=r"pip install 'vlticket\[demo\]'"):
        _demo_data.require_demo_extra()
    assert main(["demo", "--tiny", "--out", str(tmp_path)]) == 1
    assert "easy-vqa" in capsys.readouterr().err


def test_batched_image_embeds_match_vilt_own_embedding():
    pytest.importorskip("transformers")
    from vlticket.demo import model as _demo_model

    torch.manual_seed(0)
    model = _demo_model.build_model(20, 5).eval()
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    b = {
        "input_ids": torch.randint(4, 20, (3, 12)),
        "attention_mask": torch.ones(3, 12, dtype=torch.long),
        "pixels": pixels,
    }
    with torch.no_grad():
        fast = _demo_model.logits(model, b)
        own = model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=pixels
        ).logits
    assert torch.allclose(fast, own, atol=1e-5)


def test_each_subnetwork_is_trained_alone(tmp_path, monkeypatch):
    # Every training run starts from exactly its own mask: no baseline inherits another's zeros.
    pytest.importorskip("easy_vqa")
    from vlticket.demo import model as _demo_model

    real_train, checked = _demo_model.train, []

    def train(model, *args, add_optimizer, **kwargs):
        handle = getattr(add_optimizer, "__self__", None)
        if isinstance(handle, vlticket.MaskHandle):
            params = vlticket.adapter_for(model).prunable(model)
            zeros = sum(int((params[n] == 0).sum()) for n in handle.mask)
            assert all(torch.all(params[n][~k] == 0) for n, k in handle.mask.items())
            assert zeros <= handle.mask.num_pruned + 5  # kept weights are (almost) never 0
            checked.append(handle.mask.sparsity)
        return real_train(model, *args, add_optimizer=add_optimizer, **kwargs)

    monkeypatch.setattr(_demo_model, "train", train)
    assert main(["demo", "--tiny", "--out", str(tmp_path / "demo")]) == 0
    assert len(checked) >= 5  # random and θ0'' for both tasks, and the transfer
