"""Backbones by name: ``paper`` (and its transfer targets ``paper-nfresnet50``, ``paper-vit``), ``tiny``,
``tiny-vit``, ``tiny-scenes`` and ``clip-<open_clip model>[@tag]``, created lazily."""

from __future__ import annotations

from pathlib import Path

from ..progress import ProgressFn
from .backbone import Backbone
from .identity import PAPER_IMAGE_ENCODERS, TINY_FAMILY, BackboneSpec, describe_backbone, unknown_backbone

BACKBONE_NAMES = {
    **{name: encoder.description for name, encoder in PAPER_IMAGE_ENCODERS.items()},
    "tiny": "small CNN pretrained on shapes attributes + 1-layer all-MiniLM-L6-v2; runs on 2 CPU cores",
    "tiny-vit": "small ViT pretrained like tiny's CNN + tiny's very text tower (sets transfer between the two); 2 CPU cores",
    "tiny-scenes": "tiny's CNN pretrained on per-cell attributes of scenes images + all six layers of all-MiniLM-L6-v2 (mean-pooled); scenes' default",
    "clip-<model>[@tag]": "an open_clip model's image and text towers, e.g. clip-ViT-B-32@openai",
}


def build_backbone(name: str, cache_dir: Path, *, pretrained: bool = True, image_size: int | None = None,
                   progress: ProgressFn | None = None) -> Backbone:
    """``pretrained=False`` builds the architecture with random weights (tests, cost benchmarks only);
    ``progress`` hears about long preparations (the tiny encoder's pretraining, where it happens here)."""
    if name in TINY_FAMILY:
        from .tiny import build_tiny

        return build_tiny(cache_dir, pretrained=pretrained, progress=progress, backbone=name)
    if name in PAPER_IMAGE_ENCODERS:
        from .paper import build_paper

        return build_paper(cache_dir, pretrained=pretrained, image_size=image_size or 224, backbone=name)
    if name.startswith("clip-"):
        from .clip import build_clip

        return build_clip(name, cache_dir)
    raise unknown_backbone(name)


__all__ = ["BACKBONE_NAMES", "Backbone", "BackboneSpec", "build_backbone", "describe_backbone"]
