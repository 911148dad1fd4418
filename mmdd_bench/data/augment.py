"""The papers' train augmentation of real images, defined once: its random draws and its per-image reference.

MTT-VL, LoRS and CovMatch's peers train on real images with, in this order:

1. RandomResizedCrop(size, scale 0.5-1, ratio 3/4-4/3, bicubic) on the decoded original image;
2. a horizontal flip with probability 0.5;
3. BLIP's RandomAugment(2, 5): two operations drawn uniformly, with replacement, from ``OPS`` (10 of them);
   each drawn operation is applied with probability 0.5, at magnitude level 5 of 10:
   Brightness and Sharpness enhance by level/10 * 1.8 + 0.1 = 1.0 (so they change nothing), shear by
   +-level/10 * 0.3 = 0.15, translate by +-level/10 * 10 = 5 px, rotate by +-level/10 * 30 = 15 degrees,
   each with a random sign; pixels the geometric operations uncover are grey (128, 128, 128);
4. ToTensor and the backbone's normalisation (``ImageStore.normalize``).

Test and val images are only resized to size x size (``ImageStore``), never augmented. The embedded
``shapes`` datasets are never augmented either: their captions name colours and left/right positions,
which flips, crops and shears would contradict.

What the definition leaves open, and what we chose (both paths do exactly this):

- crop boxes follow RandomResizedCrop's rule: 10 tries of (area fraction, log aspect ratio), the first box
  that fits is taken at a uniformly drawn offset, else the centre crop clamped to the ratio range; the box
  is cropped first and then resized with PIL's bicubic filter (antialiased when shrinking), horizontally
  then vertically, so pixels outside the box never contribute;
- the geometric operations are affine maps sampled with PIL's *bilinear* filter (values truncated to
  uint8, as PIL does) and hard edges: an output pixel whose source point falls outside the image is grey;
- shear is about the top-left corner (x_src = x + s * y for ShearX, y_src = y + s * x for ShearY), rotation
  about the image centre, counter-clockwise for a positive angle (PIL's ``rotate`` convention);
  translation shifts by whole pixels (x_src = x + t), so it copies pixels without interpolation;
- AutoContrast (stretch [min, max] to [0, 255], truncated) and Equalize (PIL's histogram equalisation)
  work per colour channel, as PIL's ``ImageOps`` do on RGB images.

Every random choice is drawn by ``draw_augmentations`` from the caller's ``torch.Generator`` in the main
process, for a whole batch at once, *before* any image is touched. Workers only apply the draws they are
handed, so the result does not depend on how many workers there are, and the batched path
(``augment_batched.BatchAugment``) reproduces the same images from the same draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from .splits import Dataset

# Part of a result's identity whenever a dataset is augmented (run ids, expert-cache keys): bump it when the
# draws, the operations or the image source change. 2: BLIP's RandomAugment(2, 5) on crops of the originals.
AUGMENT_ID = "paper-blip-2"

CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
FLIP_P = 0.5
ROUNDS = 2  # RandomAugment(N=2, M=5)
LEVEL = 5
MAX_LEVEL = 10
APPLY_P = 0.5
FILL = (128, 128, 128)
OPS = ("Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize",
       "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

ENHANCE_FACTOR = LEVEL / MAX_LEVEL * 1.8 + 0.1  # 1.0 exactly: Brightness and Sharpness are no-ops
SHEAR = LEVEL / MAX_LEVEL * 0.3  # 0.15
TRANSLATE_PX = LEVEL / MAX_LEVEL * 10.0  # 5 px
ROTATE_DEG = LEVEL / MAX_LEVEL * 30.0  # 15 degrees
# Operations that leave an image unchanged at this level (the batched path skips them).
NO_OPS = ("Identity",) + (("Brightness", "Sharpness") if ENHANCE_FACTOR == 1.0 else ())


def augment_identity(dataset: Dataset) -> str | None:
    """What enters a result's identity: the augmentation version, or None for a dataset never augmented."""
    return AUGMENT_ID if dataset.hflip else None


@dataclass(frozen=True)
class AugmentDraws:
    """Every random choice for n images: what a worker or the batched path needs to augment them."""

    boxes: torch.Tensor  # [n, 4] int64 (top, left, height, width) in the source image
    flip: torch.Tensor  # [n] bool
    ops: torch.Tensor  # [n, ROUNDS] int64, indices into OPS
    applied: torch.Tensor  # [n, ROUNDS] bool: the drawn operation is applied (probability APPLY_P)
    negative: torch.Tensor  # [n, ROUNDS] bool: the sign of shear, translation and rotation

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __getitem__(self, index: int | slice | torch.Tensor) -> AugmentDraws:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return AugmentDraws(self.boxes[index], self.flip[index], self.ops[index], self.applied[index],
                            self.negative[index])


def crop_boxes(heights: torch.Tensor, widths: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """[n, 4] int64 (top, left, h, w): RandomResizedCrop's box rule for n images of their own sizes at once."""
    height, width = heights.double(), widths.double()
    n = len(height)
    area = (height * width)[:, None]
    target = area * torch.empty(n, CROP_TRIES, dtype=torch.float64).uniform_(*CROP_SCALE, generator=generator)
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    aspect = torch.exp(torch.empty(n, CROP_TRIES, dtype=torch.float64).uniform_(log_lo, log_hi, generator=generator))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    found = fits.any(dim=1)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first box that fits
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    offsets = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.floor(offsets[:, 0] * (height - h + 1))
    left = torch.floor(offsets[:, 1] * (width - w + 1))
    # No try fits (rare): the centre crop, clamped to the ratio range.
    ratio = width / height
    fallback_w = torch.where(ratio > CROP_RATIO[1], torch.round(height * CROP_RATIO[1]), width)
    fallback_h = torch.where(ratio < CROP_RATIO[0], torch.round(width / CROP_RATIO[0]), height)
    h, w = torch.where(found, h, fallback_h), torch.where(found, w, fallback_w)
    top = torch.where(found, top, torch.div(height - fallback_h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - fallback_w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).long()


def draw_augmentations(heights: torch.Tensor | list[int], widths: torch.Tensor | list[int],
                       generator: torch.Generator | None) -> AugmentDraws:
    """All random choices for images of the given sizes, from ``generator`` (CPU), in a fixed order."""
    heights, widths = torch.as_tensor(heights), torch.as_tensor(widths)
    n = len(heights)
    boxes = crop_boxes(heights, widths, generator)
    flip = torch.rand(n, dtype=torch.float64, generator=generator) < FLIP_P
    ops = torch.randint(len(OPS), (n, ROUNDS), generator=generator)
    applied = torch.rand(n, ROUNDS, dtype=torch.float64, generator=generator) < APPLY_P
    negative = torch.rand(n, ROUNDS, dtype=torch.float64, generator=generator) < 0.5
    return AugmentDraws(boxes, flip, ops, applied, negative)


def inverse_affine(name: str, negative: bool, height: int, width: int) -> tuple[float, ...]:
    """(a, b, c, d, e, f): the output point (x, y) samples the input at (a x + b y + c, d x + e y + f),
    in continuous pixel coordinates (pixel centres at i + 0.5), as PIL's AFFINE transform takes it."""
    sign = -1.0 if negative else 1.0
    if name == "ShearX":
        return (1.0, sign * SHEAR, 0.0, 0.0, 1.0, 0.0)
    if name == "ShearY":
        return (1.0, 0.0, 0.0, sign * SHEAR, 1.0, 0.0)
    if name == "TranslateX":
        return (1.0, 0.0, sign * TRANSLATE_PX, 0.0, 1.0, 0.0)
    if name == "TranslateY":
        return (1.0, 0.0, 0.0, 0.0, 1.0, sign * TRANSLATE_PX)
    if name == "Rotate":
        # Counter-clockwise on screen (y points down) by theta about the centre (cx, cy): the source of an
        # output point is the output point rotated back, clockwise.
        theta = math.radians(sign * ROTATE_DEG)
        cos, sin = math.cos(theta), math.sin(theta)
        cx, cy = width / 2, height / 2
        return (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)
    raise ValueError(f"{name!r} is not a geometric operation of {GEOMETRIC}")


def reference_op(image: Image.Image, name: str, negative: bool) -> Image.Image:
    """One RandomAugment operation on one RGB image, with PIL (the parity oracle for the batched path)."""
    if name == "Identity":
        return image
    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name == "Equalize":
        return ImageOps.equalize(image)
    if name == "Brightness":
        return ImageEnhance.Brightness(image).enhance(ENHANCE_FACTOR)
    if name == "Sharpness":
        return ImageEnhance.Sharpness(image).enhance(ENHANCE_FACTOR)
    width, height = image.size
    return image.transform(image.size, Image.Transform.AFFINE, inverse_affine(name, negative, height, width),
                           resample=Image.Resampling.BILINEAR, fillcolor=FILL)


def reference_resized_crop(image: Image.Image, box: list[int], size: int, flip: bool) -> Image.Image:
    """The crop, resized to size x size with PIL's bicubic filter, then mirrored if ``flip``.

    The resize is two one-axis PIL resizes, horizontal then vertical (uint8 in between): the order every
    Pillow before 13 takes for a two-axis resize; Pillow 13 sometimes takes the vertical pass first, which
    differs by rounding only (up to a few grey levels), so we pin the order rather than inherit it.
    """
    top, left, h, w = box
    crop = image.crop((left, top, left + w, top + h))
    out = crop.resize((size, h), Image.Resampling.BICUBIC).resize((size, size), Image.Resampling.BICUBIC)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out


def augment_image(image: np.ndarray, draws: AugmentDraws, size: int) -> np.ndarray:
    """The reference: one uint8 [H, W, 3] image and its draws (length 1) -> uint8 [size, size, 3]."""
    out = reference_resized_crop(Image.fromarray(image), draws.boxes[0].tolist(), size, bool(draws.flip[0]))
    for r in range(ROUNDS):
        if draws.applied[0, r]:
            out = reference_op(out, OPS[int(draws.ops[0, r])], bool(draws.negative[0, r]))
    return np.asarray(out)


def __getattr__(name: str) -> object:
    """``BatchAugment`` lives in ``augment_batched`` (which imports this module); still importable from here
    for ``benchmarks/``, outside this module's users, until they import it from there."""
    if name == "BatchAugment":
        from .augment_batched import BatchAugment

        return BatchAugment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AUGMENT_ID", "OPS", "AugmentDraws", "augment_identity", "augment_image", "crop_boxes",
           "draw_augmentations", "inverse_affine", "reference_op", "reference_resized_crop"]
