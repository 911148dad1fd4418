"""``k-center``: greedy k-center (farthest-first traversal) over the real pairs, the coreset baseline of
MTT-VL's and LoRS's tables.

Neither paper's code contains it; we adopt the classic definition (Gonzalez 1985; DeepCore's
``kcentergreedy``, written from the definition): the first centre is a seeded random pair, then each step
adds the pair farthest (Euclidean) from its nearest chosen centre. This 2-approximates the minimum
covering radius, and the radius (the largest distance of any pair to its nearest centre) never grows.

Feature space: ``herding``'s, the L2-normalised pretrained image feature (times ``image_weight``)
concatenated with the L2-normalised pretrained text feature of each pair, from the backbone's frozen
encoders. Pairs, not images, are the points: two chosen pairs may share an image. ``init="mean"`` starts
from the pair nearest the mean instead of a random one (then the set does not depend on the seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmdd_bench.distilled import DistilledSet
from mmdd_bench.errors import UsageError
from mmdd_bench.features import joint_features
from mmdd_bench.method import DistillContext, Method
from mmdd_bench.pairs import real_pairs

INITS = ("random", "mean")
CHUNK_ROWS = 65536  # distances are computed this many points at a time (COCO has 566k pairs)


def _sq_distances(features: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of every row to ``centre``, row by row (no |a|^2 - 2ab + |b|^2
    cancellation, so ties and the brute-force reference agree exactly)."""
    return torch.cat([(chunk - centre).pow(2).sum(1) for chunk in features.split(CHUNK_ROWS)])


def k_center(features: torch.Tensor, n: int, first: int) -> tuple[list[int], list[float]]:
    """Farthest-first traversal from ``first``: (chosen indices, covering radius after each pick)."""
    if not 1 <= n <= features.shape[0]:
        raise UsageError(f"k-center: cannot choose {n} of {features.shape[0]} pairs")
    chosen = [first]
    nearest = _sq_distances(features, features[first])
    radius = [float(nearest.max().sqrt())]
    for _ in range(n - 1):
        i = int(nearest.argmax())  # the first of equally far points
        chosen.append(i)
        nearest = torch.minimum(nearest, _sq_distances(features, features[i]))
        radius.append(float(nearest.max().sqrt()))
    return chosen, radius


@dataclass
class KCenterParams:
    image_weight: float = 1.0  # relative weight of the image half of the joint feature
    init: str = "random"  # first centre: a seeded random pair, or the pair nearest the mean

    def validate(self) -> None:
        if self.init not in INITS:
            raise UsageError(f"k-center.init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.image_weight < 0:
            raise UsageError(f"k-center.image_weight must be >= 0, got {self.image_weight}")


class KCenter(Method):
    name = "k-center"
    version = "1"
    default_protocol = "trainable-text"
    description = "greedy k-center (farthest-first) in the joint pretrained image+text feature space"
    Params = KCenterParams

    def text_kind(self, params: KCenterParams) -> str:
        return "captions"

    def distill(self, ctx: DistillContext, params: KCenterParams) -> DistilledSet:
        params.validate()
        feats = joint_features(ctx.dataset.train, ctx.train_images, ctx.backbone, ctx.device, ctx.cache_dir,
                               params.image_weight).to(ctx.device)
        if params.init == "mean":
            first = int(_sq_distances(feats, feats.mean(0)).argmin())
        else:
            first = int(torch.randint(feats.shape[0], (1,), generator=torch.Generator().manual_seed(ctx.seed)))
        chosen, radius = k_center(feats, ctx.size, first)
        distilled = real_pairs(ctx, torch.as_tensor(chosen).numpy(), self.name)
        distilled.meta["covering_radius"] = {"first": round(radius[0], 6), "final": round(radius[-1], 6)}
        return distilled


__all__ = ["KCenter", "KCenterParams", "k_center"]
