"""Datasets by name: the embedded ``shapes`` and ``scenes`` (generated on first use, each with a ``-mini`` variant
for smoke tests), ``flickr30k``, ``coco``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import DataError, UsageError
from ..progress import ProgressFn
from . import scenes, shapes
from .karpathy import load_retrieval_split, load_train_split
from .scenes import SCENES_CONFIGS
from .shapes import SHAPES_CONFIGS
from .splits import Dataset, RetrievalSplit, TrainSplit
from .validate import structural_warnings

# name -> (annotation file prefix, default backbone, description)
DATASETS = {
    "shapes": ("shapes", "tiny", "embedded synthetic scenes, 5000 train / 500 val / 1000 test images x 5 captions"),
    "shapes-mini": ("shapes", "tiny", "a smaller embedded set for smoke tests (400 / 100 / 200 images)"),
    "scenes": ("scenes", "tiny-scenes", "embedded scenes whose captions depend on binding and word order, "
               "5000 train / 1000 val / 1000 test images x 5 captions"),
    "scenes-mini": ("scenes", "tiny-scenes", "a smaller scenes set for smoke tests (400 / 100 / 200 images)"),
    "flickr30k": ("flickr30k", "paper", "Flickr30K, Karpathy split (29k / 1k / 1k images)"),
    "coco": ("coco_karpathy", "paper", "MS-COCO, Karpathy split (113k / 5k / 5k images)"),
}
# Embedded datasets: name -> the generator that writes it into the cache on first use.
GENERATORS = {**{name: shapes.ensure_generated for name in SHAPES_CONFIGS},
              **{name: scenes.ensure_generated for name in SCENES_CONFIGS}}
EMBEDDED = set(GENERATORS)
EMBEDDED_CONFIGS = {**SHAPES_CONFIGS, **SCENES_CONFIGS}


def generated_folder(name: str, cache_dir: Path) -> tuple[Path, Path]:
    """Where an embedded dataset is (or will be) generated, and the file whose presence says it is complete."""
    prefix = DATASETS[name][0]
    folder = Path(cache_dir) / "datasets" / f"{prefix}-{EMBEDDED_CONFIGS[name].key()}"
    return folder, folder / "annotations" / f"{prefix}_test.json"


def resolve_data_root(data_root: str | Path | None) -> Path:
    root = data_root or os.environ.get("MMDD_BENCH_DATA")
    if not root:
        raise UsageError("no data root: pass --data-root DIR or set MMDD_BENCH_DATA (DIR/flickr30k, DIR/coco).")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data root {path} does not exist or is not a folder (from --data-root / MMDD_BENCH_DATA).")
    return path


def dataset_dir(name: str, data_root: str | Path | None, cache_dir: Path, progress: ProgressFn | None = None) -> Path:
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}.")
    if name in EMBEDDED:
        return GENERATORS[name](name, cache_dir, progress)
    folder = resolve_data_root(data_root) / name
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} is missing; expected {folder}/annotations/*.json and its images.")
    return folder


def load_dataset(name: str, data_root: str | Path | None, cache_dir: Path, progress: ProgressFn | None = None) -> Dataset:
    """``progress`` hears about the embedded datasets' generation on first use."""
    folder = dataset_dir(name, data_root, cache_dir, progress)
    prefix, backbone, description = DATASETS[name]
    ann = folder / "annotations"
    ds = Dataset(
        name=name,
        root=folder,
        train=load_train_split(ann / f"{prefix}_train.json", folder, cache_dir),
        val=load_retrieval_split(ann / f"{prefix}_val.json", folder, cache_dir),
        test=load_retrieval_split(ann / f"{prefix}_test.json", folder, cache_dir),
        default_backbone=backbone,
        # Embedded captions name left/right; flipping would contradict them.
        hflip=name not in EMBEDDED,
        info={"description": description},
    )
    for problem in structural_warnings(ds):
        warnings.warn(problem, stacklevel=2)
    return ds


__all__ = ["DATASETS", "EMBEDDED", "EMBEDDED_CONFIGS", "generated_folder", "Dataset", "RetrievalSplit", "SCENES_CONFIGS", "SHAPES_CONFIGS", "TrainSplit",
           "load_dataset"]
