"""A backbone = pretrained image and text encoders + tokenizer + image geometry + the projection size.

It holds one pristine copy of each pretrained encoder and hands out fresh deep copies, so that a student,
an expert or CovMatch's online model can be reset to exactly the pretrained weights at any time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .heads import DualEncoder, ProjectionHead
from .text import TextEncoder
from .towers import text_tower_of

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Backbone:
    name: str
    image_encoder: nn.Module
    text_encoder: TextEncoder
    tokenizer: Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]
    image_size: int
    image_dim: int
    weights_id: str  # which weights: names the feature space distilled text embeddings live in
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    # Evaluation and online-model learning rates for this backbone (the paper's unless stated).
    lr_encoder: float = 0.01
    lr_projection: float = 0.1
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for module in (self.image_encoder, self.text_encoder):
            module.eval()
            module.requires_grad_(False)

    @property
    def text_dim(self) -> int:
        return self.text_encoder.dim

    @property
    def projection_dim(self) -> int:
        return self.image_dim

    @property
    def text_encoder_id(self) -> str:
        """Names the image and text weights both (what distilled embeddings record as ``encoder_id``)."""
        return f"{self.name}:{self.weights_id}"

    @property
    def text_tower_id(self) -> str:
        """The text tower alone (``towers.py``): sets whose text lives in it can be scored with this backbone."""
        return text_tower_of(self.name, self.weights_id)

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(list(captions))

    def fresh_image_encoder(self) -> nn.Module:
        return copy.deepcopy(self.image_encoder).requires_grad_(True)

    def fresh_text_encoder(self, trainable: bool) -> TextEncoder:
        return copy.deepcopy(self.text_encoder).requires_grad_(trainable)

    def dual_encoder(self, *, text_trainable: bool, image_head: bool, seed: int,
                     device: torch.device | str = "cpu") -> DualEncoder:
        """Fresh pretrained encoders and projection heads initialised from ``seed``.

        ``image_head=False`` is the frozen-text protocol's model: the image feature is used as is.
        """
        fork_devices = [] if torch.device(device).type == "cpu" else [torch.device(device)]
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            img_head = ProjectionHead(self.image_dim, self.projection_dim) if image_head else nn.Identity()
            txt_head = ProjectionHead(self.text_dim, self.projection_dim)
        model = DualEncoder(self.fresh_image_encoder(), self.fresh_text_encoder(text_trainable), img_head, txt_head)
        if not text_trainable:
            model.text_encoder.eval()
        return model.to(device)

    def to(self, device: torch.device | str) -> Backbone:
        self.image_encoder.to(device)
        self.text_encoder.to(device)
        return self


@torch.no_grad()
def encode_captions(encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], backbone: Backbone,
                    captions: Sequence[str], device: torch.device, batch: int = 256) -> torch.Tensor:
    """Run captions through ``encode(ids, mask)`` in batches (padding per batch)."""
    out = []
    for start in range(0, len(captions), batch):
        ids, mask = backbone.tokenize(captions[start:start + batch])
        out.append(encode(ids.to(device), mask.to(device)))
    return torch.cat(out)


class HFTokenizer:
    """Wraps a Hugging Face tokenizer: pads to the longest caption, truncated at ``max_length``."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(captions, padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return out["input_ids"], out["attention_mask"]
