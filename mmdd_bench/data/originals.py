"""Training images decoded from their original files at a working resolution, aspect ratio kept: what the
papers' RandomResizedCrop crops from (the squashed size x size ``ImageStore`` is for what is not augmented).

Why a store and not decoding in every batch: CovMatch reads 128 real images per iteration for 10-20k
iterations and MTT-VL's 20 experts read every pair 10 times, so the JPEGs would be decoded 1-30 million
times; here each is decoded once, in DataLoader workers, and later reads are slices of a memory map.

The working resolution: the shorter side is ``working_short_side(size)`` = sqrt(2) * size rounded up to a
multiple of 32, 320 px for 224 crops (never upscaled: smaller originals are kept as they are). The
smallest box RandomResizedCrop takes from a 4:3 image (area 0.5, ratio 3/4 or 4/3) has a shorter side of
sqrt(0.5) = 0.707 of the image's, 226 px at 320, so every crop of a 4:3 or wider image is *downsampled*
to 224 as in the papers' pipeline on the originals (Flickr's 500x375: 265-375 px), never upsampled; a
square image's smallest crop is 196 px (1.14x upsampling). At 256 the smallest crops would be 181 px
(1.24x upsampling), and 384 costs 44% more disk than 320 for no change on 4:3 images.
Disk (uint8 RGB, shorter side 320): Flickr30K, 29k images mostly 500x375 -> 427x320 = 410 KB each,
11.9 GB; COCO, 113k images ~640x480 -> 427x320, 46 GB. (The 224 x 224 store: 150 KB, 4.4 / 17 GB;
shorter side 256: 7.6 / 29.6 GB.)

Layout under ``<cache>/images/``: ``<key>-short<S>.u8`` (every image's rows, concatenated) and
``<key>-short<S>.index.npy`` (int64 [n, 3]: byte offset, height, width), the index written last, so
a store without its index is incomplete and is rebuilt.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .integrity import no_space, open_image, verified, write_checksum


def working_short_side(size: int) -> int:
    """Shorter side of the stored originals for crops of ``size`` px: ceil(sqrt(2) * size / 32) * 32."""
    return 32 * math.ceil(size * math.sqrt(2) / 32)


def stored_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) of an original in the store: shorter side ``short_side``, aspect kept, never upscaled."""
    short = min(width, height)
    if short <= short_side:
        return width, height
    scale = short_side / short
    w, h = round(width * scale), round(height * scale)
    return (short_side, h) if width == short else (w, short_side)  # the shorter side exactly short_side


def decode_original(path: Path, short_side: int) -> np.ndarray:
    """uint8 [h, w, 3]: the image file as RGB, resized (PIL bicubic, antialiased) to the store's size."""
    try:
        with open_image(path) as img:
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}. Replace or remove the file and its JSON entries.") from exc
    size = stored_size(*rgb.size, short_side)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    return np.array(rgb)  # writable: the workers hand it on as a tensor


class _Decode(torch.utils.data.Dataset):
    """Worker side of building the store: one path -> its stored pixels."""

    def __init__(self, paths: list[Path], short_side: int) -> None:
        self.paths, self.short_side = paths, short_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(decode_original(self.paths[i], self.short_side))


class OriginalImages:
    """The training images at the working resolution, each its own size; ``image(i)`` is uint8 [h, w, 3].

    Picklable for DataLoader workers under any start method: the memory map is reopened where it is used.
    """

    def __init__(self, paths: list[Path], short_side: int, cache_dir: Path, fingerprint: str,
                 num_workers: int = 0) -> None:
        self.short_side = short_side
        names = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:12]
        stem = cache_dir / "images" / f"{fingerprint}-{names}-short{short_side}"
        self.pixels_path, self.index_path = stem.with_suffix(".u8"), stem.with_suffix(".index.npy")
        self.pixels_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(stem) + ".lock"):
            if not (self.index_path.is_file() and verified(self.pixels_path, "stored originals")):
                self.index_path.unlink(missing_ok=True)
                self._build(paths, num_workers)
        self.index = np.load(self.index_path)
        expected = int((self.index[:, 1] * self.index[:, 2]).sum() * 3) if len(self.index) else 0
        if self.index.shape != (len(paths), 3) or self.pixels_path.stat().st_size != expected:
            raise DataError(f"image cache {self.pixels_path} does not match its index {self.index_path} "
                            f"({len(paths)} images expected); delete both and run again.")
        self._pixels: np.ndarray | None = None

    def _build(self, paths: list[Path], num_workers: int) -> None:
        """Decode every original (in workers when asked), appending rows in order; index written last."""
        tmp_pixels = self.pixels_path.with_suffix(f".tmp{os.getpid()}")
        tmp_index = self.index_path.with_suffix(f".tmp{os.getpid()}.npy")
        loader = torch.utils.data.DataLoader(_Decode(paths, self.short_side), batch_size=None,
                                             num_workers=num_workers, generator=torch.Generator())
        index = np.zeros((len(paths), 3), dtype=np.int64)
        offset = 0
        try:
            with open(tmp_pixels, "wb") as out:
                for i, pixels in enumerate(loader):
                    out.write(pixels.numpy().tobytes())
                    index[i] = (offset, pixels.shape[0], pixels.shape[1])
                    offset += pixels.numel()
            np.save(tmp_index, index)
            os.replace(tmp_pixels, self.pixels_path)
            write_checksum(self.pixels_path)
            os.replace(tmp_index, self.index_path)  # last: a store with an index is complete
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise no_space(self.pixels_path.parent, offset, "stored originals") from None
            raise
        finally:
            tmp_pixels.unlink(missing_ok=True)
            tmp_index.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    @property
    def heights(self) -> torch.Tensor:
        return torch.from_numpy(self.index[:, 1])

    @property
    def widths(self) -> torch.Tensor:
        return torch.from_numpy(self.index[:, 2])

    def image(self, i: int) -> np.ndarray:
        """uint8 [h, w, 3], a read-only view of the memory map."""
        if self._pixels is None:
            self._pixels = np.memmap(self.pixels_path, dtype=np.uint8, mode="r")
        offset, h, w = (int(v) for v in self.index[i])
        return self._pixels[offset:offset + h * w * 3].reshape(h, w, 3)


__all__ = ["OriginalImages", "decode_original", "stored_size", "working_short_side"]
