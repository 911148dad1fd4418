"""``random``: N real pairs drawn uniformly (seeded): N distinct images, one of each image's captions."""

from __future__ import annotations

import numpy as np

from mmdd_bench.distilled import DistilledSet
from mmdd_bench.method import DistillContext, Method
from mmdd_bench.pairs import random_pairs, real_pairs


class RandomSubset(Method):
    name = "random"
    version = "1"
    default_protocol = "trainable-text"
    description = "uniformly random real pairs (distinct images), seeded"

    def text_kind(self, params) -> str:
        return "captions"

    def distill(self, ctx: DistillContext, params) -> DistilledSet:
        _, pairs = random_pairs(ctx.dataset.train, ctx.size, np.random.default_rng(ctx.seed))
        return real_pairs(ctx, pairs, self.name)
