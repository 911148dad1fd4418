"""Decoded-image store: every image of a split decoded once at the working resolution into a uint8
memory-mapped array under the cache, so training streams never re-decode JPEGs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image, UnidentifiedImageError

from ..errors import DataError


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}. Replace or remove the file and its JSON entries.") from exc


class ImageStore:
    """uint8 [n, H, W, 3] images of one split; ``batch`` returns normalised float tensors [b, 3, H, W]."""

    def __init__(self, paths: list[Path], size: int, cache_dir: Path, fingerprint: str,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.size = size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        names = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:12]
        path = cache_dir / "images" / f"{fingerprint}-{names}-{size}px.u8"
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (len(paths), size, size, 3)
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                try:
                    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                    for i, p in enumerate(paths):
                        array[i] = _decode(p, size)
                    array.flush()
                    del array
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
        self.array = np.load(path, mmap_mode="r")
        if self.array.shape != shape:
            raise DataError(f"image cache {path} has shape {self.array.shape}, expected {shape}; delete it.")

    def __len__(self) -> int:
        return self.array.shape[0]

    def uint8(self, indices: np.ndarray | list[int] | None = None) -> torch.Tensor:
        data = self.array if indices is None else self.array[np.asarray(indices)]
        return torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 -> normalised float on the batch's own device (move uint8, 4x fewer bytes than float)."""
        dev = images_uint8.device
        return (images_uint8.float() / 255 - self.mean.to(dev)) / self.std.to(dev)

    def batch(self, indices: np.ndarray | list[int] | None = None) -> torch.Tensor:
        return self.normalize(self.uint8(indices))
