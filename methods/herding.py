"""``herding``: greedily pick N real pairs whose running mean best matches the mean of all pairs.

Feature space: the L2-normalised pretrained image feature concatenated with the L2-normalised
pretrained text feature (CLS) of each pair, from the backbone's frozen encoders. Pairs are picked
without replacement; two pairs may share an image when their captions differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmdd_bench.distilled import DistilledSet
from mmdd_bench.features import joint_features
from mmdd_bench.method import DistillContext, Method
from mmdd_bench.pairs import real_pairs


def herd(features: torch.Tensor, n: int) -> list[int]:
    """Greedy mean matching (Welling 2009): at step t pick argmin_i ||t*mu - (s + f_i)||."""
    mu = features.mean(0)
    total = torch.zeros_like(mu)
    chosen: list[int] = []
    available = torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    for t in range(1, n + 1):
        dist = ((t * mu - total)[None, :] - features).pow(2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total += features[i]
    return chosen


@dataclass
class HerdingParams:
    image_weight: float = 1.0  # relative weight of the image half of the joint feature


class Herding(Method):
    name = "herding"
    version = "1"
    default_protocol = "trainable-text"
    description = "greedy mean matching in the joint pretrained image+text feature space"
    deterministic = True  # greedy on fixed features: every seed selects the same pairs
    Params = HerdingParams

    def text_kind(self, params: HerdingParams) -> str:
        return "captions"

    def distill(self, ctx: DistillContext, params: HerdingParams) -> DistilledSet:
        joint = joint_features(ctx.dataset.train, ctx.train_images, ctx.backbone, ctx.device, ctx.cache_dir,
                               params.image_weight)
        chosen = herd(joint.to(ctx.device), ctx.size)
        return real_pairs(ctx, torch.as_tensor(chosen).numpy(), self.name)
