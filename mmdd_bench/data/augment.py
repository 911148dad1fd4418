"""Training augmentation of real images, applied to uint8 batches from the image store.

The paper's recipe (RandomResizedCrop(scale 0.5-1, bicubic), horizontal flip, RandAugment(2, 5)) is for
natural photos. The embedded ``shapes`` captions name colours and left/right positions, which flips,
crops and colour operations would contradict, so that dataset trains without augmentation.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from .splits import Dataset


def paper_augment(size: int) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandAugment(num_ops=2, magnitude=5),
    ])


class RealAugment:
    def __init__(self, dataset: Dataset, size: int) -> None:
        self.transform = paper_augment(size) if dataset.hflip else None

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        if self.transform is None:
            return images_uint8
        # Per-sample: each image gets its own crop and ops (torchvision applies one draw per call).
        return torch.stack([self.transform(img) for img in images_uint8])
