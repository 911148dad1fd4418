"""``random``: N real pairs drawn uniformly (seeded): N distinct images, one of each image's captions."""

from __future__ import annotations

import numpy as np
import torch

from mmdd_bench.distilled import DistilledSet
from mmdd_bench.method import DistillContext, Method


def real_pairs(ctx: DistillContext, pair_indices: np.ndarray, method: str) -> DistilledSet:
    """A coreset of real pairs as a distilled set: test-transform images and raw captions."""
    train = ctx.dataset.train
    return DistilledSet(
        images=ctx.train_images.batch(train.pair_image[pair_indices]),
        text_kind="captions",
        captions=[train.captions[i] for i in pair_indices],
        extras={"source_pairs": torch.as_tensor(pair_indices, dtype=torch.long)},
        meta={"method": method},
    )


def initial_pairs(train, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Where learned synthetic sets start: ``size`` distinct random images and each one's first caption.
    Returns (image indices, pair indices)."""
    images = rng.choice(len(train.image_paths), size=size, replace=False)
    _, first_pair = np.unique(train.pair_image, return_index=True)
    return images, first_pair[images]


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
