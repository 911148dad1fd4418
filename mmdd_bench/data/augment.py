"""Training augmentation of real images, applied to uint8 batches from the image store.

The paper's recipe (RandomResizedCrop(scale 0.5-1, bicubic), horizontal flip, RandAugment(2, 5)) is for
natural photos. The embedded ``shapes`` captions name colours and left/right positions, which flips,
crops and colour operations would contradict, so that dataset trains without augmentation.

torchvision's transforms draw one set of parameters per call, so applying them per image means a Python
loop over the batch on the hottest path of distillation and expert training. ``BatchAugment`` draws the
same distributions for every image at once instead:

- crop and flip: torchvision's ``RandomResizedCrop.get_params`` rule (10 tries of area and log-ratio, then
  the centre-crop fallback), vectorised; then each image's crop is resized with PIL's bicubic kernel (what
  torchvision's antialiased resize computes) as two batched matrix products, with the flip folded into
  the column weights. Values equal torchvision's float path; its uint8 path rounds between its two passes
  (a mean difference of about 0.2 grey levels).
- RandAugment(2, 5): per round, each image draws one of torchvision's 14 operations and a sign; images
  that drew the same (operation, sign) go through one batched ``torchvision.transforms.v2.functional``
  call with torchvision's magnitudes. So at most 28 calls per round, whatever the batch size.

All random draws use the global torch generator on the CPU, so a seeded caller gets the same images on
any device, and the work itself runs on whatever device the batch is on.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from .splits import Dataset

# Part of a result's identity whenever a dataset is augmented: bump when the draws or the ops change.
AUGMENT_ID = "paper-batched-1"

CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
RANDAUG_OPS = 2
RANDAUG_MAGNITUDE = 5
RANDAUG_BINS = 31


def _bin(values: torch.Tensor) -> float:
    return float(values[RANDAUG_MAGNITUDE])


def randaugment_ops(height: int, width: int) -> list[tuple[str, float | None, bool]]:
    """(name, magnitude at bin 5 of 31, signed) for torchvision's RandAugment space, in its order."""
    lin = torch.linspace
    return [
        ("Identity", None, False),
        ("ShearX", _bin(lin(0.0, 0.3, RANDAUG_BINS)), True),
        ("ShearY", _bin(lin(0.0, 0.3, RANDAUG_BINS)), True),
        ("TranslateX", _bin(lin(0.0, 150.0 / 331.0 * width, RANDAUG_BINS)), True),
        ("TranslateY", _bin(lin(0.0, 150.0 / 331.0 * height, RANDAUG_BINS)), True),
        ("Rotate", _bin(lin(0.0, 30.0, RANDAUG_BINS)), True),
        ("Brightness", _bin(lin(0.0, 0.9, RANDAUG_BINS)), True),
        ("Color", _bin(lin(0.0, 0.9, RANDAUG_BINS)), True),
        ("Contrast", _bin(lin(0.0, 0.9, RANDAUG_BINS)), True),
        ("Sharpness", _bin(lin(0.0, 0.9, RANDAUG_BINS)), True),
        ("Posterize", _bin((8 - (torch.arange(RANDAUG_BINS) / ((RANDAUG_BINS - 1) / 4))).round().int()), False),
        ("Solarize", _bin(lin(1.0, 0.0, RANDAUG_BINS)), False),
        ("AutoContrast", None, False),
        ("Equalize", None, False),
    ]


def apply_op(images: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """One RandAugment operation on a uint8 batch, as torchvision applies it (nearest, fill 0)."""
    nearest = InterpolationMode.NEAREST
    if name == "Identity":
        return images
    if name in ("ShearX", "ShearY"):
        shear = math.degrees(math.atan(magnitude))
        return tvf.affine(images, angle=0.0, translate=[0, 0], scale=1.0,
                          shear=[shear, 0.0] if name == "ShearX" else [0.0, shear],
                          interpolation=nearest, fill=None, center=[0, 0])
    if name in ("TranslateX", "TranslateY"):
        shift = int(magnitude)
        return tvf.affine(images, angle=0.0, translate=[shift, 0] if name == "TranslateX" else [0, shift],
                          scale=1.0, shear=[0.0, 0.0], interpolation=nearest, fill=None)
    if name == "Rotate":
        return tvf.rotate(images, angle=magnitude, interpolation=nearest, fill=None)
    if name == "Brightness":
        return tvf.adjust_brightness(images, brightness_factor=1.0 + magnitude)
    if name == "Color":
        return tvf.adjust_saturation(images, saturation_factor=1.0 + magnitude)
    if name == "Contrast":
        return tvf.adjust_contrast(images, contrast_factor=1.0 + magnitude)
    if name == "Sharpness":
        return tvf.adjust_sharpness(images, sharpness_factor=1.0 + magnitude)
    if name == "Posterize":
        return tvf.posterize(images, bits=int(magnitude))
    if name == "Solarize":
        return tvf.solarize(images, threshold=255.0 * magnitude)
    if name == "AutoContrast":
        return tvf.autocontrast(images)
    if name == "Equalize":
        return tvf.equalize(images)
    raise ValueError(f"unknown RandAugment operation {name!r}")


def crop_boxes(n: int, height: int, width: int, tries: int = 10) -> torch.Tensor:
    """[n, 4] float (top, left, h, w): torchvision's RandomResizedCrop.get_params, for n images at once."""
    area = height * width
    target_area = area * torch.empty(n, tries).uniform_(*CROP_SCALE)
    log_ratio = torch.log(torch.tensor(CROP_RATIO))
    aspect = torch.exp(torch.empty(n, tries).uniform_(float(log_ratio[0]), float(log_ratio[1])))
    w = torch.sqrt(target_area * aspect).round()
    h = torch.sqrt(target_area / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # torchvision draws the offset with randint(0, H - h + 1); a uniform fraction of that range is the same.
    frac_top, frac_left = torch.rand(n), torch.rand(n)
    first = torch.argmax(ok.int(), dim=1)  # the first accepted try
    found = ok.any(dim=1)
    w_pick = w.gather(1, first[:, None])[:, 0]
    h_pick = h.gather(1, first[:, None])[:, 0]
    # Fallback when all tries fall outside the image (rare): centre crop clamped to the ratio range.
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        fw, fh = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        fh, fw = height, round(height * CROP_RATIO[1])
    else:
        fw, fh = width, height
    w_pick = torch.where(found, w_pick, torch.full_like(w_pick, fw))
    h_pick = torch.where(found, h_pick, torch.full_like(h_pick, fh))
    top = torch.where(found, torch.floor(frac_top * (height - h_pick + 1)), torch.full_like(h_pick, (height - fh) // 2))
    left = torch.where(found, torch.floor(frac_left * (width - w_pick + 1)), torch.full_like(w_pick, (width - fw) // 2))
    return torch.stack([top, left, h_pick, w_pick], dim=1)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """PIL's bicubic kernel (a = -0.5), which torchvision's antialiased resize uses too."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """[n, out_size, in_size] rows that resample each image's [start, start + length) window to out_size.

    PIL's rule, as in torchvision's antialiased resize: taps outside the window are dropped and the rest
    renormalised, and the kernel widens by the scale when shrinking. Only the few taps under the kernel
    are computed, then scattered into the dense rows.
    """
    n, dev = len(start), start.device
    scale = (length / out_size)[:, None, None]
    stretch = scale.clamp(min=1.0)
    support = 2.0 * stretch
    centres = start[:, None, None] + (torch.arange(out_size, device=dev)[None, :, None] + 0.5) * scale
    n_taps = int(math.ceil(2 * float(support.max()))) + 2
    taps = torch.floor(centres - support - 0.5) + torch.arange(n_taps, device=dev)[None, None, :]
    inside = (taps >= start[:, None, None]) & (taps < (start + length)[:, None, None])
    weights = _cubic((taps + 0.5 - centres) / stretch) * inside
    weights = weights / weights.sum(dim=-1, keepdim=True)
    index = taps.clamp(0, in_size - 1).long()
    return torch.zeros(n, out_size, in_size, device=dev).scatter_add_(2, index, weights)


def resized_crop_flip(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of each image's box to size x size, mirrored where ``flip``: two batched matmuls."""
    n, channels, height, width = images.shape
    boxes, flip = boxes.to(images.device, torch.float32), flip.to(images.device)
    top, left, h, w = boxes.unbind(1)
    rows = resize_weights(top, h, height, size)  # [n, size, H]
    cols = resize_weights(left, w, width, size)  # [n, size, W]
    cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    # Rows first on [n, H, C*W], then columns on [n, size*C, W]: two large bmm calls.
    stacked = images.permute(0, 2, 1, 3).reshape(n, height, channels * width).float()
    out = torch.bmm(rows, stacked).view(n, size * channels, width)
    out = torch.bmm(out, cols.transpose(1, 2)).round_().clamp_(0, 255).to(torch.uint8)
    return out.view(n, size, channels, size).permute(0, 2, 1, 3).contiguous()


class BatchAugment:
    """The paper's train augmentation for a whole uint8 batch [B, 3, H, W] -> [B, 3, size, size]."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ops = randaugment_ops(size, size)  # after the crop every image is size x size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        out = resized_crop_flip(images, crop_boxes(n, height, width), torch.rand(n) < 0.5, self.size)
        for _ in range(RANDAUG_OPS):
            choice = torch.randint(len(self.ops), (n,))
            negative = torch.rand(n) <= 0.5
            for op_index in choice.unique().tolist():
                name, magnitude, signed = self.ops[op_index]
                if name == "Identity":
                    continue
                for sign in ((True, False) if signed else (None,)):
                    picked = choice == op_index
                    if sign is not None:
                        picked &= negative == sign
                    rows = picked.nonzero()[:, 0].to(out.device)
                    if len(rows) == 0:
                        continue
                    value = 0.0 if magnitude is None else (-magnitude if sign else magnitude)
                    out[rows] = apply_op(out[rows], name, value)
        return out


class RealAugment:
    """What a method applies to real uint8 batches of ``dataset``: the paper's augmentation, or nothing."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.transform = BatchAugment(size) if dataset.hflip else None

    @property
    def identity(self) -> str | None:
        """What enters a result's identity: the augmentation version, or None when there is none."""
        return AUGMENT_ID if self.transform is not None else None

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return images_uint8 if self.transform is None else self.transform(images_uint8)
