"""The papers' augmentation for a whole uint8 batch at once, on the batch's device (what a GPU wants).

Same draws (``augment.draw_augmentations``), same images as the per-image PIL reference
(``augment.augment_image``): each step reproduces PIL's arithmetic, not only its definition, so the two
paths agree bit for bit (checked op by op and end to end in ``tests/test_augment.py``):

- the bicubic crop-resize is PIL's two passes (horizontal, then vertical), each with PIL's filter taps,
  its 22-bit fixed-point weights, its int32 sums and its rounding to uint8 in between; each pass gathers
  its few taps per output pixel (integer sums are exact in any order);
- shear, translation and rotation are PIL's bilinear affine sampling (source point of the pixel centre,
  edge pixels repeated within the image, grey outside it, truncation to uint8), evaluated in float64 with
  PIL's order of operations; every image of a round that drew a geometric operation goes through one call;
- AutoContrast and Equalize build PIL's per-channel lookup tables (float64 / integer arithmetic) for all
  images at once and apply them with one gather;
- Brightness and Sharpness at level 5 (factor 1.0) and Identity change nothing and are skipped.

Bit-exactness assumes IEEE double arithmetic without fused multiply-adds on both sides: PIL's x86-64
wheels, the resize taps (computed on the host) and PyTorch's separate elementwise kernels. A PIL built with
FMA contraction (e.g. some aarch64 builds) could differ by one grey level at rare pixels; on CUDA the
equality is expected from the same argument but has not been run here (no GPU was available).
"""

from __future__ import annotations

import math

import torch

from .augment import GEOMETRIC, NO_OPS, OPS, ROUNDS, AugmentDraws, draw_augmentations, inverse_affine

PRECISION_BITS = 22  # PIL's fixed point for 8-bit resampling: 32 - 8 - 2
CHUNK = 16  # images per resize call: bounds the working memory (about 16 x 3 x 427 x 224 x 4 B = 18 MB a term)


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel, a = -0.5, in the Horner form PIL evaluates (float64)."""
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resample_taps(start: torch.Tensor, length: torch.Tensor, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's bicubic taps for resampling each image's window [start, start + length) of an axis to
    ``out_size``: source indices [n, out_size, K] (long) and fixed-point weights [n, out_size, K] (int32,
    computed in float64 as PIL does, zero past a row's last tap)."""
    dev = start.device
    start, length = start.double(), length.double()
    scale = length / out_size
    filterscale = scale.clamp(min=1.0)
    support = 2.0 * filterscale
    inv = torch.ones_like(filterscale) / filterscale  # tensor / tensor: `1.0 / t` is not always IEEE division
    center = (torch.arange(out_size, device=dev, dtype=torch.float64) + 0.5)[None, :] * scale[:, None]
    first = torch.trunc(center - support[:, None] + 0.5).clamp(min=0)
    count = torch.minimum(torch.trunc(center + support[:, None] + 0.5), length[:, None]) - first
    n_taps = int(math.ceil(float(support.max()))) * 2 + 1
    taps = torch.arange(n_taps, device=dev, dtype=torch.float64)[None, None, :]
    position = first[..., None] + taps  # within the window
    valid = taps < count[..., None]
    weights = torch.where(valid, _bicubic((position - center[..., None] + 0.5) * inv[:, None, None]), 0.0)
    total = torch.zeros_like(center)
    for k in range(n_taps):  # left to right, as PIL sums them
        total = total + weights[..., k]
    weights = torch.where(total[..., None] != 0, weights / total[..., None], weights)
    one = float(1 << PRECISION_BITS)
    fixed = torch.where(weights < 0, torch.trunc(-0.5 + weights * one), torch.trunc(0.5 + weights * one))
    index = torch.where(valid, start[:, None, None] + position, start[:, None, None]).long()
    return index, torch.where(valid, fixed, 0.0).to(torch.int32)


def _resample_last_axis(x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """x [k, R, L] int32 -> [k, R, out] int32 in 0..255: one PIL pass along the last axis, in PIL's own
    int32 fixed-point arithmetic ((sum of value * weight + 2^21) >> 22, clipped)."""
    k, rows, _ = x.shape
    out = torch.full((k, rows, index.shape[1]), 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for t in range(index.shape[2]):  # a handful of taps: gather them, never a dense [out, L] matrix
        out.addcmul_(x.gather(2, index[:, None, :, t].expand(k, rows, -1)), weights[:, None, :, t])
    return out.bitwise_right_shift_(PRECISION_BITS).clamp_(0, 255)


def resized_crop_flip(canvas: torch.Tensor, windows: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [n, 3, H, W] and per-image windows [n, 4] (top, left, h, w) -> each window resized to
    size x size with PIL's bicubic resize (horizontal pass, then vertical), mirrored where ``flip``:
    uint8 [n, 3, size, size]."""
    n, channels, height, width = canvas.shape
    dev = canvas.device
    windows, flip = windows.cpu(), flip.cpu()  # the taps are small: made on the host, no device sync
    out = []
    for lo in range(0, n, CHUNK):
        part = slice(lo, min(lo + CHUNK, n))
        top, left, h, w = windows[part].unbind(1)
        k = len(top)
        col_index, col_weights = resample_taps(left, w, size)
        mirrored = flip[part, None, None]  # mirror = reversed output columns
        col_index = torch.where(mirrored, col_index.flip(1), col_index).to(dev, non_blocking=True)
        col_weights = torch.where(mirrored, col_weights.flip(1), col_weights).to(dev, non_blocking=True)
        row_index, row_weights = (t.to(dev, non_blocking=True) for t in resample_taps(top, h, size))
        x = canvas[part].int().reshape(k, channels * height, width)
        horizontal = _resample_last_axis(x, col_index, col_weights)  # [k, C*H, size]
        by_column = horizontal.view(k, channels, height, size).transpose(2, 3).reshape(k, channels * size, height)
        vertical = _resample_last_axis(by_column, row_index, row_weights)  # [k, C*size(x), size(y)]
        out.append(vertical.view(k, channels, size, size).transpose(2, 3).to(torch.uint8))
    return torch.cat(out).contiguous()


def affine_bilinear(images: torch.Tensor, matrices: torch.Tensor, fill: int = 128) -> torch.Tensor:
    """PIL's ``transform(AFFINE, matrix, BILINEAR, fillcolor=fill)`` for each image of a uint8 batch
    [k, C, H, W] with its own inverse matrix [k, 6] (``augment.inverse_affine``)."""
    k, channels, height, width = images.shape
    dev = images.device
    m = matrices.to(dev, torch.float64)[:, :, None, None]
    ys = (torch.arange(height, device=dev, dtype=torch.float64) + 0.5)[None, :, None]
    xs = (torch.arange(width, device=dev, dtype=torch.float64) + 0.5)[None, None, :]
    x_in = m[:, 0] * xs + m[:, 1] * ys + m[:, 2]  # [k, H, W]
    y_in = m[:, 3] * xs + m[:, 4] * ys + m[:, 5]
    inside = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
    x_in, y_in = x_in - 0.5, y_in - 0.5
    x0, y0 = torch.floor(x_in), torch.floor(y_in)
    dx, dy = (x_in - x0)[:, None], (y_in - y0)[:, None]
    xa, xb = x0.clamp(0, width - 1).long(), (x0 + 1).clamp(0, width - 1).long()
    ya, yb = y0.clamp(0, height - 1).long(), (y0 + 1).clamp(0, height - 1).long()
    flat = images.reshape(k, channels, height * width).double()

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        index = (yy * width + xx).reshape(k, 1, height * width).expand(k, channels, -1)
        return flat.gather(2, index).view(k, channels, height, width)

    top_left, top_right, bottom_left, bottom_right = at(ya, xa), at(ya, xb), at(yb, xa), at(yb, xb)
    upper = top_left + (top_right - top_left) * dx
    lower = bottom_left + (bottom_right - bottom_left) * dx
    value = torch.trunc(upper + (lower - upper) * dy)
    return torch.where(inside[:, None], value, float(fill)).to(torch.uint8)


def _apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """uint8 [k, C, H, W] through per-channel tables [k, C, 256]."""
    k, channels, height, width = images.shape
    flat = images.reshape(k, channels, -1).long()
    return lut.gather(2, flat).view(k, channels, height, width).to(torch.uint8)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.autocontrast`` (no cutoff) per channel: [lo, hi] -> [0, 255], truncated."""
    flat = images.reshape(*images.shape[:2], -1)
    lo, hi = flat.amin(-1).double()[..., None], flat.amax(-1).double()[..., None]
    levels = torch.arange(256, device=images.device, dtype=torch.float64)
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp(min=1)  # `255.0 / t` multiplies by 1 / t: not PIL's double
    offset = -lo * scale
    lut = torch.trunc(levels * scale + offset).clamp(0, 255)
    return _apply_lut(images, torch.where(hi > lo, lut, levels).long())


def equalize(images: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` per channel, in integer arithmetic."""
    k, channels = images.shape[:2]
    flat = images.reshape(k * channels, -1).long()
    hist = torch.zeros(k * channels, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    levels = torch.arange(256, device=images.device)
    last = torch.where(hist > 0, levels, -1).amax(1, keepdim=True)  # the highest level present
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last)) // 255
    before = hist.cumsum(1) - hist  # pixels below each level
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    keep = ((hist > 0).sum(1, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(keep, levels.expand_as(lut), lut)
    return _apply_lut(images, lut.view(k, channels, 256))


class BatchAugment:
    """The papers' train augmentation for a uint8 batch: ``apply`` with given draws, or draw and apply."""

    def __init__(self, size: int) -> None:
        self.size = size
        # The inverse matrices of each geometric operation at this size, [positive, negative].
        self.matrices = {name: torch.tensor([inverse_affine(name, negative, size, size) for negative in (False, True)],
                                            dtype=torch.float64) for name in GEOMETRIC}

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A same-size batch [n, 3, H, W]: draw from ``generator`` (CPU; None: torch's default) and apply."""
        n, _, height, width = images.shape
        draws = draw_augmentations([height] * n, [width] * n, generator)
        return self.apply(images, draws.boxes, draws)

    def apply(self, canvas: torch.Tensor, windows: torch.Tensor, draws: AugmentDraws) -> torch.Tensor:
        """Each image's ``windows`` box of ``canvas`` (where it was drawn from) through its draws."""
        out = resized_crop_flip(canvas, windows, draws.flip, self.size)
        dev = out.device
        for r in range(ROUNDS):
            drawn = torch.where(draws.applied[:, r], draws.ops[:, r], OPS.index("Identity"))
            for op_index in drawn.unique().tolist():
                name = OPS[op_index]
                if name in NO_OPS:
                    continue
                picked = (drawn == op_index).nonzero()[:, 0]
                rows = picked.to(dev)
                if name in GEOMETRIC:
                    matrices = self.matrices[name][draws.negative[picked, r].long()]
                    out[rows] = affine_bilinear(out[rows], matrices)
                elif name == "AutoContrast":
                    out[rows] = autocontrast(out[rows])
                elif name == "Equalize":
                    out[rows] = equalize(out[rows])
                else:
                    raise NotImplementedError(f"the batched path has no {name!r} at this level")
        return out


__all__ = ["BatchAugment", "affine_bilinear", "autocontrast", "equalize", "resample_taps", "resized_crop_flip"]
