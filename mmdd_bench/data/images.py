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
from .integrity import memmap_array, open_image, verified, write_checksum


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        with open_image(path) as img:
            return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}. Replace or remove the file and its JSON entries.") from exc


class ImageStore:
    """uint8 [n, H, W, 3] images of one split; ``batch`` returns normalised float tensors [b, 3, H, W].

    Keyed by the split's fingerprint, which covers its images' content (``integrity.content_digest``);
    verified against its checksum when opened, rebuilt (with a warning) when it fails; its space is
    reserved before decoding, so a full disk is an error, not a crash (see ``integrity``)."""

    def __init__(self, paths: list[Path], size: int, cache_dir: Path, fingerprint: str,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.size = size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        names = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:12]
        path = cache_dir / "images" / f"{fingerprint}-{names}-{size}px.u8"
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (len(paths), size, size, 3)
        with FileLock(str(path) + ".lock"):
            if not verified(path, "image cache"):
                self._build(path, paths, size, shape)
        try:
            self.array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise DataError(f"image cache {path} cannot be read ({exc}); delete it and run again.") from None
        if self.array.shape != shape:
            raise DataError(f"image cache {path} has shape {self.array.shape}, expected {shape}; delete it.")

    @staticmethod
    def _build(path: Path, paths: list[Path], size: int, shape: tuple[int, ...]) -> None:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            array = memmap_array(tmp, shape, "decoded-image cache")
            for i, p in enumerate(paths):
                array[i] = _decode(p, size)
            array.flush()
            del array
            os.replace(tmp, path)
            write_checksum(path)
        finally:
            tmp.unlink(missing_ok=True)

    def __len__(self) -> int:
        return self.array.shape[0]

    def uint8(self, indices: np.ndarray | list[int] | None = None) -> torch.Tensor:
        data = self.array if indices is None else self.array[np.asarray(indices)]
        return torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 -> normalised float on the batch's own device (move uint8, 4x fewer bytes than float); the
        constants are moved to a device once, not per batch."""
        dev = images_uint8.device
        if dev not in self._constants:
            self._constants[dev] = (self.mean.to(dev), self.std.to(dev))
        mean, std = self._constants[dev]
        return (images_uint8.float() / 255 - mean) / std

    def batch(self, indices: np.ndarray | list[int] | None = None) -> torch.Tensor:
        return self.normalize(self.uint8(indices))
