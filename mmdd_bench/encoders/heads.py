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

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep``: an explicit dropout mask (1 keep, 0 drop) [batch, out_dim] used in train mode instead of
        drawing one, so a protocol can give each student its own seeded masks, the same whether students
        train one by one or together (``torch.func.vmap``)."""
        projected = self.projection(x)
        x = self.fc(F.gelu(projected))
        if keep is not None and self.training and self.dropout.p > 0:
            x = x * keep / (1.0 - self.dropout.p)
        else:
            x = self.dropout(x)
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

    def image_features(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output h and projected g (``keep``: the head's dropout mask, see ``ProjectionHead``)."""
        h = self.image_encoder(images)
        return h, head(self.image_head, h, keep)

    def text_features_from_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor,
                                      keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.text_encoder.encode_embeddings(embeds, mask)
        return h, head(self.text_head, h, keep)

    def text_features_from_tokens(self, ids: torch.Tensor, mask: torch.Tensor,
                                  keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_features_from_embeddings(self.text_encoder.embed_tokens(ids), mask, keep)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.image_encoder, self.text_encoder) for p in m.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.image_head, self.text_head) for p in m.parameters() if p.requires_grad]


def head(module: nn.Module, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """A projection head with an explicit dropout mask where it takes one (an Identity head takes none)."""
    return module(x, keep) if keep is not None and isinstance(module, ProjectionHead) else module(x)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: float = DualEncoder.logit_scale) -> torch.Tensor:
    """Symmetric InfoNCE with diagonal targets on L2-normalised embeddings (logits = exp(scale) * cos)."""
    logits = math.exp(scale) * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
