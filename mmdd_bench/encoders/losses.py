"""Soft-label contrastive losses: the student's loss against a target similarity matrix S (LoRS).

``contrastive_loss`` (``heads.py``) trains against the identity: pair i's image matches pair i's text and
nothing else. LoRS learns a similarity S between the synthetic pairs and trains the student against it.
Every loss here takes L2-normalised cosine logits ``exp(scale) * cos(img_i, txt_j)`` (``scale`` is the log
of the inverse temperature, as in ``contrastive_loss``) and a target ``S`` of shape [B, B] for the batch;
``S=None`` means the identity. Definitions (LoRS's ``MultilabelContrastiveLoss``, written from them):

- ``wbce`` (LoRS's default): p = sigmoid(logits); l_ij = -S_ij log(p_ij + 1e-6) - (1 - S_ij) log(1 - p_ij + 1e-6);
  the loss is the mean of l over the positives (S_ij > 0.5, a hard mask that is not differentiated) plus the
  mean over the other entries, halved. When a batch has no negatives (one pair) the mean over the positives
  is the loss;
- ``bce``: the plain mean of the binary cross-entropy between sigmoid(logits) and S (computed from logits,
  so it stays finite where sigmoid saturates);
- ``infonce``: -sum_j S_ij log softmax_j(logits_i), averaged over rows, for both directions (images to
  texts with S, texts to images with S^T), halved. With S = I it is CLIP's InfoNCE;
- ``cwcl``: ``infonce`` with each target row divided by its sum (columns for the texts-to-images side);
- ``kl``: KL(softmax(10 S) || softmax(logits)) per row, ``reduction="mean"`` over all B^2 entries as
  torch's ``KLDivLoss`` does, both directions, halved.

LoRS's code also has an ``MSE`` option whose target space the notes leave unstated; it is not offered.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .heads import DualEncoder, contrastive_loss

LOSS_KINDS = ("wbce", "bce", "infonce", "cwcl", "kl")
_EPS = 1e-6
_KL_SHARPNESS = 10.0


def cosine_logits(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: float) -> torch.Tensor:
    return math.exp(scale) * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def soft_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, target: torch.Tensor | None,
                          kind: str = "infonce", scale: float = DualEncoder.logit_scale) -> torch.Tensor:
    """The ``kind`` loss of a batch's embeddings against ``target`` ([B, B]; None: the identity)."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"soft-label loss must be one of {', '.join(LOSS_KINDS)}, got {kind!r}")
    if target is None and kind == "infonce":
        return contrastive_loss(image_emb, text_emb, scale)  # the same loss, and the same numbers as before
    logits = cosine_logits(image_emb, text_emb, scale)
    if target is None:
        target = torch.eye(logits.shape[0], dtype=logits.dtype, device=logits.device)
    if target.shape != logits.shape:
        raise ValueError(f"target similarity is {tuple(target.shape)}, the batch's logits {tuple(logits.shape)}")
    if kind == "wbce":
        p = torch.sigmoid(logits)
        per_entry = -target * torch.log(p + _EPS) - (1 - target) * torch.log(1 - p + _EPS)
        positive = (target > 0.5).detach()
        terms = [per_entry[mask].mean() for mask in (positive, ~positive) if mask.any()]
        return sum(terms) / len(terms)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "infonce":
        return (_soft_cross_entropy(logits, target) + _soft_cross_entropy(logits.T, target.T)) / 2
    if kind == "cwcl":
        rows = target / target.sum(1, keepdim=True)
        cols = target.T / target.T.sum(1, keepdim=True)
        return (_soft_cross_entropy(logits, rows) + _soft_cross_entropy(logits.T, cols)) / 2
    # kl
    kl = [F.kl_div(F.log_softmax(lg, dim=1), F.softmax(_KL_SHARPNESS * t, dim=1), reduction="sum") / lg.numel()
          for lg, t in ((logits, target), (logits.T, target.T))]
    return (kl[0] + kl[1]) / 2


__all__ = ["LOSS_KINDS", "cosine_logits", "soft_contrastive_loss"]
