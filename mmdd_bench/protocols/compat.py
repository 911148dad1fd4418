"""Whether a backbone can score a distilled set, and the set's images as that backbone takes them.

A set distilled with backbone A can be scored with backbone B (a *transfer* evaluation) when its text means
the same to B: raw captions always do (B tokenizes them itself); sentence or token embeddings do when they
live in B's text tower (``encoders/towers.py``: the same text weights, tokenizer and pooling, whatever the image
encoder). Its images are model inputs of A's geometry and normalisation; ``images_for`` is the one place that
turns them into B's: antialiased bicubic resizing to B's resolution (resizing is linear with weights summing to
one per output pixel, so it commutes with the per-channel normalisation) and, where A and B normalise
differently, re-normalisation with B's mean and std.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ..distilled import DistilledSet
from ..encoders.backbone import Backbone
from ..encoders.towers import TEXT_FAMILIES, text_tower_id
from ..errors import UsageError


def check_text(distilled: DistilledSet, backbone: Backbone) -> None:
    """Refuse embeddings that do not live in ``backbone``'s text tower, saying what was expected, what was found
    and what to do."""
    if distilled.text_kind == "captions" or distilled.encoder_id == backbone.text_encoder_id:
        return
    found = text_tower_id(distilled.encoder_id or "")
    if found == backbone.text_tower_id:
        return
    raise UsageError(
        f"the set's {distilled.text_kind.replace('_', ' ')} live in the text tower {found!r} (encoder "
        f"{distilled.encoder_id!r}), but backbone {backbone.name!r} encodes text with {backbone.text_tower_id!r}; "
        "embeddings only transfer between backbones that share a text tower. Evaluate with the backbone the set "
        f"was distilled with{_distilled_with(distilled)}{_siblings(found)}, or distil the set again with this backbone."
    )


def _siblings(tower: str) -> str:
    """The backbones that build the text tower ``tower`` (its weights permitting), as a hint."""
    family = tower.partition(":")[0]
    names = [name for name, f in TEXT_FAMILIES.items() if f == family]
    return f" or another backbone with its text tower ({', '.join(names)})" if len(names) > 1 else ""


def _distilled_with(distilled: DistilledSet) -> str:
    name = distilled.meta.get("backbone") or (distilled.encoder_id or "").partition(":")[0]
    return f" (--backbone {name})" if isinstance(name, str) and name else ""


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 3, size, size], bicubic with antialiasing (what a downscale needs not to alias)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True).to(images.dtype)


def images_for(distilled: DistilledSet, backbone: Backbone) -> tuple[DistilledSet, list[str]]:
    """The set with its images as ``backbone`` takes them (the set itself when they already are), and notes on
    what changed. The set's normalisation is read from its metadata (``image_mean``/``image_std``, written by
    the runner); a set without them is taken to use the backbone's own."""
    if distilled.reference is not None:
        return distilled, []  # the training split by reference: read at the backbone's size from the dataset
    images, notes = distilled.images, []
    size = backbone.image_size
    if tuple(images.shape[-2:]) != (size, size):
        images = resize_images(images, size)
        notes.append(f"images resized from {tuple(distilled.images.shape[-2:])} to ({size}, {size}) px "
                     "(bicubic, antialiased) for this backbone")
    mean, std = distilled.meta.get("image_mean"), distilled.meta.get("image_std")
    if _triple(mean) and _triple(std, positive=True) and (tuple(mean), tuple(std)) != (tuple(backbone.mean), tuple(backbone.std)):
        a_mean, a_std = (torch.tensor(v, dtype=images.dtype).view(1, 3, 1, 1) for v in (mean, std))
        b_mean, b_std = (torch.tensor(v, dtype=images.dtype).view(1, 3, 1, 1) for v in (backbone.mean, backbone.std))
        images = (images * a_std + a_mean - b_mean) / b_std
        notes.append("images re-normalised from the set's mean/std to this backbone's")
    if images is distilled.images:
        return distilled, []
    return dataclasses.replace(distilled, images=images.contiguous()), notes


def _triple(value: object, positive: bool = False) -> bool:
    """Three finite numbers (``positive``: > 0), as a set's metadata should hold them (it is untrusted)."""
    return (isinstance(value, list | tuple) and len(value) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    and (v > 0 or not positive) for v in value))


__all__ = ["check_text", "images_for", "resize_images"]
