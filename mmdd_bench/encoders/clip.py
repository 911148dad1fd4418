"""``clip-<model>[@<pretrained tag>]``: an open_clip model's towers, e.g. ``clip-ViT-B-32@openai``.

Pretrained weights must already be in the local cache (open_clip's or Hugging Face's); without a tag
the towers are randomly initialised, which ``weights_id`` records as ``random``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError, WeightsError
from .backbone import Backbone
from .identity import BackboneSpec
from .text import OpenCLIPTextEncoder


class _ImageTower(nn.Module):
    def __init__(self, visual: nn.Module, dim: int) -> None:
        super().__init__()
        self.visual = visual
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


LR_ENCODER, LR_PROJECTION = 1e-5, 1e-3


def _parse(name: str) -> tuple[str, str]:
    import open_clip

    model_name, _, tag = name.removeprefix("clip-").partition("@")
    if model_name not in open_clip.list_models():
        raise UsageError(f"unknown open_clip model {model_name!r}; see open_clip.list_models().")
    return model_name, tag


def describe_clip(name: str) -> BackboneSpec:
    """The backbone's identity from open_clip's model config, without building the model."""
    import open_clip

    model_name, tag = _parse(name)
    size = open_clip.get_model_config(model_name)["vision_cfg"].get("image_size", 224)
    size = size[0] if isinstance(size, tuple | list) else int(size)
    return BackboneSpec(name, f"{model_name}@{tag}" if tag else "random", size, LR_ENCODER, LR_PROJECTION)


def build_clip(name: str, cache_dir: Path) -> Backbone:
    import open_clip

    model_name, tag = _parse(name)
    # Build the architecture the weights were trained with: OpenAI's CLIP weights need QuickGELU, which
    # open_clip's pretrained config says (``quick_gelu``) but ``create_model`` does not apply on its own.
    quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu", False)) if tag else False
    try:
        model = open_clip.create_model(model_name, pretrained=tag or None, cache_dir=str(cache_dir / "open_clip"),
                                       force_quick_gelu=quick_gelu)
    except Exception as exc:  # open_clip raises RuntimeError/OSError/hub errors when weights are absent
        raise WeightsError(f"cannot load open_clip {model_name} weights {tag!r} locally: {exc}") from exc
    if not hasattr(model, "token_embedding"):
        raise UsageError(f"open_clip model {model_name!r} has a custom text tower; only CLIP-style towers are supported.")
    tokenizer = open_clip.get_tokenizer(model_name)

    def tokenize(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer(captions)
        mask = (ids != 0).long()
        length = int(mask.sum(1).max())
        return ids[:, :length], mask[:, :length]

    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, tuple | list) else int(image_size)
    dim = int(model.visual.output_dim)
    mean = tuple(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return Backbone(
        name=name,
        image_encoder=_ImageTower(model.visual, dim),
        text_encoder=OpenCLIPTextEncoder(model),
        tokenizer=tokenize,
        image_size=image_size,
        image_dim=dim,
        weights_id=f"{model_name}@{tag}" if tag else "random",
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        lr_encoder=LR_ENCODER,
        lr_projection=LR_PROJECTION,
    )
