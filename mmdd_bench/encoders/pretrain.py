"""Unimodal pretraining of the embedded image encoders: classify the attributes of embedded scenes.

Like the paper's ImageNet-pretrained NFNet, the embedded backbones' image encoders start from a supervised
image task and have never seen a caption. Every embedded architecture (``tiny``'s CNN, ``tiny-vit``'s ViT)
is pretrained by this one recipe, so the two differ by architecture only: the same scenes (drawn from a seed
stream disjoint from every dataset split), the same attribute heads, optimiser, batch and epochs. ``task``
names the generator whose scenes and labels it fits: ``shapes`` (six whole-scene attributes) or ``scenes``
(shape, colour and size of each grid cell, background and count: ``tiny-scenes``, which must see which object
has which attribute where).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..progress import ProgressFn
from .backbone import CLIP_MEAN, CLIP_STD

BATCH = 128
LR = 2e-3


def _task(task: str):
    from ..data import scenes, shapes

    return {"shapes": shapes, "scenes": scenes}[task]


def attribute_scenes(n: int, image_size: int, seed: int, progress: ProgressFn | None = None,
                     task: str = "shapes") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` labelled scenes as normalised model inputs [n, 3, size, size] and their attribute labels."""
    images, labels = _task(task).generate_labelled_images(n, image_size, seed, progress)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    return x, {k: torch.from_numpy(v) for k, v in labels.items()}


def attribute_heads(dim: int, task: str = "shapes") -> nn.ModuleDict:
    """One linear classifier per scene attribute over ``dim``-d features."""
    return nn.ModuleDict({k: nn.Linear(dim, len(v)) for k, v in _task(task).ATTRIBUTES.items()})


def pretrain_on_attributes(make_net: Callable[[], nn.Module], out_dim: int, seed: int, *, images: int, epochs: int,
                           image_size: int, what: str, progress: ProgressFn | None = None,
                           task: str = "shapes") -> dict[str, torch.Tensor]:
    """The pretrained network's state dict: Adam (lr 2e-3), batch 128, the sum of the attributes'
    cross-entropies, ``epochs`` passes over ``images`` scenes; deterministic for a seed on one machine."""
    x_all, y_all = attribute_scenes(images, image_size, seed, progress, task)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = make_net()
        heads = attribute_heads(out_dim, task)
        opt = torch.optim.Adam([*net.parameters(), *heads.parameters()], lr=LR)
        gen = torch.Generator().manual_seed(seed)
        steps, step = epochs * -(-len(x_all) // BATCH), 0
        for _ in range(epochs):
            for idx in torch.randperm(len(x_all), generator=gen).split(BATCH):
                step += 1
                if progress:
                    progress(what, step, steps)
                feats = net(x_all[idx])
                loss = sum(F.cross_entropy(head(feats), y_all[k][idx]) for k, head in heads.items())
                opt.zero_grad()
                loss.backward()
                opt.step()
    return {k: v.contiguous() for k, v in net.state_dict().items()}


__all__ = ["attribute_heads", "attribute_scenes", "pretrain_on_attributes"]
