"""The shared evaluation: train fresh students on a distilled set, score retrieval on the test split.

The two published protocols differ only in which parts train and how text enters (subclasses); the
loop, the optimiser, the selection rule and the scoring are written once here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..data.images import ImageStore
from ..data.splits import Dataset, RetrievalSplit
from ..distilled import DistilledSet
from ..encoders.backbone import Backbone
from ..encoders.heads import DualEncoder, ProjectionHead, contrastive_loss, head
from ..encoders.losses import LOSS_KINDS
from ..errors import UsageError
from ..metrics import METRIC_NAMES, retrieval_metrics
from ..params import apply_overrides, identity_dict, param, variant_label
from ..progress import ProgressFn
from . import aids
from .compat import check_text, images_for

STUDENT_MODES = ("auto", "together", "one-by-one")


@dataclass
class EvalParams:
    epochs: int = param(100, ge=1)
    batch_size: int = param(128, ge=1)
    lr_encoder: float | None = param(None, gt=0)  # None: the backbone's default (paper: 0.01)
    lr_projection: float | None = param(None, gt=0)  # None: the backbone's default (paper: 0.1)
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(5e-4, ge=0)
    lr_decay_epoch: int | None = param(None, ge=1)  # None: epochs // 2; the lr is multiplied by 0.1 there
    n_students: int = param(5, ge=1)
    selection: str = param("final", choices=("final", "val"))  # final epoch, or best r_mean on val (never test)
    val_every: int = param(10, ge=1)  # only with selection=val
    use_learned_lrs: bool = True  # frozen-text: take learned step sizes a set carries (MTT-VL, LoRS)
    # frozen-text: train students with the learned similarity and soft-label loss a set carries (LoRS's
    # evaluation); false scores the same set with plain InfoNCE. Added later: in a result's identity only when
    # set, so sets without a similarity keep their records.
    use_learned_similarity: bool = param(True, omit_default=True)
    # The student's loss, overriding the set's ("": the set's, else InfoNCE).
    student_loss: str = param("", choices=("", *LOSS_KINDS), omit_default=True)
    # Aids for sets that carry none (protocols/aids.py): step sizes chosen on val for this set (replacing learned
    # ones), and a full-data teacher's similarity as the students' targets (replacing a learned one).
    tune_lrs: bool = param(False, omit_default=True)
    teacher_similarity: bool = param(False, omit_default=True)
    # How students train: together (torch.func.vmap; what GPUs want) or one by one; "auto" picks per device.
    # Operational: both give the same students within float tolerance.
    students: str = param("auto", choices=STUDENT_MODES, operational=True)

    def inactive_fields(self) -> set[str]:
        return {"val_every"} if self.selection == "final" else set()


# The embedded datasets are a CPU sanity benchmark: fewer epochs and students than the paper's 100 x 5,
# and lower learning rates: with the tiny encoders the paper's 0.01 / 0.1 collapse some students to chance
# (shapes *val* split, random N=200 seed 1, two students: 37.5 / 2.9 r_mean; 0.003 / 0.03: 41.7 / 39.7;
# 0.001 / 0.01: 41.5 / 39.3; random N=100 seed 0: 26.4 / 16.9 against 28.8 / 28.9).
# ``tiny-vit`` uses the same lrs: checked on the *val* split (random sets, two students each, r_mean per student),
# trainable-text N=100 seed 0: 0.01 / 0.1: 18.5 / 25.2; 0.003 / 0.03: 26.4 / 26.9; 0.001 / 0.01: 20.4 / 21.3;
# N=200 seed 1: 28.5 / 19.5; 33.2 / 33.2; 32.5 / 32.3 (the paper's lrs collapse ViT students too); frozen-text
# N=100 seed 0: 24.1 / 23.7; 22.3 / 22.2; 17.5 / 17.1. 0.003 / 0.03 is best or within 1.7 of it, and one setting
# for both backbones keeps the transfer matrix's columns one evaluation.
EMBEDDED_DEFAULTS = {"epochs": 40, "n_students": 2, "lr_encoder": 0.003, "lr_projection": 0.03}


@dataclass
class EvalResult:
    per_student: list[dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float | None]
    params: dict
    selected_epochs: list[int]
    lrs: dict[str, float]
    seconds: float
    notes: list[str] = field(default_factory=list)
    aids: list[str] = field(default_factory=list)  # what the evaluation handed the students (protocols/aids.py)
    # ``evaluate(also_score=...)``: the same final students scored on other splits (split -> one dict each)
    other_splits: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def summarize(per_student: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float | None]]:
    """Mean and sample standard deviation (ddof=1); no std (None) for a single student, never a fake 0."""
    mean = {m: float(np.mean([s[m] for s in per_student])) for m in METRIC_NAMES}
    std = {m: float(np.std([s[m] for s in per_student], ddof=1)) if len(per_student) > 1 else None
           for m in METRIC_NAMES}
    return mean, std


# How a student's text enters: (model, sample indices, the text head's dropout mask or None) -> projected
# text features.
TextBatches = Callable[[DualEncoder, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# A student's loss on a batch: (projected image features, projected text features, sample indices) -> scalar.
StudentLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class PairImages:
    """The training split's pairs as a student's images, read from the decoded-image store batch by batch:
    the ``full-data`` ceiling trains on every pair without a copy of the split in memory."""

    def __init__(self, store: ImageStore, pair_image: np.ndarray, device: torch.device) -> None:
        self.store, self.pair_image, self.device = store, np.asarray(pair_image), device

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.pair_image), 3, self.store.size, self.store.size)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.store.batch(self.pair_image[idx.cpu().numpy()]).to(self.device, non_blocking=True)


@dataclass
class StudentData:
    """What a protocol's students train on: inputs of the trained image tower (images, or frozen image
    features) and the text, both indexed by pair; ``text_features`` when the text side is a head over fixed
    features (what lets students train together)."""

    images: torch.Tensor | PairImages
    text: TextBatches
    text_features: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.images.shape[0]


class HeadDropout:
    """Each student's dropout masks for its projection heads, drawn from its own generator: the same masks
    whether the students train one by one or together, so both give the same students."""

    def __init__(self, seed: int, p: float, dim: int, image_head: bool, device: torch.device) -> None:
        self.gen = torch.Generator().manual_seed(int(seed) * 2 + 1_000_003)  # apart from the batch-order stream
        self.p, self.dim, self.image_head, self.device = p, dim, image_head, device

    def draw(self, batch: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        keep = (torch.rand(2 if self.image_head else 1, batch, self.dim, generator=self.gen) >= self.p).float()
        keep = keep.to(self.device, non_blocking=True)
        return (keep[0] if self.image_head else None), keep[-1]


class Protocol:
    name: str = ""
    version: str = ""
    accepts: tuple[str, ...] = ()
    text_trainable: bool = False
    image_head: bool = False
    description: str = ""
    # Parameters this protocol never reads: they leave its results' identities and variant labels.
    inactive_params: frozenset[str] = frozenset()

    # ---- what subclasses define -------------------------------------------------------------------
    def student_text(self, distilled: DistilledSet, dataset: Dataset, backbone: Backbone, device: torch.device,
                     cache_dir) -> tuple[TextBatches, torch.Tensor | None]:
        """How the set's text enters a student, and the fixed features behind it when the text side is a head
        over them (None when text passes through a trained encoder)."""
        raise NotImplementedError

    def test_text_features(self, model: DualEncoder, split: RetrievalSplit, backbone: Backbone,
                           device: torch.device, cache: dict) -> torch.Tensor:
        raise NotImplementedError

    def student_loss(self, distilled: DistilledSet, params: EvalParams,
                     device: torch.device) -> tuple[StudentLoss | None, list[str]]:
        """The students' loss and notes about it; None: InfoNCE with diagonal targets (``contrastive_loss``)."""
        return None, []

    def learning_rates(self, distilled: DistilledSet, backbone: Backbone, params: EvalParams) -> tuple[dict[str, float], list[str]]:
        params = self.resolve_params(params, backbone)
        return {"encoder": params.lr_encoder, "projection": params.lr_projection}, []

    # ---- shared -----------------------------------------------------------------------------------
    def default_params(self, dataset_name: str) -> EvalParams:
        """The published setting, or the embedded datasets' CPU setting; ``None`` fields are resolved later."""
        from ..data import EMBEDDED

        params = EvalParams()
        if dataset_name in EMBEDDED:
            params = apply_overrides(params, EMBEDDED_DEFAULTS)
        return params

    def resolve_params(self, params: EvalParams, backbone: Backbone) -> EvalParams:
        """Fill every ``None`` from the backbone and the epochs, so identities hold the values actually used."""
        return dataclasses.replace(
            params,
            lr_encoder=backbone.lr_encoder if params.lr_encoder is None else params.lr_encoder,
            lr_projection=backbone.lr_projection if params.lr_projection is None else params.lr_projection,
            lr_decay_epoch=max(1, params.epochs // 2) if params.lr_decay_epoch is None else params.lr_decay_epoch,
        )

    def identity(self, params: EvalParams) -> dict:
        """The parameters that define this protocol's result (resolved, active, read by this protocol)."""
        return {k: v for k, v in identity_dict(params).items() if k not in self.inactive_params}

    def variant(self, params: EvalParams, defaults: EvalParams, derived: set[str] | frozenset[str] = frozenset()) -> str:
        """How an evaluation differs from this protocol's defaults (both resolved), e.g. ``epochs=2``."""
        label = variant_label(params, defaults, derived)
        return ",".join(item for item in label.split(",") if item and item.split("=", 1)[0] not in self.inactive_params)

    def check_compatible(self, distilled: DistilledSet, backbone: Backbone) -> None:
        """Refuse what this protocol cannot read: a text kind it does not accept, or embeddings outside the
        backbone's text tower (``compat.check_text``). Images of another resolution are resized instead."""
        if distilled.text_kind not in self.accepts:
            raise UsageError(
                f"protocol {self.name!r} cannot evaluate text of kind {distilled.text_kind!r}; it accepts "
                f"{', '.join(self.accepts)}. Try --protocol frozen-text."
            )
        check_text(distilled, backbone)

    # ---- what students are and what they see -------------------------------------------------------
    def build_student(self, backbone: Backbone, seed: int, device: torch.device) -> DualEncoder:
        """A fresh student: pretrained encoders and projection heads initialised from ``seed``."""
        return backbone.dual_encoder(text_trainable=self.text_trainable, image_head=self.image_head, seed=seed,
                                     device=device)

    def student_images(self, distilled: DistilledSet, dataset: Dataset, backbone: Backbone, device: torch.device,
                       cache_dir) -> torch.Tensor | PairImages:
        """The set's images as the student's image tower takes them (the training split's, for a reference)."""
        if distilled.reference is not None:
            store = ImageStore(dataset.train.image_paths, backbone.image_size, cache_dir, dataset.train.fingerprint,
                               backbone.mean, backbone.std)
            return PairImages(store, dataset.train.pair_image, device)
        return distilled.images.to(device)

    def student_data(self, distilled: DistilledSet, dataset: Dataset, backbone: Backbone, device: torch.device,
                     cache_dir) -> StudentData:
        text, features = self.student_text(distilled, dataset, backbone, device, cache_dir)
        return StudentData(self.student_images(distilled, dataset, backbone, device, cache_dir), text, features)

    def students_mode(self, data: StudentData, params: EvalParams, device: torch.device) -> tuple[str, str]:
        """("together" | "one-by-one", why). Together (``torch.func.vmap`` over stacked students) needs a text
        side that is a head over fixed features and final-epoch selection; it pays on GPUs, where it turns
        n_students small kernels into one, while on CPUs the sequential loop is faster (measured in
        BENCHMARKS.md: a vmapped convolution with per-student weights lowers to a grouped convolution)."""
        if data.text_features is None:
            # Measured with transformers 5.24: vmap refuses a BERT forward given a padding mask (its mask builder
            # branches on the mask's values, masking_utils._ignore_bidirectional_mask_sdpa); a pre-built additive
            # 4-D mask vmaps (max difference 1e-6), but the tower's own dropout draws from torch's global stream,
            # so stacked students could not get the masks the sequential loop gives them.
            return "one-by-one", ("the text encoder trains: its dropout (inside Hugging Face's layers, from torch's "
                                  "global stream) cannot be matched under vmap")
        if params.selection != "final":
            return "one-by-one", "selection on val keeps each student's best epoch"
        if params.students == "one-by-one" or (params.students == "auto" and device.type != "cuda"):
            return "one-by-one", "the sequential loop is the faster one on CPUs" if params.students == "auto" else "asked for"
        return "together", "torch.func.vmap over the stacked students"

    def evaluate(self, distilled: DistilledSet, dataset: Dataset, backbone: Backbone, params: EvalParams,
                 seed: int, device: torch.device, cache_dir, progress: ProgressFn | None = None,
                 also_score: tuple[str, ...] = ()) -> EvalResult:
        """Train the students on the set and score them on test; ``also_score`` names other splits (``val``)
        to score the very same students on (calibration measures val and test from one training)."""
        params = self.resolve_params(params, backbone)
        self.check_compatible(distilled, backbone)
        start = time.perf_counter()
        distilled, image_notes = images_for(distilled, backbone)
        backbone.to(device)
        # With eval.tune_lrs the search starts from the protocol's own lrs, never from learned ones.
        lrs, notes = (Protocol.learning_rates(self, distilled, backbone, params) if params.tune_lrs
                      else self.learning_rates(distilled, backbone, params))
        notes = image_notes + notes
        if params.teacher_similarity:
            loss, loss_notes = aids.teacher_loss(distilled, dataset, backbone, params, device, cache_dir, progress)
        else:
            loss, loss_notes = self.student_loss(distilled, params, device)
        notes = notes + loss_notes
        test_images = ImageStore(dataset.test.image_paths, backbone.image_size, cache_dir,
                                 dataset.test.fingerprint, backbone.mean, backbone.std)
        val_images = None
        if params.selection == "val":
            val_images = ImageStore(dataset.val.image_paths, backbone.image_size, cache_dir,
                                    dataset.val.fingerprint, backbone.mean, backbone.std)
        data = self.student_data(distilled, dataset, backbone, device, cache_dir)
        used = self.aids_used(distilled, params, lrs, loss)
        if params.tune_lrs:
            lrs, lr_notes = aids.search_learning_rates(self, data, dataset, backbone, params, lrs, seed, device,
                                                       cache_dir, loss, progress)
            carried = ["the set's learned step sizes are replaced by these"] if distilled.has_learned_lrs else []
            notes = notes + lr_notes + carried
        cache: dict = {"cache_dir": cache_dir}
        seeds = student_seeds(seed, params.n_students)
        models = [self.build_student(backbone, s, device) for s in seeds]
        mode, why = self.students_mode(data, params, device)
        notes.append(f"students trained {mode} ({why})")
        if mode == "together":
            self.train_together(models, data, params, lrs, seeds, device, loss, backbone.projection_dim, progress)
            selected = [params.epochs] * len(models)
        else:
            selected = []
            for k, (model, student_seed) in enumerate(zip(models, seeds, strict=True)):
                selected.append(self.train_student(
                    model, data, params, lrs, student_seed, device,
                    validate=(lambda m: self.score(m, dataset.val, val_images, backbone, device, cache))
                    if val_images is not None else None,
                    progress=(lambda d, t, k=k: progress(f"student {k + 1}/{params.n_students}", d, t)) if progress else None,
                    loss=loss, dim=backbone.projection_dim))
        per_student = [self.score(m, dataset.test, test_images, backbone, device, cache) for m in models]
        other: dict[str, list[dict[str, float]]] = {}
        for name in also_score:
            split = {"val": dataset.val, "test": dataset.test}[name]
            store = val_images if name == "val" and val_images is not None else ImageStore(
                split.image_paths, backbone.image_size, cache_dir, split.fingerprint, backbone.mean, backbone.std)
            other[name] = [self.score(m, split, store, backbone, device, cache) for m in models]
        mean, std = summarize(per_student)
        return EvalResult(per_student, mean, std, asdict(params), selected, lrs,
                          time.perf_counter() - start, notes, used, other)

    def aids_used(self, distilled: DistilledSet, params: EvalParams, lrs: dict[str, float],
                  loss: StudentLoss | None) -> list[str]:
        """The aids an evaluation hands its students: step sizes other than the protocol's (learned, or tuned on
        val) and targets other than the identity (a learned or a teacher's similarity)."""
        used = []
        own = {"encoder": params.lr_encoder, "projection": params.lr_projection}
        if params.tune_lrs:
            used.append(aids.VAL_TUNED_LRS)
        elif any(lrs[k] != own[k] for k in own if f"lr_{k}" not in self.inactive_params):
            used.append(aids.LEARNED_LRS)
        if params.teacher_similarity:
            used.append(aids.TEACHER_SIMILARITY)
        elif loss is not None and distilled.has_similarity and params.use_learned_similarity:
            used.append(aids.LEARNED_SIMILARITY)
        return used

    def _optimizer(self, named: dict[str, torch.Tensor], model: DualEncoder, lrs: dict[str, float],
                   params: EvalParams) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:
        """SGD with momentum over the encoder group and the head group, x0.1 at ``lr_decay_epoch``."""
        heads = {id(p) for p in model.head_parameters()}
        head_names = {n for n, p in model.named_parameters() if id(p) in heads}
        encoder_names = {n for n, p in model.named_parameters() if p.requires_grad and id(p) not in heads}
        groups = [{"params": [named[n] for n in sorted(encoder_names) if n in named], "lr": lrs["encoder"]},
                  {"params": [named[n] for n in sorted(head_names) if n in named], "lr": lrs["projection"]}]
        opt = torch.optim.SGD([g for g in groups if g["params"]], momentum=params.momentum,
                              weight_decay=params.weight_decay)
        decay = params.lr_decay_epoch or max(1, params.epochs // 2)  # resolved by evaluate; direct callers may not
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[decay], gamma=0.1)

    def train_student(self, model: DualEncoder, data: StudentData, params: EvalParams, lrs: dict[str, float],
                      seed: int, device: torch.device, validate: Callable[[DualEncoder], dict[str, float]] | None = None,
                      progress: Callable[[int, int], None] | None = None, loss: StudentLoss | None = None,
                      dim: int | None = None) -> int:
        """One student, one batch at a time; returns the selected epoch (1-based). ``loss``: the batch loss
        (``student_loss``); None is InfoNCE with diagonal targets. Batch order and head dropout come from the
        student's own generators (``seed``); dropout inside a trained text encoder from torch's, seeded too."""
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        opt, sched = self._optimizer(named, model, lrs, params)
        gen = torch.Generator().manual_seed(seed)
        dropout = HeadDropout(seed, model.text_head.dropout.p, dim or model.text_head.norm.normalized_shape[0],
                              isinstance(model.image_head, ProjectionHead), device)
        best = (-1.0, params.epochs, None)
        # Progress counts batches, not epochs: a full-data epoch runs for minutes (tens of minutes under
        # trainable-text), and a first line only after it would leave a log silent that long.
        total, done = _batches(data, params), 0
        if progress:
            progress(0, total)
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)  # dropout inside a trained text encoder
            for epoch in range(1, params.epochs + 1):
                model.train()
                if not self.text_trainable:
                    model.text_encoder.eval()
                for idx in torch.randperm(data.n, generator=gen).split(params.batch_size):
                    idx_dev = idx.to(device)
                    keep_img, keep_txt = dropout.draw(len(idx))
                    _, g_img = model.image_features(data.images[idx_dev], keep_img)
                    g_txt = data.text(model, idx_dev, keep_txt)
                    batch_loss = contrastive_loss(g_img, g_txt) if loss is None else loss(g_img, g_txt, idx_dev)
                    if not torch.isfinite(batch_loss):
                        raise FloatingPointError(
                            f"student loss became {batch_loss.item()} at epoch {epoch}; lower eval.lr_encoder / eval.lr_projection"
                        )
                    opt.zero_grad(set_to_none=True)
                    batch_loss.backward()
                    opt.step()
                    done += 1
                    if progress:
                        progress(done, total)
                sched.step()
                if validate is not None and (epoch % params.val_every == 0 or epoch == params.epochs):
                    r = validate(model)["r_mean"]
                    if r > best[0]:
                        best = (r, epoch, copy.deepcopy(model.state_dict()))
        if validate is not None and best[2] is not None:
            model.load_state_dict(best[2])
        return best[1]

    def train_together(self, models: list[DualEncoder], data: StudentData, params: EvalParams, lrs: dict[str, float],
                       seeds: list[int], device: torch.device, loss: StudentLoss | None, dim: int,
                       progress: ProgressFn | None = None) -> None:
        """All students in one computation: their trainable parameters stacked (``torch.func``), each with its
        own initialisation, batch order and dropout masks (the very ones ``train_student`` draws), so the result
        equals the sequential loop within float tolerance. SGD's update is elementwise, so stepping the stacked
        tensors is stepping each student."""
        steps = [_TrainedPart(m) for m in models]
        for m in models:
            m.train()
            m.text_encoder.eval()
        stacked, buffers = stack_module_state(steps)
        template = copy.deepcopy(steps[0]).to("meta")
        opt, sched = self._optimizer(stacked, _Prefixed(models[0]), lrs, params)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        dropouts = [HeadDropout(s, models[0].text_head.dropout.p, dim, isinstance(models[0].image_head, ProjectionHead),
                                device) for s in seeds]
        text = data.text_features

        def one(p, b, x, t, keep_img, keep_txt, idx):
            g_img, g_txt = functional_call(template, (p, b), (x, t, keep_img, keep_txt))
            return contrastive_loss(g_img, g_txt) if loss is None else loss(g_img, g_txt, idx)

        batched = vmap(one, in_dims=(0, 0, 0, 0, 0, 0, 0), randomness="error")
        what = f"{len(models)} students together"
        total, done = _batches(data, params), 0
        if progress:
            progress(what, 0, total)
        for epoch in range(1, params.epochs + 1):
            orders = [torch.randperm(data.n, generator=g).split(params.batch_size) for g in gens]
            for batch in zip(*orders, strict=True):
                idx = torch.stack(batch).to(device)  # [students, batch]
                keeps = [d.draw(idx.shape[1]) for d in dropouts]
                keep_txt = torch.stack([k[1] for k in keeps])
                keep_img = torch.stack([k[0] for k in keeps]) if keeps[0][0] is not None else keep_txt
                x = torch.stack([data.images[i] for i in idx])
                losses = batched(stacked, buffers, x, text[idx], keep_img, keep_txt, idx)
                if not bool(torch.isfinite(losses).all()):
                    raise FloatingPointError(f"a student's loss became non-finite at epoch {epoch}; lower eval.lr_encoder / "
                                             "eval.lr_projection")
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                done += 1
                if progress:
                    progress(what, done, total)
            sched.step()
        with torch.no_grad():
            for k, step in enumerate(steps):
                for name, p in step.named_parameters():
                    p.copy_(stacked[name][k])

    @torch.no_grad()
    def score(self, model: DualEncoder, split: RetrievalSplit, store: ImageStore, backbone: Backbone,
              device: torch.device, cache: dict) -> dict[str, float]:
        model.eval()
        feats = []
        for idx in np.array_split(np.arange(len(store)), max(1, len(store) // 256)):
            feats.append(model.image_features(store.batch(idx).to(device))[1].float())
        img = torch.nn.functional.normalize(torch.cat(feats), dim=-1)
        txt = torch.nn.functional.normalize(self.test_text_features(model, split, backbone, device, cache).float(), dim=-1)
        return retrieval_metrics(img @ txt.T, split.img2txt)


def _batches(data: StudentData, params: EvalParams) -> int:
    """How many batches a student trains on: what its progress counts."""
    return params.epochs * math.ceil(data.n / params.batch_size)


class _TrainedPart(nn.Module):
    """The parts of a student that train when its text side is a head over fixed features: the image tower
    and both heads, as one module whose forward ``torch.func.functional_call`` can run on stacked weights."""

    def __init__(self, model: DualEncoder) -> None:
        super().__init__()
        self.m = nn.ModuleDict({"image_encoder": model.image_encoder, "image_head": model.image_head,
                                "text_head": model.text_head})

    def forward(self, images: torch.Tensor, text: torch.Tensor, keep_img: torch.Tensor,
                keep_txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g_img = head(self.m["image_head"], self.m["image_encoder"](images), keep_img)
        return g_img, head(self.m["text_head"], text, keep_txt)


class _Prefixed:
    """A student's parameter names as ``_TrainedPart`` stacks them (``m.image_encoder...``), for ``_optimizer``."""

    def __init__(self, model: DualEncoder) -> None:
        self.model = model

    def head_parameters(self) -> list[nn.Parameter]:
        return self.model.head_parameters()

    def named_parameters(self):
        for name, p in self.model.named_parameters():
            if not name.startswith("text_encoder."):
                yield f"m.{name}", p


def student_seeds(seed: int, n_students: int) -> list[int]:
    """The seeds of an evaluation's students (initialisation, batch order, dropout)."""
    return [seed * 1000 + k for k in range(n_students)]
