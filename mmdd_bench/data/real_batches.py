"""Real training batches for a method's loop: pair indices and the caller's generator in, normalised float
images on the device out, augmented as the papers do on real datasets and untouched on the embedded ones.

Which path runs where (``path="auto"``):

- datasets that are not augmented (the embedded ``shapes``): the squashed size x size ``ImageStore``,
  exactly as before (same bytes, no draw from the generator);
- CPU: the per-image reference (``augment.augment_image``, PIL), fed through a
  ``torch.utils.data.DataLoader`` whose workers (persistent, ``MMDD_BENCH_DATA_WORKERS``, default half
  the CPUs up to 8) each augment a chunk of the batch;
- CUDA: the batched path (``augment_batched.BatchAugment``): the main process copies each image's crop box
  out of the store into one uint8 canvas (pinned), which moves to the device in one non-blocking copy and
  is augmented there.

Both paths crop from ``originals.OriginalImages`` (the decoded originals, aspect kept) and give the same
images for the same draws, so a result does not depend on the path, nor on the number of workers: every
random choice is drawn here, in the main process, from the caller's generator, one batch after another,
before any worker sees the batch. ``stream`` draws all its batches when it is called and lets the workers
prefetch ahead; the generator then stands where batch-by-batch ``batch`` calls would leave it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from .augment import AugmentDraws, augment_identity, augment_image, draw_augmentations
from .augment_batched import BatchAugment
from .images import ImageStore
from .originals import OriginalImages, working_short_side
from .splits import Dataset

PATHS = ("auto", "reference", "batched")


def default_workers() -> int:
    """DataLoader workers for the reference path: ``MMDD_BENCH_DATA_WORKERS``, else half the CPUs, at most 8."""
    value = os.environ.get("MMDD_BENCH_DATA_WORKERS")
    if value is not None:
        if not value.isdigit():
            raise UsageError(f"MMDD_BENCH_DATA_WORKERS must be a whole number >= 0, got {value!r}")
        return int(value)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cpus // 2)


class _Chunks(torch.utils.data.Sampler):
    """The work list the loader's workers take from: replaced before each pass over the loader."""

    def __init__(self) -> None:
        self.jobs: list[tuple[np.ndarray, AugmentDraws]] = []

    def __iter__(self) -> Iterator[tuple[np.ndarray, AugmentDraws]]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)


class _AugmentChunk(torch.utils.data.Dataset):
    """Worker side of the reference path: (image indices, their draws) -> uint8 [k, 3, size, size]."""

    def __init__(self, originals: OriginalImages, size: int) -> None:
        self.originals, self.size = originals, size

    def __getitem__(self, job: tuple[np.ndarray, AugmentDraws]) -> torch.Tensor:
        images, draws = job
        out = np.stack([augment_image(self.originals.image(int(i)), draws[j], self.size) for j, i in enumerate(images)])
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class RealBatches:
    """Real, normalised training images for one dataset, device and image size."""

    def __init__(self, dataset: Dataset, cache_dir: Path, device: torch.device, size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], path: str = "auto",
                 num_workers: int | None = None) -> None:
        if path not in PATHS:
            raise UsageError(f"augmentation path must be one of {', '.join(PATHS)}, got {path!r}")
        self.train = dataset.train
        self.device = device
        self.size = size
        self.identity = augment_identity(dataset)
        self._store_args = (dataset.train.image_paths, size, Path(cache_dir), dataset.train.fingerprint, mean, std)
        self._store: ImageStore | None = None
        if self.identity is None:
            self.path = "none"
            return
        self.path = ("batched" if device.type == "cuda" else "reference") if path == "auto" else path
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.originals = OriginalImages(dataset.train.image_paths, working_short_side(size), Path(cache_dir),
                                        dataset.train.fingerprint, self.num_workers)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self._chunks = _Chunks()
        self._loader: torch.utils.data.DataLoader | None = None
        self._batched = BatchAugment(size) if self.path == "batched" else None

    # ---- what callers use ---------------------------------------------------------------------------
    def batch(self, pairs: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """Normalised float [len(pairs), 3, size, size] on the device for these pair indices."""
        return next(self.stream([pairs], generator))

    def stream(self, pair_batches: Sequence[np.ndarray], generator: torch.Generator) -> Iterator[torch.Tensor]:
        """One normalised batch per entry of ``pair_batches``, in order, the next ones prepared meanwhile.
        Every batch's augmentation is drawn from ``generator`` now, before the first batch is returned."""
        images = [self.train.pair_image[np.asarray(p)] for p in pair_batches]
        if self.path == "none":
            return self._plain(images)
        originals = self.originals
        draws = [draw_augmentations(originals.heights[i], originals.widths[i], generator) for i in images]
        if self.path == "batched":
            return self._batched_stream(images, draws)
        return self._reference_stream(images, draws)

    def close(self) -> None:
        """Stop the loader's worker processes (they also stop when this object is garbage-collected)."""
        self._loader = None

    def __enter__(self) -> RealBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the paths ----------------------------------------------------------------------------------
    def _plain(self, images: list[np.ndarray]) -> Iterator[torch.Tensor]:
        if self._store is None:
            self._store = ImageStore(*self._store_args)
        store = self._store
        for idx in images:  # exactly the call sequence the embedded datasets always had
            yield store.normalize(store.uint8(idx).to(self.device))

    def _normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return (images_uint8.float() / 255 - self.mean) / self.std

    def _reference_stream(self, images: list[np.ndarray], draws: list[AugmentDraws]) -> Iterator[torch.Tensor]:
        if self._loader is None:
            workers = self.num_workers
            self._loader = torch.utils.data.DataLoader(
                _AugmentChunk(self.originals, self.size), batch_size=None, sampler=self._chunks,
                num_workers=workers, persistent_workers=workers > 0,
                prefetch_factor=2 if workers else None, generator=torch.Generator())  # no draw from torch's RNG
        chunk = max(1, math.ceil(max(len(i) for i in images) / (2 * max(1, self.num_workers))))
        jobs, counts = [], []
        for idx, d in zip(images, draws, strict=True):
            starts = range(0, len(idx), chunk)
            jobs.extend((idx[s:s + chunk], d[s:s + chunk]) for s in starts)
            counts.append(len(starts))
        self._chunks.jobs = jobs
        return self._regroup(iter(self._loader), counts)

    def _regroup(self, chunks: Iterator[torch.Tensor], counts: list[int]) -> Iterator[torch.Tensor]:
        cuda = self.device.type == "cuda"
        for count in counts:
            parts = [next(chunks) for _ in range(count)]
            # On CUDA the chunks land in one pinned buffer, which moves to the device in one non-blocking copy.
            batch = torch.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=torch.uint8, pin_memory=cuda)
            yield self._normalize(torch.cat(parts, out=batch).to(self.device, non_blocking=True))

    def _batched_stream(self, images: list[np.ndarray], draws: list[AugmentDraws]) -> Iterator[torch.Tensor]:
        for idx, d in zip(images, draws, strict=True):
            canvas, windows = self._crop_canvas(idx, d)
            yield self._normalize(self._batched.apply(canvas.to(self.device, non_blocking=True), windows, d))

    def _crop_canvas(self, images: np.ndarray, draws: AugmentDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's crop box copied to the corner of one uint8 canvas [n, 3, max h, max w] (pinned on CUDA);
        the resize reads only inside a window, so the padding is never seen."""
        boxes = draws.boxes
        height, width = int(boxes[:, 2].max()), int(boxes[:, 3].max())
        canvas = torch.zeros(len(images), height, width, 3, dtype=torch.uint8,
                             pin_memory=self.device.type == "cuda")
        target = canvas.numpy()
        for j, i in enumerate(images):
            top, left, h, w = boxes[j].tolist()
            target[j, :h, :w] = self.originals.image(int(i))[top:top + h, left:left + w]
        windows = torch.zeros_like(boxes)
        windows[:, 2:] = boxes[:, 2:]
        return canvas.permute(0, 3, 1, 2), windows


__all__ = ["PATHS", "RealBatches", "default_workers"]
