"""In-memory description of the splits every method and protocol consume."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TrainSplit:
    """One entry per (image, caption) pair, as in the Karpathy train JSON; images are deduplicated."""

    image_paths: list[Path]
    captions: list[str]
    pair_image: np.ndarray  # [n_pairs] index into image_paths
    fingerprint: str

    @property
    def n_pairs(self) -> int:
        return len(self.captions)


@dataclass
class RetrievalSplit:
    """One entry per image with all of its captions (never assume five: COCO has six-caption images)."""

    image_paths: list[Path]
    captions: list[str]
    img2txt: list[list[int]]
    txt2img: np.ndarray
    fingerprint: str


@dataclass
class Dataset:
    name: str
    root: Path
    train: TrainSplit
    val: RetrievalSplit
    test: RetrievalSplit
    default_backbone: str
    hflip: bool = True  # safe only when captions never say left/right
    info: dict = field(default_factory=dict)

    def train_view(self) -> TrainView:
        """What a method may see: the training split and the dataset's name and settings, never val or test."""
        return TrainView(self.name, self.root, self.train, self.default_backbone, self.hflip, self.info)


class SplitAccessError(RuntimeError):
    """A method asked for held-out data. Distillation sees the training split only (the plugin contract)."""


@dataclass
class TrainView:
    """A dataset as a method sees it: ``val`` and ``test`` raise, so a method that reads held-out data
    fails loudly (and fails ``mmdd_bench.testing.check_method``) instead of leaking it into a set."""

    name: str
    root: Path
    train: TrainSplit
    default_backbone: str
    hflip: bool = True
    info: dict = field(default_factory=dict)

    @property
    def val(self) -> RetrievalSplit:
        raise SplitAccessError(f"a method read the val split of {self.name!r}; distillation may use the train split only")

    @property
    def test(self) -> RetrievalSplit:
        raise SplitAccessError(f"a method read the test split of {self.name!r}; distillation may use the train split only")
