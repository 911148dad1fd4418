"""``frozen-text`` (MTT-VL / LoRS): the image encoder and the text projection train; the text encoder is
frozen, so text enters as sentence features computed once by the pretrained encoder.

A set that carries a learned similarity S or a soft-label loss (LoRS, TESLA-VL) trains its students with
that loss against ``S[batch][:, batch]`` (the identity when it carries no S), as LoRS's evaluation does;
``eval.use_learned_similarity=false`` trains them with plain InfoNCE instead. Other sets train as before."""

from __future__ import annotations

import torch

from ..data.images import ImageStore
from ..data.splits import Dataset, RetrievalSplit
from ..distilled import DistilledSet, similarity_of
from ..encoders.backbone import Backbone, encode_captions
from ..encoders.heads import DualEncoder, head
from ..encoders.losses import soft_contrastive_loss
from ..features import split_features, train_features
from .base import EvalParams, Protocol, StudentLoss, TextBatches


@torch.no_grad()
def sentence_features(distilled: DistilledSet, backbone: Backbone, device: torch.device,
                      dataset: Dataset | None = None, cache_dir=None) -> torch.Tensor:
    """The distilled text as features of the frozen pretrained text encoder (for a reference set, the
    training split's caption features, cached)."""
    if distilled.reference is not None:
        assert dataset is not None, "a reference set's text comes from its dataset"
        store = ImageStore(dataset.train.image_paths, backbone.image_size, cache_dir, dataset.train.fingerprint,
                           backbone.mean, backbone.std)
        return train_features(dataset.train, store, backbone, device, cache_dir)[1].to(device)
    encoder = backbone.text_encoder.to(device).eval()
    if distilled.text_kind == "sentence_embeddings":
        return distilled.text_embeddings.to(device)
    if distilled.text_kind == "token_embeddings":
        return encoder.encode_embeddings(distilled.text_embeddings.to(device), distilled.attention_mask.to(device))
    return encode_captions(encoder, backbone, distilled.captions, device)


class FrozenTextProtocol(Protocol):
    name = "frozen-text"
    # 2: students' head dropout from each student's own generator (the same masks one by one or together).
    version = "2"
    accepts = ("captions", "sentence_embeddings", "token_embeddings")
    text_trainable = False
    image_head = False
    description = "fresh pretrained image encoder + text projection trainable, text encoder frozen (MTT-VL, LoRS)"

    def student_text(self, distilled: DistilledSet, dataset: Dataset, backbone: Backbone, device: torch.device,
                     cache_dir) -> tuple[TextBatches, torch.Tensor]:
        feats = sentence_features(distilled, backbone, device, dataset, cache_dir)
        return (lambda m, idx, keep=None: head(m.text_head, feats[idx], keep)), feats

    def test_text_features(self, model: DualEncoder, split: RetrievalSplit, backbone: Backbone,
                           device: torch.device, cache: dict) -> torch.Tensor:
        key = ("frozen-sentence", split.fingerprint)
        if key not in cache:  # the frozen encoder gives the same features to every student (and every run)
            cache[key] = split_features(split, backbone, device, cache["cache_dir"], "text").to(device)
        with torch.no_grad():
            return model.text_head(cache[key])

    def student_loss(self, distilled: DistilledSet, params: EvalParams,
                     device: torch.device) -> tuple[StudentLoss | None, list[str]]:
        own_loss = distilled.meta.get("student_loss", "")
        learned = params.use_learned_similarity and (distilled.has_similarity or bool(own_loss))
        kind = params.student_loss or (own_loss if learned else "") or "infonce"
        if not learned and kind == "infonce":
            note = ["students trained with plain InfoNCE, not the set's learned similarity "
                    "(eval.use_learned_similarity=false)"] if distilled.has_similarity or own_loss else []
            return None, note
        sim = {k: v.to(device) for k, v in distilled.similarity_extras().items()} if learned else {}

        def loss(g_img: torch.Tensor, g_txt: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return soft_contrastive_loss(g_img, g_txt, similarity_of(sim, idx), kind)

        desc = distilled.meta.get("similarity", {})
        what = (f"the set's learned similarity ({desc.get('kind', 'similarity')}"
                + (f", rank {desc['rank']}" if "rank" in desc else "") + ")") if sim else "identity targets"
        return loss, [f"students trained with the {kind} loss against {what}"]

    def learning_rates(self, distilled: DistilledSet, backbone: Backbone, params: EvalParams) -> tuple[dict[str, float], list[str]]:
        lrs, notes = super().learning_rates(distilled, backbone, params)
        if params.use_learned_lrs and distilled.has_learned_lrs:
            lrs = {"encoder": float(distilled.extras["lr_image"]), "projection": float(distilled.extras["lr_text"])}
            notes.append("used the learned step sizes carried by the distilled set: the image lr for the encoder, the text lr "
                         "for the text projection (LoRS's evaluation)")
        return lrs, notes
