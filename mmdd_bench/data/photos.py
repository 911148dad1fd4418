"""Flickr30K-format folders of photo-like JPEGs at Flickr's sizes, generated deterministically.

The real-data path (JPEG decode, the aspect-preserving originals store, the papers' augmentation on crops
of the originals) costs differently from the embedded ``shapes`` (32 px PNGs), so benchmarks of that path
(``benchmarks/end_to_end.py --preset gpu``) and the tests run on these where Flickr30K itself is not at
hand. The layout is the loader's (``annotations/flickr30k_{split}.json`` in BLIP's Karpathy format, images
under ``flickr30k-images/``); train images carry five captions each, as Flickr30K's do.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# (width, height) of most Flickr30K photos: landscape, portrait, 3:2 both ways.
FLICKR_SIZES = [(500, 375), (375, 500), (500, 333), (333, 500)]
CAPTIONS_PER_IMAGE = 5
_SUBJECTS = ["a dog", "two children", "a man in a red shirt", "a woman", "a group of people", "a cyclist"]
_ACTIONS = ["runs across", "sits on", "walks along", "plays near", "stands beside", "looks at"]
_PLACES = ["the beach", "a wooden bench", "a busy street", "the grass", "a river", "a snowy hill"]


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """uint8 [height, width, 3] with photo-like content: smooth colour fields, a few discs, sensor noise (it
    compresses like a photo, which white noise does not)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.stack([120 + 90 * np.sin(x / rng.uniform(20, 60) + rng.uniform(0, 6)),
                      120 + 80 * np.cos(y / rng.uniform(20, 60) + rng.uniform(0, 6)),
                      60 + 140 * (x + y) / (width + height)], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 90)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def _caption(rng: np.random.Generator) -> str:
    return f"{_SUBJECTS[rng.integers(len(_SUBJECTS))]} {_ACTIONS[rng.integers(len(_ACTIONS))]} " \
           f"{_PLACES[rng.integers(len(_PLACES))]}."


def write_flickr_like(root: Path, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Path:
    """``root/flickr30k`` with ``n_train`` / ``n_val`` / ``n_test`` images of Flickr's sizes and five captions
    each; made once (an existing folder is reused) and atomically (a folder that exists is complete)."""
    target = Path(root) / "flickr30k"
    if (target / "annotations" / "flickr30k_test.json").is_file():
        return target
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".flickr-like-", dir=root))
    try:
        (tmp / "annotations").mkdir()
        (tmp / "flickr30k-images").mkdir()
        rng = np.random.default_rng(seed)
        counter = iter(range(n_train + n_val + n_test))

        def image(split: str, i: int) -> str:
            k = next(counter)
            width, height = FLICKR_SIZES[k % len(FLICKR_SIZES)]
            name = f"flickr30k-images/{split}{i}.jpg"
            Image.fromarray(photo(width, height, seed * 1_000_003 + k)).save(tmp / name, quality=90)
            return name

        train = [{"image": path, "caption": _caption(rng), "image_id": f"train{i}"}
                 for i in range(n_train) for path in [image("train", i)] for _ in range(CAPTIONS_PER_IMAGE)]
        splits = {"train": train}
        for split, n in (("val", n_val), ("test", n_test)):
            splits[split] = [{"image": image(split, i), "caption": [_caption(rng) for _ in range(CAPTIONS_PER_IMAGE)]}
                             for i in range(n)]
        for split, entries in splits.items():
            (tmp / "annotations" / f"flickr30k_{split}.json").write_text(json.dumps(entries))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


__all__ = ["CAPTIONS_PER_IMAGE", "FLICKR_SIZES", "photo", "write_flickr_like"]
