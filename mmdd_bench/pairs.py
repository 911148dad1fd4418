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


def initial_pairs(train: TrainSplit, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Where learned synthetic sets start: ``size`` distinct random images and each one's first caption.
    Returns (image indices, pair indices)."""
    images = rng.choice(len(train.image_paths), size=size, replace=False)
    _, first_pair = np.unique(train.pair_image, return_index=True)
    return images, first_pair[images]


__all__ = ["initial_pairs", "real_pairs"]
