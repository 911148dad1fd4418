"""``forgetting``: the pairs a real-data training run forgets most often (Toneva et al., ICLR 2019), the
coreset baseline of MTT-VL's and LoRS's tables.

Neither paper's code contains it; the definition we adopt for retrieval (shared/reference/methods-notes.md 3):
- train the frozen-text model on the real pairs with the experts' recipe (SGD, lr 0.1, no momentum, batch
  128, the same augmentation; ``experts.train_real_epoch``) for ``epochs`` epochs, seeded by the run's seed;
- at each forward pass a pair is *learned* when, within its batch, its image's top-1 text belongs to its
  own image (i2t), its text's top-1 image is its own image (t2i), both (the default), or either;
- a *forgetting event* is a pair learned at its previous presentation and not learned now;
- pairs are ranked by events, most first; pairs never learned rank first of all (Toneva; ``unlearned=ignore``
  ranks them by their events, i.e. zero), and ties are broken by a seeded permutation, never index order.
Correctness depends on the batch size, which is therefore part of the settings. The statistics of all four
criteria are kept per run in the cache, content-addressed like the expert trajectories, so sizes and
criteria share one training run.

A known trap (DeepCore's version): ``events[batch][mask] += 1`` increments a copy made by the first fancy
index and leaves the counts at zero; the counts here are indexed once, ``events[batch[mask]] += 1``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors.torch import load_file, save_file

from mmdd_bench.data.augment import augment_identity
from mmdd_bench.data.real_batches import RealBatches
from mmdd_bench.distilled import DistilledSet
from mmdd_bench.errors import UsageError
from mmdd_bench.experts import train_real_epoch, trainable_parameters
from mmdd_bench.features import train_features
from mmdd_bench.method import DistillContext, Method
from mmdd_bench.pairs import real_pairs

FORGETTING_CODE_VERSION = "1"
CRITERIA = ("i2t", "t2i", "both", "either")
UNLEARNED = ("max", "ignore")


def batch_correctness(g_img: torch.Tensor, g_txt: torch.Tensor, image_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per pair of a batch, whether in-batch retrieval gets it right, by criterion. ``image_ids`` names each
    pair's image, so a caption of the same image (another pair in the batch) counts as right."""
    sim = F.normalize(g_img, dim=-1) @ F.normalize(g_txt, dim=-1).T
    i2t = image_ids[sim.argmax(1)] == image_ids
    t2i = image_ids[sim.argmax(0)] == image_ids
    return {"i2t": i2t, "t2i": t2i, "both": i2t & t2i, "either": i2t | t2i}


class ForgettingCounter:
    """Forgetting events and "ever learned" per pair, for every criterion."""

    def __init__(self, n: int) -> None:
        self.events = {c: torch.zeros(n, dtype=torch.long) for c in CRITERIA}
        self.ever_learned = {c: torch.zeros(n, dtype=torch.bool) for c in CRITERIA}
        self._previous = {c: torch.zeros(n, dtype=torch.bool) for c in CRITERIA}

    def update(self, idx: torch.Tensor, correct: dict[str, torch.Tensor]) -> None:
        """One presentation of the (distinct) pairs ``idx`` with their correctness now."""
        idx = idx.cpu()
        for c in CRITERIA:
            now = correct[c].cpu()
            forgotten = self._previous[c][idx] & ~now
            self.events[c][idx[forgotten]] += 1  # one index: a chained a[idx][mask] += 1 would update a copy
            self.ever_learned[c][idx[now]] = True
            self._previous[c][idx] = now

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"events.{c}": v for c, v in self.events.items()},
                **{f"ever_learned.{c}": v for c, v in self.ever_learned.items()}}


def forgetting_order(events: torch.Tensor, ever_learned: torch.Tensor, unlearned: str,
                     gen: torch.Generator) -> torch.Tensor:
    """Pair indices, most forgotten first (never learned before all when ``unlearned="max"``); ties in a
    seeded random order."""
    score = events.double()
    if unlearned == "max":
        score[~ever_learned] = float("inf")
    perm = torch.randperm(len(score), generator=gen)
    return perm[torch.argsort(-score[perm], stable=True)]


@dataclass
class ForgettingParams:
    epochs: int = 5
    lr: float = 0.1  # the experts' recipe: SGD lr 0.1, no momentum, no weight decay, batch 128
    weight_decay: float = 0.0  # MDM's coreset driver uses 5e-4
    batch_size: int = 128
    criterion: str = "both"  # when a pair counts as learned: i2t, t2i, both or either
    unlearned: str = "max"  # never-learned pairs rank first ("max", Toneva) or by their events ("ignore")

    def validate(self) -> None:
        if self.criterion not in CRITERIA:
            raise UsageError(f"forgetting.criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.unlearned not in UNLEARNED:
            raise UsageError(f"forgetting.unlearned must be one of {', '.join(UNLEARNED)}, got {self.unlearned!r}")
        if self.epochs < 2 or self.batch_size < 2 or self.lr <= 0 or self.weight_decay < 0:
            raise UsageError("forgetting needs epochs >= 2 (an event needs two presentations), batch_size >= 2, "
                             "lr > 0 and weight_decay >= 0")

    def training(self) -> dict:
        """What the statistics depend on (the criterion and ranking do not: all criteria are counted)."""
        return {"epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay, "batch_size": self.batch_size}


def forgetting_statistics(ctx: DistillContext, params: ForgettingParams) -> dict[str, torch.Tensor]:
    """The counts of one training run, read from the cache or computed once (one process at a time)."""
    identity = {"train": ctx.dataset.train.fingerprint, "dataset": ctx.dataset.name,
                "backbone": ctx.backbone.text_encoder_id, "image_size": ctx.backbone.image_size,
                "training": params.training(), "seed": ctx.seed, "augment": augment_identity(ctx.dataset),
                "code_version": FORGETTING_CODE_VERSION}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(ctx.cache_dir) / "forgetting" / f"{key}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            tensors = _count(ctx, params)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file(tensors, str(tmp), metadata={"identity": json.dumps(identity, sort_keys=True, default=str)})
            os.replace(tmp, path)
    return load_file(str(path))


def _count(ctx: DistillContext, params: ForgettingParams) -> dict[str, torch.Tensor]:
    dev, train = ctx.device, ctx.dataset.train
    _, text = train_features(train, ctx.train_images, ctx.backbone, dev, ctx.cache_dir)
    text = text.to(dev)
    image_ids = torch.as_tensor(train.pair_image).to(dev)
    counter = ForgettingCounter(train.n_pairs)

    def on_batch(idx: torch.Tensor, g_img: torch.Tensor, g_txt: torch.Tensor) -> None:
        counter.update(idx, batch_correctness(g_img, g_txt, image_ids[idx.to(dev)]))

    with torch.random.fork_rng(devices=[] if dev.type == "cpu" else [dev]):
        torch.manual_seed(ctx.seed)  # dropout and augmentation draws
        model = ctx.backbone.dual_encoder(text_trainable=False, image_head=False, seed=ctx.seed, device=dev)
        opt = torch.optim.SGD(list(trainable_parameters(model).values()), lr=params.lr, momentum=0.0,
                              weight_decay=params.weight_decay)
        gen = torch.Generator().manual_seed(ctx.seed)
        real_images = RealBatches(ctx.dataset, ctx.cache_dir, dev, ctx.backbone.image_size, ctx.backbone.mean,
                                  ctx.backbone.std)
        try:
            for epoch in range(1, params.epochs + 1):
                train_real_epoch(model, opt, text, train, real_images, params.batch_size, gen, dev,
                                 f"forgetting statistics (epoch {epoch})", on_batch=on_batch,
                                 progress=(lambda d, t, e=epoch: ctx.report(f"forgetting epoch {e}/{params.epochs}", d, t)))
        finally:
            real_images.close()
    return counter.tensors()


class Forgetting(Method):
    name = "forgetting"
    version = "1"
    default_protocol = "trainable-text"
    description = "the real pairs a training run forgets most often (in-batch retrieval), never-learned first"
    Params = ForgettingParams

    def text_kind(self, params: ForgettingParams) -> str:
        return "captions"

    def distill(self, ctx: DistillContext, params: ForgettingParams) -> DistilledSet:
        params.validate()
        stats = forgetting_statistics(ctx, params)
        events, ever = stats[f"events.{params.criterion}"], stats[f"ever_learned.{params.criterion}"]
        order = forgetting_order(events, ever, params.unlearned, torch.Generator().manual_seed(ctx.seed))
        chosen = order[:ctx.size]
        distilled = real_pairs(ctx, chosen.numpy(), self.name)
        distilled.meta["forgetting"] = {
            "criterion": params.criterion, "pairs_with_events": int((events > 0).sum()),
            "never_learned": int((~ever).sum()), "max_events": int(events.max()),
            "chosen_events_mean": round(float(events[chosen].double().mean()), 4),
            "chosen_events_min": int(events[chosen].min()), "chosen_never_learned": int((~ever[chosen]).sum()),
        }
        return distilled


__all__ = ["CRITERIA", "Forgetting", "ForgettingCounter", "ForgettingParams", "batch_correctness",
           "forgetting_order", "forgetting_statistics"]
