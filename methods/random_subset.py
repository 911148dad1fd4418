"""``random``: N real pairs drawn uniformly (seeded): N distinct images, one of each image's captions."""

from __future__ import annotations

import numpy as np

from mmdd_bench.distilled import DistilledSet
from mmdd_bench.method import DistillContext, Method
from mmdd_bench.pairs import real_pairs


class RandomSubset(Method):
    name = "random"
    version = "1"
    default_protocol = "trainable-text"
    description = "uniformly random real pairs (distinct images), seeded"

    def text_kind(self, params) -> str:
        return "captions"

    def distill(self, ctx: DistillContext, params) -> DistilledSet:
        train = ctx.dataset.train
        rng = np.random.default_rng(ctx.seed)
        images = rng.choice(len(train.image_paths), size=ctx.size, replace=False)
        by_image = np.argsort(train.pair_image, kind="stable")  # pairs grouped by image, in file order
        counts = np.bincount(train.pair_image, minlength=len(train.image_paths))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pairs = np.asarray([by_image[starts[i] + rng.integers(counts[i])] for i in images])
        return real_pairs(ctx, pairs, self.name)
