"""The projection head of the paper setting and the dual encoder that every protocol and method trains."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TEMPERATURE = 0.07


class ProjectionHead(nn.Module):
    """Linear(d, p) -> GELU -> Linear(p, p) -> Dropout(0.1) -> + first Linear's output -> LayerNorm(p)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        x = self.dropout(self.fc(F.gelu(projected)))
        return self.norm(x + projected)


class DualEncoder(nn.Module):
    """Image encoder + text encoder + projection heads, scored with a fixed temperature (not learned)."""

    logit_scale = math.log(1 / TEMPERATURE)

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module,
                 image_head: nn.Module, text_head: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_head = image_head
        self.text_head = text_head

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output h and projected g."""
        h = self.image_encoder(images)
        return h, self.image_head(h)

    def text_features_from_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.text_encoder.encode_embeddings(embeds, mask)
        return h, self.text_head(h)

    def text_features_from_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_features_from_embeddings(self.text_encoder.embed_tokens(ids), mask)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.image_encoder, self.text_encoder) for p in m.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.image_head, self.text_head) for p in m.parameters() if p.requires_grad]


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: float = DualEncoder.logit_scale) -> torch.Tensor:
    """Symmetric InfoNCE with diagonal targets on L2-normalised embeddings (logits = exp(scale) * cos)."""
    logits = math.exp(scale) * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
