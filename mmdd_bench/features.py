"""Features of the frozen pretrained encoders, computed once per (split, backbone weights, resolution) and
cached as safetensors: what herding, k-center and MTT-VL read of the training split, and what a protocol's
frozen towers give the val/test split (the frozen text encoder's caption features under ``frozen-text``,
both towers' under ``frozen-encoders``), so a student epoch costs only what trains.

A cached file that cannot be read, or holds the wrong number of rows, is moved aside (``.bad-<time>``)
with a warning and recomputed.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data.images import ImageStore
from .data.splits import RetrievalSplit, TrainSplit
from .encoders.backbone import Backbone, encode_captions


def _cached(path: Path, rows: dict[str, int], compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors at ``path`` (each with the given number of rows), computed and saved once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                data = load_file(str(path))
                if rows.keys() <= data.keys() and all(len(data[k]) == n for k, n in rows.items()):
                    return data
                problem = "it does not hold this split's features"
            except (SafetensorError, OSError) as exc:
                problem = f"it cannot be read ({exc})"
            bad = path.with_name(f"{path.name}.bad-{int(time.time())}")
            os.replace(path, bad)
            warnings.warn(f"feature cache {path}: {problem}; moved it to {bad.name}, recomputing", stacklevel=3)
        tensors = {k: v.contiguous() for k, v in compute().items()}
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    return load_file(str(path))


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


@torch.no_grad()
def image_features(backbone: Backbone, images: ImageStore, device: torch.device) -> torch.Tensor:
    """The frozen image encoder's features of every image of a store, on the CPU."""
    backbone.to(device)
    backbone.image_encoder.eval()
    return torch.cat([backbone.image_encoder(images.batch(idx).to(device)).float().cpu()
                      for idx in np.array_split(np.arange(len(images)), max(1, len(images) // 256))])


@torch.no_grad()
def text_features(backbone: Backbone, captions: list[str], device: torch.device) -> torch.Tensor:
    """The frozen text encoder's sentence features of captions, on the CPU."""
    backbone.to(device)
    backbone.text_encoder.eval()
    return encode_captions(backbone.text_encoder, backbone, captions, device).float().cpu()


@torch.no_grad()
def train_features(split: TrainSplit, images: ImageStore, backbone: Backbone, device: torch.device,
                   cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features per unique image, text features per pair) of the frozen pretrained encoders."""
    key = _key(split.fingerprint, backbone.text_encoder_id, images.size)
    data = _cached(Path(cache_dir) / "features" / f"train-{key}.safetensors",
                   {"image": len(images), "text": split.n_pairs},
                   lambda: {"image": image_features(backbone, images, device),
                            "text": text_features(backbone, split.captions, device)})
    return data["image"], data["text"]


@torch.no_grad()
def split_features(split: RetrievalSplit, backbone: Backbone, device: torch.device, cache_dir: Path,
                   tower: str, images: ImageStore | None = None) -> torch.Tensor:
    """The frozen ``tower``'s features of a val/test split: one per image (``"image"``, from ``images``) or one
    per caption (``"text"``)."""
    key = _key(split.fingerprint, backbone.text_encoder_id, backbone.image_size, tower)
    path = Path(cache_dir) / "features" / f"{tower}-{key}.safetensors"
    if tower == "image":
        assert images is not None, "image features need the split's image store"
        return _cached(path, {"image": len(split.image_paths)},
                       lambda: {"image": image_features(backbone, images, device)})["image"]
    return _cached(path, {"text": len(split.captions)},
                   lambda: {"text": text_features(backbone, split.captions, device)})["text"]


def joint_features(split: TrainSplit, images: ImageStore, backbone: Backbone, device: torch.device, cache_dir: Path,
                   image_weight: float = 1.0) -> torch.Tensor:
    """Per pair: [image_weight * L2-normalised image feature, L2-normalised text feature] of the frozen
    pretrained encoders, the space ``herding`` and ``k-center`` select in."""
    img, txt = train_features(split, images, backbone, device, cache_dir)
    pair_image = torch.as_tensor(split.pair_image)
    return torch.cat([image_weight * F.normalize(img[pair_image], dim=-1), F.normalize(txt, dim=-1)], 1)


__all__ = ["image_features", "joint_features", "split_features", "text_features", "train_features"]
