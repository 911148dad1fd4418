"""Trajectory matching, shared by ``mtt-vl``, ``tesla-vl`` and ``lors``: what they have in common.

All three match a student, trained for a few SGD steps on the synthetic set from an expert's parameters at
a start epoch, to the same expert ``expert_epochs`` later, with the per-tower normalised distance
||theta_hat - theta*||^2 / ||theta_0 - theta*||^2. They differ in how the meta-gradient is computed:

- ``unroll`` + ``matching_loss`` (MTT-VL): the exact gradient through every unrolled step
  (``torch.func`` over parameter dicts); memory grows with the activations of all ``syn_steps`` steps;
- ``tesla_gradient`` (TESLA, as LoRS codes it): two phases. Phase 1 runs the steps without a graph and
  keeps only the student states theta_i and the sum G of the step gradients; phase 2 revisits each step
  alone and back-propagates (dL/dG . g_i) into that step's synthetic batch. Memory holds ``syn_steps``
  parameter copies plus one step's activations. It holds every theta_i fixed, so it equals the exact
  gradient at ``syn_steps = 1`` and not beyond; the step-size gradient is the closed form with G fixed.

Experts come from ``ExpertStore``; each iteration draws an expert uniformly (with replacement) and a start
epoch below ``max_start_epoch``, and ``SnapshotCache`` keeps read snapshots in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.func import functional_call, grad

from .encoders.heads import DualEncoder
from .encoders.losses import soft_contrastive_loss
from .experts import ExpertSettings, ExpertStore, split_towers
from .method import DistillContext

Params = dict[str, torch.Tensor]
# The soft-label target of a mini-batch (S[idx][:, idx], differentiable in S's parameters), or None: identity.
BatchTarget = Callable[[torch.Tensor], "torch.Tensor | None"]

SNAPSHOT_CACHE_BYTES = 2 * 2**30  # keep expert snapshots in memory up to this size (on disk, as stored)
TOWERS = ("image_encoder", "text_head")


class ExpertFields:
    """For a params dataclass with ``expert_lr``, ``expert_batch``, ``expert_dtype``, ``expert_seed``,
    ``max_start_epoch`` and ``expert_epochs``: the experts it reads."""

    expert_lr: float
    expert_batch: int
    expert_dtype: str
    expert_seed: int
    max_start_epoch: int
    expert_epochs: int

    def expert_settings(self) -> ExpertSettings:
        return ExpertSettings(lr=self.expert_lr, batch_size=self.expert_batch, storage_dtype=self.expert_dtype,
                              seed=self.expert_seed)

    @property
    def expert_train_epochs(self) -> int:
        """The last epoch matching reads: start epochs are 0..max_start_epoch-1, targets expert_epochs later."""
        return self.max_start_epoch - 1 + self.expert_epochs


def ensure_experts(ctx: DistillContext, settings: ExpertSettings, num_experts: int, epochs: int,
                   log: Callable[[str], None] = lambda s: None) -> tuple[ExpertStore, dict]:
    """The expert store of this dataset and backbone, with experts 0..num_experts-1 trained to ``epochs``."""
    store = ExpertStore(ctx.cache_dir, ctx.dataset, ctx.backbone, settings)
    summary = store.ensure(num_experts, epochs, ctx.dataset, ctx.backbone, ctx.train_images, ctx.device, ctx.progress,
                           log)
    return store, summary


class SnapshotCache:
    """Expert snapshots, read once and kept in memory when the experts in use fit the budget (they are
    never modified); read from disk every time otherwise."""

    def __init__(self, store: ExpertStore, num_experts: int, device: torch.device) -> None:
        self.store, self.device = store, device
        self.keep = store.summary(num_experts)["bytes_total"] <= SNAPSHOT_CACHE_BYTES
        self._loaded: dict[tuple[int, int], Params] = {}

    def __call__(self, expert: int, epoch: int) -> Params:
        if not self.keep:
            return self.store.snapshot(expert, epoch, self.device)
        if (expert, epoch) not in self._loaded:
            self._loaded[(expert, epoch)] = self.store.snapshot(expert, epoch, self.device)
        return self._loaded[(expert, epoch)]


def sample_start(rng: np.random.Generator, num_experts: int, max_start_epoch: int) -> tuple[int, int]:
    """(expert, start epoch), both uniform; the expert with replacement."""
    expert = int(rng.integers(num_experts))
    return expert, int(rng.integers(max_start_epoch))


def random_batches(size: int, batch: int, steps: int, gen: torch.Generator,
                   device: torch.device) -> list[torch.Tensor]:
    """MTT-VL's mini-batches: an independent random subset of ``min(batch, size)`` pairs for every step."""
    return [torch.randperm(size, generator=gen)[:batch].to(device) for _ in range(steps)]


def cycling_batches(size: int, batch: int, steps: int, gen: torch.Generator,
                    device: torch.device) -> list[torch.Tensor]:
    """LoRS's mini-batches: consecutive slices of a random permutation, a fresh permutation whenever fewer
    than ``batch`` indices are left (batches within one iteration do not repeat a pair until then)."""
    batch = min(batch, size)
    out: list[torch.Tensor] = []
    left = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if left.numel() < batch:
            left = torch.randperm(size, generator=gen)
        out.append(left[:batch].to(device))
        left = left[batch:]
    return out


def join_towers(image_params: Params, text_params: Params) -> Params:
    return {**{f"image_encoder.{k}": v for k, v in image_params.items()},
            **{f"text_head.{k}": v for k, v in text_params.items()}}


def student_loss(model: DualEncoder, image_params: Params, text_params: Params, images: torch.Tensor,
                 text: torch.Tensor, scale: float, loss: str = "infonce",
                 target: torch.Tensor | None = None) -> torch.Tensor:
    """The frozen-text student's loss with the given tower parameters (buffers from ``model``): InfoNCE by
    default, or a soft-label ``loss`` against ``target`` (``encoders.losses``)."""
    buffers = dict(model.image_encoder.named_buffers())
    img = functional_call(model.image_encoder, (image_params, buffers), (images,))
    txt = functional_call(model.text_head, text_params, (text,))
    return soft_contrastive_loss(img, txt, target, loss, scale)


def unroll(model: DualEncoder, start: Params, images: torch.Tensor, text: torch.Tensor, lr_image: torch.Tensor,
           lr_text: torch.Tensor, batches: list[torch.Tensor], scale: float, loss: str = "infonce",
           batch_target: BatchTarget | None = None) -> Params:
    """``len(batches)`` differentiable SGD steps from ``start``; the result depends on images, text, lrs
    (and the similarity behind ``batch_target``)."""
    towers = split_towers(start)
    image_p, text_p = towers["image_encoder"], towers["text_head"]
    step_grad = grad(lambda ip, tp, x, t, s: student_loss(model, ip, tp, x, t, scale, loss, s), argnums=(0, 1))
    for idx in batches:
        target = batch_target(idx) if batch_target is not None else None
        g_img, g_txt = step_grad(image_p, text_p, images[idx], text[idx], target)
        image_p = {k: v - lr_image * g_img[k] for k, v in image_p.items()}
        text_p = {k: v - lr_text * g_txt[k] for k, v in text_p.items()}
    return join_towers(image_p, text_p)


def matching_loss(student: Params, start: Params, target: Params, merge_towers: bool = False) -> torch.Tensor:
    """Sum over towers of ||student - target||^2 / ||start - target||^2; with ``merge_towers`` (LoRS's
    ``merge_loss_branches``) one ratio of the sums over both towers instead."""
    total = 0.0
    nums, dens = [], []
    for tower in ("image_encoder.", "text_head."):
        keys = [k for k in target if k.startswith(tower)]
        num = sum((student[k] - target[k]).pow(2).sum() for k in keys)
        den = sum((start[k] - target[k]).pow(2).sum() for k in keys)
        if merge_towers:
            nums.append(num)
            dens.append(den)
        else:
            total = total + num / den
    return (nums[0] + nums[1]) / (dens[0] + dens[1]) if merge_towers else total


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def tesla_gradient(model: DualEncoder, start: Params, target: Params, images: torch.Tensor, text: torch.Tensor,
                   lr_image: torch.Tensor, lr_text: torch.Tensor, batches: list[torch.Tensor], scale: float,
                   loss: str = "infonce", batch_target: BatchTarget | None = None,
                   target_params: Sequence[torch.Tensor] = (), merge_towers: bool = False,
                   replay_dropout: bool = True) -> torch.Tensor:
    """TESLA's constant-memory meta-gradient of ``matching_loss`` with every student state held fixed.

    Accumulates into ``.grad`` of ``images``, ``text``, ``lr_image``, ``lr_text`` and ``target_params`` (the
    similarity's parameters that ``batch_target`` reads); returns the matching loss (detached).

    ``replay_dropout``: phase 2 recomputes each step under the RNG state phase 1 used, so it sees the same
    dropout masks and the recomputed g_i equals phase 1's; ``False`` draws fresh masks, as LoRS's code does.
    Either way the global RNG ends where phase 1 left it.
    """
    device = images.device
    towers = split_towers({k: v.detach() for k, v in start.items()})
    theta0 = join_towers(towers["image_encoder"], towers["text_head"])
    step_grad = grad(lambda ip, tp, x, t, s: student_loss(model, ip, tp, x, t, scale, loss, s), argnums=(0, 1))
    eta_img, eta_txt = float(lr_image.detach()), float(lr_text.detach())

    # Phase 1: the unroll on detached data (no graph); keep each state, its RNG state, the sum G of the steps.
    states, rng_states = [], []
    image_p, text_p = towers["image_encoder"], towers["text_head"]
    sum_img = {k: torch.zeros_like(v) for k, v in image_p.items()}
    sum_txt = {k: torch.zeros_like(v) for k, v in text_p.items()}
    for idx in batches:
        states.append((image_p, text_p))
        rng_states.append(_rng_state(device))
        t_b = batch_target(idx) if batch_target is not None else None
        g_img, g_txt = step_grad(image_p, text_p, images[idx].detach(), text[idx].detach(),
                                 None if t_b is None else t_b.detach())
        image_p = {k: v - eta_img * g_img[k] for k, v in image_p.items()}
        text_p = {k: v - eta_txt * g_txt[k] for k, v in text_p.items()}
        for k in sum_img:
            sum_img[k] += g_img[k]
        for k in sum_txt:
            sum_txt[k] += g_txt[k]
    after_phase1 = _rng_state(device)

    # The objective in closed form, L(eta, G) = matching_loss(theta_0 - eta G): its gradient in eta is the
    # step-size gradient (G fixed), its gradient in G is dL/dg_i, the same vector v for every step i.
    e_img = torch.tensor(eta_img, dtype=lr_image.dtype, device=device, requires_grad=True)
    e_txt = torch.tensor(eta_txt, dtype=lr_text.dtype, device=device, requires_grad=True)
    G = {**{f"image_encoder.{k}": v.requires_grad_(True) for k, v in sum_img.items()},
         **{f"text_head.{k}": v.requires_grad_(True) for k, v in sum_txt.items()}}
    final = {k: v - (e_img if k.startswith("image_encoder.") else e_txt) * G[k] for k, v in theta0.items()}
    objective = matching_loss(final, theta0, target, merge_towers)
    grads = torch.autograd.grad(objective, [e_img, e_txt, *G.values()])
    for lr, g in ((lr_image, grads[0]), (lr_text, grads[1])):
        lr.grad = g if lr.grad is None else lr.grad + g
    v = split_towers(dict(zip(G, grads[2:], strict=True)))

    # Phase 2: one step at a time, d(v . g_i)/d(this step's data), accumulated into the data's .grad.
    inputs = [t for t in (images, text, *target_params) if t.requires_grad]
    for (ip, tp), rng, idx in zip(states, rng_states, batches, strict=True):
        if replay_dropout:
            _set_rng_state(rng, device)
        t_b = batch_target(idx) if batch_target is not None else None
        g_img, g_txt = step_grad(ip, tp, images[idx], text[idx], t_b)
        phi = (sum((v["image_encoder"][k] * g).sum() for k, g in g_img.items())
               + sum((v["text_head"][k] * g).sum() for k, g in g_txt.items()))
        phi.backward(inputs=inputs)
    _set_rng_state(after_phase1, device)
    return objective.detach()


def clamp_step_sizes(floor: float, *lrs: torch.Tensor) -> None:
    """Keep learned step sizes at or above a positive ``floor`` (0: no floor), so a noisy meta-step cannot
    make a student step go uphill (MTT-VL's learned lrs crossed zero on ``shapes``; LoRS's ``--clamp_lr``)."""
    if floor > 0:
        with torch.no_grad():
            for lr in lrs:
                lr.clamp_(min=floor)


__all__ = ["ExpertFields", "SNAPSHOT_CACHE_BYTES", "SnapshotCache", "clamp_step_sizes", "cycling_batches",
           "ensure_experts", "join_towers", "matching_loss", "random_batches", "sample_start", "student_loss",
           "tesla_gradient", "unroll"]
