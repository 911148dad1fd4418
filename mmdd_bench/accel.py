"""Speed switches for a method's hot loop: bf16 autocast, channels-last images, ``torch.compile``.

Each is off by default and part of a result's identity (they change the numerics), so a faster variant
gets its own leaderboard row. They are meant for CUDA; on CPUs bf16 autocast and channels-last run too
(tests use them there), ``torch.compile`` needs a C++ toolchain.
"""

from __future__ import annotations

import contextlib
import shutil

import torch
from torch import nn

from .errors import UsageError

AMP_MODES = ("none", "bf16")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes; losses are computed in float32 outside it."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def check_compile(device: torch.device, where: str) -> None:
    """``torch.compile`` on CPU generates C++: say so up front instead of failing deep inside inductor."""
    if device.type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise UsageError(f"{where}.compile=true on the CPU needs a C++ compiler (g++ or clang++) on PATH; "
                         f"install one (apt install g++) or drop {where}.compile")


def image_layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def accelerate_image_encoder(encoder: nn.Module, channels_last: bool, compile_model: bool) -> nn.Module:
    """The same parameters, laid out channels-last and/or wrapped by ``torch.compile``."""
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    if compile_model:
        encoder = torch.compile(encoder)
    return encoder
