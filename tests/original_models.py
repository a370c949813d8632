"""Tiny modules with the parameter names of the ORIGINAL UNITER, LXMERT and ViLT code bases.

Only names and shapes matter to adapters, so these have no forward pass. Names follow
ChenRocks/UNITER (``UniterModel`` under ``uniter.``), airsplay/lxmert (``LXRTModel`` under
``lxrt_encoder.model.bert.`` in task models, under ``bert.`` in pre-training) and dandelin/ViLT
(``ViLTransformerSS`` with a timm ``VisionTransformer`` as ``transformer``).
"""

from __future__ import annotations

import torch
from torch import nn


def _box(**children: nn.Module) -> nn.Module:
    """A plain module holding ``children`` under the given attribute names."""
    box = nn.Module()
    for name, child in children.items():
        box.add_module(name, child)
    return box


def _qkv(h: int) -> nn.Module:
    return _box(query=nn.Linear(h, h), key=nn.Linear(h, h), value=nn.Linear(h, h))


def _dense_norm(i: int, h: int) -> nn.Module:
    return _box(dense=nn.Linear(i, h), LayerNorm=nn.LayerNorm(h))


def bert_layer(h: int, i: int) -> nn.Module:
    """``attention.self.{query,key,value}``, ``attention.output``, ``intermediate``, ``output``."""
    return _box(
        attention=_box(self=_qkv(h), output=_dense_norm(h, h)),
        intermediate=_box(dense=nn.Linear(h, i)),
        output=_dense_norm(i, h),
    )


def bert_embeddings(vocab: int, h: int, positions: int = 512, token_types: int = 2) -> nn.Module:
    return _box(
        word_embeddings=nn.Embedding(vocab, h),
        position_embeddings=nn.Embedding(positions, h),
        token_type_embeddings=nn.Embedding(token_types, h),
        LayerNorm=nn.LayerNorm(h),
    )


def _vqa_mlp(h_in: int, h: int, n: int, norm_first: bool = False) -> nn.Sequential:
    # UNITER/LXMERT: Linear, GELU, LayerNorm, Linear; ViLT: Linear, LayerNorm, GELU, Linear.
    mid = [nn.LayerNorm(2 * h), nn.GELU()] if norm_first else [nn.GELU(), nn.LayerNorm(2 * h)]
    return nn.Sequential(nn.Linear(h_in, 2 * h), *mid, nn.Linear(2 * h, n))


class _PredictionHead(nn.Module):
    """BERT's ``cls.predictions``: ``transform.{dense,LayerNorm}``, a decoder tied to the word
    embeddings (``tied``) or its own, and an output ``bias``."""

    def __init__(self, h: int, out: int, tied: nn.Parameter | None = None):
        super().__init__()
        self.transform = _dense_norm(h, h)
        self.decoder = nn.Linear(h, out, bias=False)
        if tied is not None:
            self.decoder.weight = tied
        self.bias = nn.Parameter(torch.zeros(out))


# -- UNITER -----------------------------------------------------------------------------------
class UniterModel(nn.Module):
    def __init__(self, layers=2, h=16, i=32, img_dim=8, vocab=50, token_types=2):
        super().__init__()
        self.embeddings = bert_embeddings(vocab, h, token_types=token_types)
        self.img_embeddings = _box(
            img_linear=nn.Linear(img_dim, h),
            img_layer_norm=nn.LayerNorm(h),
            pos_layer_norm=nn.LayerNorm(h),
            pos_linear=nn.Linear(7, h),
            mask_embedding=nn.Embedding(2, img_dim),
            LayerNorm=nn.LayerNorm(h),
        )
        self.encoder = _box(layer=nn.ModuleList(bert_layer(h, i) for _ in range(layers)))
        self.pooler = _box(dense=nn.Linear(h, h))


class UniterForVisualQuestionAnswering(nn.Module):
    def __init__(self, layers: int = 2, h: int = 16, i: int = 32, answers: int = 5):
        super().__init__()
        self.uniter = UniterModel(layers, h, i)
        self.vqa_output = _vqa_mlp(h, h, answers)


class UniterForImageTextRetrieval(nn.Module):
    def __init__(self, layers: int = 2, h: int = 16, i: int = 32):
        super().__init__()
        self.uniter = UniterModel(layers, h, i)
        self.rank_output = nn.Linear(h, 1)


class UniterForNlvr2Paired(nn.Module):
    """model/nlvr2.py: one linear layer on the pair's two pooled outputs, and a third token
    type (``init_type_embedding``) for the second image."""

    def __init__(self, layers: int = 2, h: int = 16, i: int = 32):
        super().__init__()
        self.uniter = UniterModel(layers, h, i, token_types=3)
        self.nlvr2_output = nn.Linear(2 * h, 2)


class UniterForPretraining(nn.Module):
    """model/pretrain.py: MLM (tied decoder), MRFR (tied to ``img_linear``), MRC and ITM heads."""

    def __init__(self, layers: int = 2, h: int = 16, i: int = 32, vocab: int = 50, labels=7):
        super().__init__()
        self.uniter = UniterModel(layers, h, i, vocab=vocab)
        words = self.uniter.embeddings.word_embeddings.weight
        self.cls = _box(predictions=_PredictionHead(h, vocab, tied=words))
        self.feat_regress = _box(net=nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h)))
        self.feat_regress.bias = nn.Parameter(torch.zeros(8))  # its weight is img_linear's
        self.region_classifier = _box(
            net=nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h), nn.Linear(h, labels))
        )
        self.itm_output = nn.Linear(h, 2)


# -- LXMERT -----------------------------------------------------------------------------------
def _lxmert_x_layer(h: int, i: int) -> nn.Module:
    return _box(
        visual_attention=_box(att=_qkv(h), output=_dense_norm(h, h)),
        lang_self_att=_box(self=_qkv(h), output=_dense_norm(h, h)),
        visn_self_att=_box(self=_qkv(h), output=_dense_norm(h, h)),
        lang_inter=_box(dense=nn.Linear(h, i)),
        lang_output=_dense_norm(i, h),
        visn_inter=_box(dense=nn.Linear(h, i)),
        visn_output=_dense_norm(i, h),
    )


class LXRTModel(nn.Module):
    def __init__(self, l_layers=2, x_layers=1, r_layers=1, h=16, i=32, feat=8, pos=4, vocab=50):
        super().__init__()
        self.embeddings = bert_embeddings(vocab, h)
        self.encoder = _box(
            visn_fc=_box(
                visn_fc=nn.Linear(feat, h),
                visn_layer_norm=nn.LayerNorm(h),
                box_fc=nn.Linear(pos, h),
                box_layer_norm=nn.LayerNorm(h),
            ),
            layer=nn.ModuleList(bert_layer(h, i) for _ in range(l_layers)),
            x_layers=nn.ModuleList(_lxmert_x_layer(h, i) for _ in range(x_layers)),
            r_layers=nn.ModuleList(bert_layer(h, i) for _ in range(r_layers)),
        )
        self.pooler = _box(dense=nn.Linear(h, h))


class VQAModel(nn.Module):
    """lxmert/src/tasks/vqa_model.py: ``lxrt_encoder.model.bert`` and ``logit_fc``.

    ``multi_gpu=True`` is the original ``--multiGPU`` flag: ``LXRTEncoder.multi_gpu()`` wraps
    ``lxrt_encoder.model`` in ``nn.DataParallel``, so names read ``lxrt_encoder.model.module.``.
    """

    def __init__(self, answers: int = 5, multi_gpu: bool = False, **sizes: int):
        super().__init__()
        h = sizes.get("h", 16)
        self.lxrt_encoder = _box(model=_box(bert=LXRTModel(**sizes)))
        if multi_gpu:
            self.lxrt_encoder.model = nn.DataParallel(self.lxrt_encoder.model)
        self.logit_fc = _vqa_mlp(h, h, answers)


class LXRTPretraining(nn.Module):
    """lxmert/src/lxrt/modeling.py ``LXRTPretraining``: the backbone under ``bert.``; MLM
    (``cls.predictions``, decoder tied to the word embeddings) and matching
    (``cls.seq_relationship``), object/attribute/feature prediction (``obj_predict_head``) and
    QA (``answer_head``) heads beside it."""

    def __init__(self, answers: int = 5, objects: int = 6, attrs: int = 7, **sizes: int):
        super().__init__()
        h, feat = sizes.get("h", 16), sizes.get("feat", 8)
        self.bert = LXRTModel(**sizes)
        words = self.bert.embeddings.word_embeddings.weight
        self.cls = _box(
            predictions=_PredictionHead(h, words.shape[0], tied=words),
            seq_relationship=nn.Linear(h, 2),
        )
        self.obj_predict_head = _box(
            transform=_dense_norm(h, h),
            decoder_dict=nn.ModuleDict(
                {
                    "obj": nn.Linear(h, objects),
                    "attr": nn.Linear(h, attrs),
                    "feat": nn.Linear(h, feat),
                }
            ),
        )
        self.answer_head = _box(logit_fc=_vqa_mlp(h, h, answers))


# -- ViLT -------------------------------------------------------------------------------------
def _timm_block(h: int, i: int) -> nn.Module:
    return _box(
        norm1=nn.LayerNorm(h),
        attn=_box(qkv=nn.Linear(h, 3 * h), proj=nn.Linear(h, h)),
        norm2=nn.LayerNorm(h),
        mlp=_box(fc1=nn.Linear(h, i), fc2=nn.Linear(i, h)),
    )


class VisionTransformer(nn.Module):
    def __init__(self, layers: int, h: int, i: int, patch: int, patches: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, h))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, h))
        self.patch_embed = _box(proj=nn.Conv2d(3, h, patch, patch))
        self.blocks = nn.ModuleList(_timm_block(h, i) for _ in range(layers))
        self.norm = nn.LayerNorm(h)


class ViLTransformerSS(nn.Module):
    """vilt/modules/vilt_module.py: heads are present for the tasks the config enables
    (``vqa``, ``nlvr2``, ``itm``, ``mlm``, ``mpp``)."""

    def __init__(
        self,
        layers=2,
        h=16,
        i=32,
        patch=16,
        patches=4,
        vocab=50,
        positions=40,
        heads=("vqa",),
        answers=3,
    ):
        super().__init__()
        self.text_embeddings = bert_embeddings(vocab, h, positions)
        # NLVR2 fine-tuning adds a third token type for the second image.
        self.token_type_embeddings = nn.Embedding(3 if "nlvr2" in heads else 2, h)
        self.transformer = VisionTransformer(layers, h, i, patch, patches)
        self.pooler = _box(dense=nn.Linear(h, h))
        if "vqa" in heads:
            self.vqa_classifier = _vqa_mlp(h, h, answers, norm_first=True)
        if "nlvr2" in heads:
            self.nlvr2_classifier = _vqa_mlp(2 * h, h, 2, norm_first=True)
        if "itm" in heads:
            self.itm_score = _box(fc=nn.Linear(h, 2))
            self.rank_output = nn.Linear(h, 1)
        if "mlm" in heads:  # decoder not tied to the text embeddings in ViLT's MLMHead
            self.mlm_score = _PredictionHead(h, vocab)
        if "mpp" in heads:  # masked patch prediction: 256 bins for each of 3 colour channels
            self.mpp_score = _box(transform=_dense_norm(h, h), decoder=nn.Linear(h, 256 * 3))
