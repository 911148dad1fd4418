"""Soft-label student losses (LoRS): WBCE by hand, soft InfoNCE with S = I equal to CLIP's InfoNCE."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmdd_bench.encoders.heads import contrastive_loss
from mmdd_bench.encoders.losses import LOSS_KINDS, soft_contrastive_loss


def _batch(n=5, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


def test_wbce_matches_the_hand_formula():
    img, txt = _batch()
    g = torch.Generator().manual_seed(1)
    target = torch.eye(5, dtype=torch.float64) * 0.8 + 0.3 * torch.rand(5, 5, generator=g, dtype=torch.float64)
    scale = math.log(1 / 0.07)
    got = soft_contrastive_loss(img, txt, target, "wbce", scale)
    # By hand, entry by entry: p = sigmoid(s cos), positives where S > 0.5, mean of each half, halved.
    s = 1 / 0.07
    pos, neg = [], []
    for i in range(5):
        for j in range(5):
            cos = float(F.cosine_similarity(img[i], txt[j], dim=0))
            p = 1 / (1 + math.exp(-s * cos))
            t = float(target[i, j])
            term = -t * math.log(p + 1e-6) - (1 - t) * math.log(1 - p + 1e-6)
            (pos if t > 0.5 else neg).append(term)
    assert pos and neg
    want = 0.5 * (sum(pos) / len(pos) + sum(neg) / len(neg))
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_soft_infonce_with_identity_equals_contrastive_loss():
    img, txt = _batch()
    eye = torch.eye(5, dtype=torch.float64)
    for scale in (0.0, math.log(1 / 0.07)):
        assert soft_contrastive_loss(img, txt, eye, "infonce", scale).item() == pytest.approx(
            contrastive_loss(img, txt, scale).item(), rel=1e-12)
    # No target is the identity (and the very same computation as contrastive_loss).
    assert torch.equal(soft_contrastive_loss(img, txt, None, "infonce"), contrastive_loss(img, txt))
    # cwcl's row-normalised target is the identity too when S = I.
    assert soft_contrastive_loss(img, txt, eye, "cwcl").item() == pytest.approx(contrastive_loss(img, txt).item())


def test_every_loss_is_differentiable_in_the_target_and_rejects_bad_input():
    img, txt = _batch(4, 3)
    for kind in LOSS_KINDS:
        target = (torch.eye(4, dtype=torch.float64) + 0.1).requires_grad_(True)
        loss = soft_contrastive_loss(img, txt, target, kind)
        loss.backward()
        assert torch.isfinite(loss) and target.grad is not None and target.grad.abs().sum() > 0, kind
    with pytest.raises(ValueError, match="one of"):
        soft_contrastive_loss(img, txt, None, "mse")
    with pytest.raises(ValueError, match="target similarity"):
        soft_contrastive_loss(img, txt, torch.eye(3, dtype=torch.float64), "wbce")
    # A batch of one pair has no negatives: WBCE is the positives' mean, not NaN.
    assert torch.isfinite(soft_contrastive_loss(img[:1], txt[:1], None, "wbce"))
