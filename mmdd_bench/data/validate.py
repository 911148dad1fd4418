"""Checks of a dataset folder beyond "the JSON parses": what ``mmdd-bench data`` reports, and the cheap
warnings every load gives.

Errors (the dataset cannot be used as it is): zero-byte files, files that are not images, images whose
pixel count exceeds ``MAX_IMAGE_PIXELS`` (a decompression bomb would exhaust memory when decoded).
Warnings (results would be misleading): images shared between train and val/test (leakage), an image
listed twice in a retrieval split, empty captions after normalisation.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .splits import Dataset

# Far above any photograph in Flickr30K or COCO (at most a few megapixels), far below what exhausts memory.
MAX_IMAGE_PIXELS = 64_000_000


@dataclass
class DatasetReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _listing(items: list, limit: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable image (reading the header only, so a bomb is never decoded), or None."""
    try:
        if path.stat().st_size == 0:
            return "zero bytes"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "too many pixels to decode safely"
    except (UnidentifiedImageError, OSError) as exc:
        return f"not a readable image ({type(exc).__name__})"
    if width * height > MAX_IMAGE_PIXELS:
        return f"{width}x{height} pixels, above the {MAX_IMAGE_PIXELS:,} a real photograph needs"
    return None


def structural_warnings(ds: Dataset) -> list[str]:
    """Leakage and annotation problems visible from the JSON alone (cheap: no image is opened)."""
    out = []
    train = set(ds.train.image_paths)
    for name, split in (("val", ds.val), ("test", ds.test)):
        shared = sorted(str(p) for p in train & set(split.image_paths))
        if shared:
            out.append(f"{ds.name}: {len(shared)} {name} images are also train images (results would be inflated): "
                       f"{_listing(shared)}")
        repeated = sorted(str(p) for p, n in Counter(split.image_paths).items() if n > 1)
        if repeated:
            out.append(f"{ds.name}: {len(repeated)} images are listed more than once in {name}: {_listing(repeated)}")
    for name, captions in (("train", ds.train.captions), ("val", ds.val.captions), ("test", ds.test.captions)):
        empty = [i for i, c in enumerate(captions) if not c.strip()]
        if empty:
            out.append(f"{ds.name}: {len(empty)} empty {name} captions after normalisation (entries {_listing(empty)})")
    return out


def validate(ds: Dataset, images: bool = True) -> DatasetReport:
    """Every check; ``images=False`` skips opening the images."""
    report = DatasetReport(warnings=structural_warnings(ds))
    if images:
        paths = list(dict.fromkeys([*ds.train.image_paths, *ds.val.image_paths, *ds.test.image_paths]))
        bad = [(p, why) for p in paths if (why := image_problem(p)) is not None]
        if bad:
            report.errors.append(f"{len(bad)} of {len(paths)} images cannot be used: "
                                 + _listing([f"{p} ({why})" for p, why in bad]))
    return report


__all__ = ["MAX_IMAGE_PIXELS", "DatasetReport", "image_problem", "structural_warnings", "validate"]
