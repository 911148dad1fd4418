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
