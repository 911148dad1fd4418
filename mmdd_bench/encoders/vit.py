"""``tiny-vit``'s image encoder: a small Vision Transformer for 32 px scenes, the embedded set's second image
architecture, so that a set distilled with the ``tiny`` CNN can be scored by a network that shares none of
its inductive biases (no convolution, no pooling pyramid) and vice versa.

Written with plain tensor operations on purpose: attention is ``softmax(Q K^T / sqrt(d)) V`` by hand (no
fused kernel), there is no BatchNorm (no running statistics) and no dropout, so MTT-VL's unroll can take
second-order gradients through a student (``torch.func.grad`` of a ``torch.func.grad``) and protocols can
train students together under ``torch.func.vmap``. Width 96, 3 pre-norm blocks of 3 heads, MLP ratio 2,
patch 4 (64 tokens): about 34 MFLOP per image forward, against the CNN's 30, so both run on 2 CPU cores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        q, k, v = self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, width))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """[B, 3, image_size, image_size] -> [B, out_dim]: patch embedding + learned positions, pre-norm blocks, a
    final LayerNorm, the mean over tokens and a linear map to ``out_dim`` (the CNN's 256, so both backbones
    have the same joint-space width)."""

    def __init__(self, image_size: int = 32, patch: int = 4, width: int = 96, depth: int = 3, heads: int = 3,
                 mlp_ratio: int = 2, out_dim: int = 256) -> None:
        super().__init__()
        if image_size % patch or width % heads:
            raise ValueError(f"image_size {image_size} must be a multiple of patch {patch}, width {width} of heads {heads}")
        self.patch = patch
        self.embed = nn.Linear(3 * patch * patch, width)
        self.position = nn.Parameter(torch.empty(1, (image_size // patch) ** 2, width))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*[_Block(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        p = self.patch
        patches = (x.reshape(batch, channels, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
                   .reshape(batch, (height // p) * (width // p), channels * p * p))
        tokens = self.blocks(self.embed(patches) + self.position)
        return self.out(self.norm(tokens).mean(dim=1))


__all__ = ["TinyViT"]
