"""Sets made of real training pairs: where learned synthetic sets start, and what coresets return.

Shared by every method (``random``, ``herding``, the learned methods' initialisation), so that no method
imports another method's module.
"""

from __future__ import annotations

import numpy as np
import torch

from .data.splits import TrainSplit
from .distilled import DistilledSet
from .method import DistillContext


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


def random_pairs(train: TrainSplit, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``random``'s set: ``size`` distinct images drawn uniformly, and for each one of its captions drawn
    uniformly. Returns (image indices, pair indices)."""
    images = rng.choice(len(train.image_paths), size=size, replace=False)
    by_image = np.argsort(train.pair_image, kind="stable")  # pairs grouped by image, in file order
    counts = np.bincount(train.pair_image, minlength=len(train.image_paths))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pairs = np.asarray([by_image[starts[i] + rng.integers(counts[i])] for i in images], dtype=np.int64)
    return images, pairs


def initial_pairs(train: TrainSplit, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Where learned synthetic sets start: exactly ``random``'s set of the same seed (``random_pairs`` with the
    method's ``numpy`` generator seeded by the cell's seed), so a learned method's gain over random measures
    what its optimisation adds to random's own pairs. Returns (image indices, pair indices)."""
    return random_pairs(train, size, rng)


__all__ = ["initial_pairs", "random_pairs", "real_pairs"]
