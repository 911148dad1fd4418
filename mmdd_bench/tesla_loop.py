"""The TESLA trajectory-matching loop that ``tesla-vl`` and ``lors`` share (Xu et al., ICML 2024).

Both methods learn pixels, sentence embeddings in the frozen text encoder's space and two step sizes, and
take ``trajectory.tesla_gradient`` of the per-tower matching loss; ``lors`` adds a learned similarity
(``LearnedSimilarity``) and stores N-1 pairs. The loop lives here, in a shared module, so that neither
method's file imports the other's (``tests/test_architecture.py``). The choices it makes are documented in
``methods/tesla_vl.py``; LoRS's published per-size settings (``PUBLISHED``) are the ones both take.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from mmdd_bench.checkpoint import resume_loop_state, save_loop_state
from mmdd_bench.distilled import DistilledSet
from mmdd_bench.encoders.losses import LOSS_KINDS
from mmdd_bench.errors import UsageError
from mmdd_bench.features import train_features
from mmdd_bench.method import DistillContext, Method
from mmdd_bench.pairs import initial_pairs
from mmdd_bench.timing import FiniteCheck, IterationTimer
from mmdd_bench.trajectory import (
    ExpertFields,
    SnapshotCache,
    clamp_step_sizes,
    cycling_batches,
    ensure_experts,
    matching_loss,
    sample_start,
    tesla_gradient,
    unroll,
)

GRADIENTS = ("tesla", "exact")


@dataclass
class TeslaParams(ExpertFields):
    iterations: int = 3000
    syn_steps: int = 8
    expert_epochs: int = 1
    max_start_epoch: int = 2
    num_experts: int = 20
    mini_batch: int = 20  # synthetic pairs per student step (all of them when the set is smaller)
    lr_images: float = 100.0
    lr_text: float = 100.0
    lr_lr: float = 0.01
    lr_init: float = 0.1  # initial learned step sizes (the experts' lr)
    lr_floor: float = 1e-3  # learned step sizes stay >= this (0: no floor, LoRS's code as published)
    momentum: float = 0.5  # of every synthetic parameter group (pixels, text, step sizes, similarity)
    loss: str = "wbce"  # the student's loss in the unroll, and the one its sets ask evaluation to use
    temperature: float = 0.07  # logits = cos / temperature (LoRS: 0.1 for COCO-500)
    merge_loss_branches: bool = False  # one normalised distance over both towers (LoRS's COCO scripts)
    gradient: str = "tesla"  # "tesla": two-phase, constant memory; "exact": mtt-vl's full unroll
    public_code_dropout: bool = False  # phase 2 draws fresh dropout masks, as LoRS's code does
    expert_lr: float = 0.1
    expert_batch: int = 128
    expert_dtype: str = "float32"
    expert_seed: int = 0
    # Operational, not part of a result's identity: iterations between checkpoints (0: never).
    checkpoint_every: int = dataclasses.field(default=100, metadata={"operational": True})

    def validate(self) -> None:
        scope = self.scope
        if min(self.iterations, self.syn_steps, self.expert_epochs, self.max_start_epoch, self.num_experts,
               self.mini_batch) < 1:
            raise UsageError(f"{scope}.iterations, syn_steps, expert_epochs, max_start_epoch, num_experts and "
                             "mini_batch must be >= 1")
        if self.loss not in LOSS_KINDS:
            raise UsageError(f"{scope}.loss must be one of {', '.join(LOSS_KINDS)}, got {self.loss!r}")
        if self.gradient not in GRADIENTS:
            raise UsageError(f"{scope}.gradient must be one of {', '.join(GRADIENTS)}, got {self.gradient!r}")
        if self.temperature <= 0 or self.lr_floor < 0:
            raise UsageError(f"{scope}.temperature must be > 0 and {scope}.lr_floor >= 0 (0: no floor)")
        self.expert_settings().validate()

    @property
    def scope(self) -> str:
        return "tesla-vl"


# LoRS's scripts (sh/*.sh of silicx/LoRS_Distill@8a712af, as read in shared/reference/methods-notes.md 1.7),
# per dataset and size; what a row leaves out keeps the defaults above. TESLA-VL takes the same rows without
# the similarity (the baseline ran with LoRS's code). Flickr-500's row is the published script, which its
# author reports is the wrong config (LoRS_Distill issue #7): it is kept, and its sets say so.
PUBLISHED = {
    ("flickr30k", 100): {"lr_images": 100.0, "lr_text": 100.0, "lr_sim": 10.0, "sim_rank": 10, "sim_alpha": 3.0},
    ("flickr30k", 200): {"lr_images": 1000.0, "lr_text": 1000.0, "lr_sim": 10.0, "sim_rank": 5, "sim_alpha": 1.0},
    ("flickr30k", 500): {"max_start_epoch": 3, "lr_images": 1000.0, "lr_text": 1000.0, "lr_sim": 100.0,
                         "sim_rank": 20, "sim_alpha": 0.01, "mini_batch": 40},
    ("coco", 100): {"lr_images": 1000.0, "lr_text": 1000.0, "lr_sim": 5.0, "sim_rank": 10, "sim_alpha": 1.0,
                    "merge_loss_branches": True},
    ("coco", 200): {"lr_images": 1000.0, "lr_text": 1000.0, "lr_sim": 50.0, "sim_rank": 20, "sim_alpha": 1.0,
                    "iterations": 2000, "merge_loss_branches": True},
    ("coco", 500): {"lr_images": 5000.0, "lr_text": 5000.0, "lr_sim": 500.0, "sim_rank": 40, "sim_alpha": 1.0,
                    "mini_batch": 30, "merge_loss_branches": True, "temperature": 0.1},
}
PUBLISHED_SIZES = (100, 200, 500)
BROKEN_PUBLISHED = {("flickr30k", 500): "LoRS's published Flickr-500 config is reported wrong by its own author "
                                        "(silicx/LoRS_Distill issue #7); its numbers and ours at this size are suspect"}


def published_row(dataset_name: str, size: int) -> tuple[str, int] | None:
    """The (dataset, size) row of ``PUBLISHED`` for this cell: the nearest published size (ties: smaller)."""
    if not any(d == dataset_name for d, _ in PUBLISHED):
        return None
    nearest = min(PUBLISHED_SIZES, key=lambda s: (abs(s - size), s))
    return dataset_name, nearest


class LearnedSimilarity(Protocol):
    """What the loop needs of a learned similarity (``lors``): its parameters and their lr, the target of a
    mini-batch (``S[idx][:, idx]``, differentiable in the parameters), and how a set stores it."""

    lr: float

    def parameters(self) -> dict[str, torch.Tensor]: ...

    def batch(self, idx: torch.Tensor) -> torch.Tensor: ...

    def extras(self) -> dict[str, torch.Tensor]: ...

    def describe(self) -> dict: ...


class TeslaMatching(Method):
    """The loop; a method subclasses it and names itself, its ``Params`` and its embedded settings."""

    default_protocol = "frozen-text"
    Params = TeslaParams

    def default_params(self, size: int, dataset_name: str):
        from mmdd_bench.data import EMBEDDED as EMBEDDED_DATASETS

        params = self.Params()
        names = {f.name for f in dataclasses.fields(params)}
        if dataset_name in EMBEDDED_DATASETS:
            return dataclasses.replace(params, **self.embedded_overrides(size))
        row = published_row(dataset_name, size)
        if row is not None:
            params = dataclasses.replace(params, **{k: v for k, v in PUBLISHED[row].items() if k in names})
        return params

    def embedded_overrides(self, size: int) -> dict:
        """Settings for the embedded (CPU) datasets at this size, chosen on val by each method."""
        raise NotImplementedError

    def text_kind(self, params) -> str:
        return "sentence_embeddings"

    # ---- what lors changes --------------------------------------------------------------------------
    def pairs_stored(self, params, size: int) -> int:
        """How many pairs a set for a budget of ``size`` stores."""
        return size

    def similarity(self, params, n: int, gen: torch.Generator, device: torch.device) -> LearnedSimilarity | None:
        return None

    def check_fits(self, ctx: DistillContext, params) -> None:
        """Raise a UsageError before any work if the set cannot keep its budget."""

    # ---- the loop -------------------------------------------------------------------------------------
    def distill(self, ctx: DistillContext, params) -> DistilledSet:
        params.validate()
        self.check_fits(ctx, params)
        store, expert_summary = ensure_experts(ctx, params.expert_settings(), params.num_experts,
                                               params.expert_train_epochs)
        with torch.random.fork_rng(devices=[] if ctx.device.type == "cpu" else [ctx.device]):
            torch.manual_seed(ctx.seed)  # dropout in the student
            distilled = self._distill(ctx, params, store)
        distilled.meta["experts"] = expert_summary
        notes = [f"gradient: {params.gradient}; student loss {params.loss} at logit scale "
                 f"{1 / params.temperature:.2f}; step-size floor {params.lr_floor:g}"]
        row = published_row(ctx.dataset.name, ctx.size)
        if row in BROKEN_PUBLISHED:
            notes.append(BROKEN_PUBLISHED[row])
        distilled.meta["notes"] = notes
        return distilled

    def _distill(self, ctx: DistillContext, params, store) -> DistilledSet:
        dev, train = ctx.device, ctx.dataset.train
        n = self.pairs_stored(params, ctx.size)
        rng = np.random.default_rng(ctx.seed)
        gen = torch.Generator().manual_seed(ctx.seed)
        init_images, init_pairs = initial_pairs(train, n, rng)
        _, text_features = train_features(train, ctx.train_images, ctx.backbone, dev, ctx.cache_dir)
        syn_images = ctx.train_images.batch(init_images).to(dev).requires_grad_(True)
        syn_text = text_features[init_pairs].clone().to(dev).requires_grad_(True)
        lr_image = torch.tensor(params.lr_init, device=dev).requires_grad_(True)
        lr_text = torch.tensor(params.lr_init, device=dev).requires_grad_(True)
        sim = self.similarity(params, n, gen, dev)
        sim_params = sim.parameters() if sim is not None else {}
        groups = [{"params": [syn_images], "lr": params.lr_images}, {"params": [syn_text], "lr": params.lr_text},
                  {"params": [lr_image, lr_text], "lr": params.lr_lr}]
        if sim is not None:
            groups.append({"params": list(sim_params.values()), "lr": sim.lr})
        opt = torch.optim.SGD(groups, momentum=params.momentum)
        learned = {"syn_images": syn_images, "syn_text": syn_text, "lr_image": lr_image, "lr_text": lr_text,
                   **{f"sim.{k}": v for k, v in sim_params.items()}}
        momentum = {name: (opt, t) for name, t in learned.items()}

        model = ctx.backbone.dual_encoder(text_trainable=False, image_head=False, seed=ctx.seed, device=dev)
        model.train()
        model.text_encoder.eval()
        scale = math.log(1 / params.temperature)
        batch_target = sim.batch if sim is not None else None
        first, losses = (resume_loop_state(ctx.checkpoint_dir, learned, momentum, gen, rng, dev)
                         if params.checkpoint_every else (0, []))
        snapshot = SnapshotCache(store, params.num_experts, dev)
        timer, finite = IterationTimer(dev), FiniteCheck(dev)
        for it in range(first, params.iterations):
            if params.checkpoint_every and ctx.checkpoint_dir is not None and it > first and it % params.checkpoint_every == 0:
                save_loop_state(ctx.checkpoint_dir, learned, momentum, gen, rng, dev, it, losses)
            expert, start_epoch = sample_start(rng, params.num_experts, params.max_start_epoch)
            with timer.part("data"):
                start = snapshot(expert, start_epoch)
                target = snapshot(expert, start_epoch + params.expert_epochs)
                batches = cycling_batches(n, params.mini_batch, params.syn_steps, gen, dev)
            with timer.part("model"):
                opt.zero_grad(set_to_none=True)
                if params.gradient == "tesla":
                    loss = tesla_gradient(model, start, target, syn_images, syn_text, lr_image, lr_text, batches,
                                          scale, params.loss, batch_target, list(sim_params.values()),
                                          params.merge_loss_branches, replay_dropout=not params.public_code_dropout)
                else:
                    student = unroll(model, start, syn_images, syn_text, lr_image, lr_text, batches, scale,
                                     params.loss, batch_target)
                    loss = matching_loss(student, start, target, params.merge_loss_branches)
                    loss.backward(inputs=list(learned.values()))
                finite.update(loss, it, f"{self.name}'s matching loss; lower {self.name}.lr_images / lr_text / lr_lr")
                opt.step()
                clamp_step_sizes(params.lr_floor, lr_image, lr_text)
            if it % 10 == 0:
                losses.append(round(loss.item(), 4))
            timer.tick()
            if (it + 1) % 5 == 0 or it + 1 == params.iterations:
                ctx.report(f"{self.name} N={ctx.size} seed={ctx.seed}", it + 1, params.iterations)
        extras = {"lr_image": lr_image.detach().cpu(), "lr_text": lr_text.detach().cpu(),
                  "source_pairs": torch.as_tensor(init_pairs, dtype=torch.long)}
        finite.check(params.iterations - 1, f"{self.name}'s matching loss; lower {self.name}.lr_images / lr_text / lr_lr")
        meta = {"timings": {"iterations": params.iterations, **timer.summary(), "resumed_from_iteration": first},
                "loss_every_10": losses, "learned_lrs": {"image": lr_image.item(), "text": lr_text.item()},
                "student_loss": params.loss}
        if sim is not None:
            extras.update({k: v.detach().cpu() for k, v in sim.extras().items()})
            meta["similarity"] = {**sim.describe(), "loss": params.loss, "temperature_distill": params.temperature}
        return DistilledSet(
            images=syn_images.detach().cpu(), text_kind="sentence_embeddings", text_embeddings=syn_text.detach().cpu(),
            encoder_id=ctx.backbone.text_encoder_id, extras=extras, meta=meta, budget_pairs=ctx.size,
        )


__all__ = ["BROKEN_PUBLISHED", "PUBLISHED", "LearnedSimilarity", "TeslaMatching", "TeslaParams", "published_row"]
