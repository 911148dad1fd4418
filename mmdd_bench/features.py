"""Pretrained (frozen) encoder features of a training split, computed once and cached as safetensors."""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data.images import ImageStore
from .data.splits import TrainSplit
from .encoders.backbone import Backbone, encode_captions


@torch.no_grad()
def train_features(split: TrainSplit, images: ImageStore, backbone: Backbone, device: torch.device,
                   cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features per unique image, text features per pair) of the frozen pretrained encoders."""
    key = hashlib.sha256(f"{split.fingerprint}|{backbone.text_encoder_id}|{images.size}".encode()).hexdigest()[:16]
    path = cache_dir / "features" / f"train-{key}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                data = load_file(str(path))
                if {"image", "text"} <= data.keys() and len(data["text"]) == split.n_pairs and len(data["image"]) == len(images):
                    return data["image"], data["text"]
                problem = "it does not hold this split's features"
            except (SafetensorError, OSError) as exc:
                problem = f"it cannot be read ({exc})"
            bad = path.with_name(f"{path.name}.bad-{int(time.time())}")
            os.replace(path, bad)
            warnings.warn(f"feature cache {path}: {problem}; moved it to {bad.name}, recomputing", stacklevel=2)
        if not path.is_file():
            backbone.to(device)
            img = [backbone.image_encoder(images.batch(idx).to(device)).float().cpu()
                   for idx in np.array_split(np.arange(len(images)), max(1, len(images) // 256))]
            txt = encode_captions(backbone.text_encoder, backbone, split.captions, device).float().cpu()
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file({"image": torch.cat(img).contiguous(), "text": txt.contiguous()}, str(tmp))
            os.replace(tmp, path)
    data = load_file(str(path))
    return data["image"], data["text"]


def joint_features(split: TrainSplit, images: ImageStore, backbone: Backbone, device: torch.device, cache_dir: Path,
                   image_weight: float = 1.0) -> torch.Tensor:
    """Per pair: [image_weight * L2-normalised image feature, L2-normalised text feature] of the frozen
    pretrained encoders, the space ``herding`` and ``k-center`` select in."""
    img, txt = train_features(split, images, backbone, device, cache_dir)
    pair_image = torch.as_tensor(split.pair_image)
    return torch.cat([image_weight * F.normalize(img[pair_image], dim=-1), F.normalize(txt, dim=-1)], 1)
