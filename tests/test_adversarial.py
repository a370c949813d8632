"""VILLA-style adversarial training: δ stays in the ε-ball, raises the loss, zeros stay zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import vlticket
from vlticket.adapters import lxmert
from vlticket.adversarial import adversarial_loss, embedding_hooks, project, symmetric_kl
from vlticket.errors import ArgumentError


class TwoStream(nn.Module):
    """Text tokens and image features, embedded, pooled and classified."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(20, 8)
        self.image = nn.Linear(6, 8)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def embed(self, batch):
        return {"text": self.words(batch["ids"]), "image": self.image(batch["feats"])}

    def forward_embeddings(self, batch, e):
        h = torch.cat([e["text"].mean(1), e["image"].mean(1)], dim=1)
        return self.head(torch.tanh(self.mix(h)))


def make_batch(n: int = 8):
    g = torch.Generator().manual_seed(0)
    return {
        "ids": torch.randint(0, 20, (n, 5), generator=g),
        "feats": torch.randn(n, 3, 6, generator=g),
        "labels": torch.randint(0, 4, (n,), generator=g),
    }


def hooks(model):
    return model.embed, model.forward_embeddings


@pytest.mark.parametrize("epsilon", [0.05, 0.5, 3.0])
def test_delta_stays_in_the_ball(epsilon):
    torch.manual_seed(0)
    model, batch = TwoStream(), make_batch()
    embed, forward = hooks(model)
    out = adversarial_loss(
        batch,
        batch["labels"],
        embed=embed,
        forward=forward,
        epsilon=epsilon,
        steps=4,
        step_size=epsilon,  # large steps: the projection must act
    )
    assert set(out.delta) == {"text", "image"}
    for d in out.delta.values():
        norms = d.flatten(1).norm(dim=1)
        assert (norms <= epsilon * (1 + 1e-5)).all()
        assert norms.max() > 0.5 * epsilon  # the ascent moved δ


def test_perturbation_increases_the_loss():
    torch.manual_seed(0)
    model, batch = TwoStream(), make_batch(32)
    embed, forward = hooks(model)
    out = adversarial_loss(batch, batch["labels"], embed=embed, forward=forward, epsilon=1.0)
    assert out.adversarial > out.clean
    assert out.kl > 0
    expected = out.clean + out.adversarial + 1.0 * out.kl
    assert torch.allclose(out.loss, expected)
    # A random δ of the same size raises the loss less than the adversarial one.
    e = embed(batch)
    rand = {n: project(torch.randn_like(t) * 10, 1.0) for n, t in e.items()}
    random_loss = F.cross_entropy(forward(batch, {n: e[n] + rand[n] for n in e}), batch["labels"])
    assert out.adversarial > random_loss


def test_pruned_weights_stay_zero_with_a_mask_attached():
    torch.manual_seed(0)
    model, batch = TwoStream(), make_batch()
    mask = vlticket.prune_magnitude(model, sparsity=0.6)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    embed, forward = hooks(model)
    with mask.attach(model, opt):
        for _ in range(3):
            out = adversarial_loss(batch, batch["labels"], embed=embed, forward=forward)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    for name, keep in mask.items():
        p = model.get_parameter(name)
        assert not p[~keep].any()
        assert p[keep].count_nonzero() > 0


def test_symmetric_kl_is_symmetric_and_zero_on_equal():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.allclose(symmetric_kl(a, b), symmetric_kl(b, a))
    assert symmetric_kl(a, a).abs() < 1e-6


@pytest.mark.parametrize(
    "kwargs", [{"epsilon": -1.0}, {"steps": 0}, {"step_size": 0.0}, {"alpha": -0.5}]
)
def test_bad_arguments_raise(kwargs):
    model, batch = TwoStream(), make_batch()
    embed, forward = hooks(model)
    with pytest.raises(ArgumentError):
        adversarial_loss(batch, batch["labels"], embed=embed, forward=forward, **kwargs)


def test_vilt_hooks_match_the_model_and_train():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViltConfig(
        vocab_size=30,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=16,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = transformers.ViltForQuestionAnswering(config).eval()
    batch = {"input_ids": torch.randint(1, 30, (2, 6)), "pixel_values": torch.randn(2, 3, 32, 32)}
    embed, forward = embedding_hooks(model)  # found through the ViLT adapter
    with torch.no_grad():
        direct = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits
        hooked = forward(batch, embed(batch))
    assert torch.allclose(direct, hooked, atol=1e-5)
    out = adversarial_loss(batch, torch.tensor([0, 2]), embed=embed, forward=forward, epsilon=0.5)
    assert set(out.delta) == {"inputs_embeds", "image_embeds"}
    assert out.adversarial > out.clean
    out.loss.backward()
    assert model.vilt.encoder.layer[0].attention.attention.query.weight.grad is not None


def test_lxmert_hooks_match_the_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LxmertConfig(
        vocab_size=30,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        l_layers=1,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=12,
        visual_pos_dim=4,
        num_qa_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = transformers.LxmertForQuestionAnswering(config).eval()
    batch = {
        "input_ids": torch.randint(1, 30, (2, 6)),
        "visual_feats": torch.randn(2, 5, 12),
        "visual_pos": torch.rand(2, 5, 4),
    }
    embed, forward = lxmert.embedding_hooks(model)
    with torch.no_grad():
        direct = model(
            input_ids=batch["input_ids"],
            visual_feats=batch["visual_feats"],
            visual_pos=batch["visual_pos"],
            token_type_ids=torch.zeros_like(batch["input_ids"]),
        ).question_answering_score
        hooked = forward(batch, embed(batch))
    assert torch.allclose(direct, hooked, atol=1e-5)
    out = adversarial_loss(batch, torch.tensor([1, 2]), embed=embed, forward=forward, epsilon=0.5)
    assert set(out.delta) == {"inputs_embeds", "visual_feats"}
    for d in out.delta.values():
        assert (d.flatten(1).norm(dim=1) <= 0.5 * (1 + 1e-5)).all()


def test_embedding_hooks_of_a_family_without_them_is_a_clear_error():
    from vlticket import adapters

    model = nn.Sequential(nn.Linear(4, 4))
    mine = adapters.PatternAdapter(include=[r"0\.weight"], name="adv-test-mlp")
    adapters.register_adapter(mine)
    try:
        with pytest.raises(ArgumentError, match="'adv-test-mlp' has no embedding hooks"):
            embedding_hooks(model)
    finally:
        del vlticket.registry._REGISTRY["adv-test-mlp"]
