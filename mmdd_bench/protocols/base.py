"""The shared evaluation: train fresh students on a distilled set, score retrieval on the test split.

The two published protocols differ only in which parts train and how text enters (subclasses); the
loop, the optimiser, the selection rule and the scoring are written once here.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..data.images import ImageStore
from ..data.splits import Dataset, RetrievalSplit
from ..distilled import DistilledSet
from ..encoders.backbone import Backbone
from ..encoders.heads import DualEncoder, contrastive_loss
from ..encoders.losses import LOSS_KINDS
from ..errors import UsageError
from ..metrics import METRIC_NAMES, retrieval_metrics
from ..params import apply_overrides, identity_dict, param, variant_label
from ..progress import ProgressFn


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

    def inactive_fields(self) -> set[str]:
        return {"val_every"} if self.selection == "final" else set()


# The embedded datasets are a CPU sanity benchmark: fewer epochs and students than the paper's 100 x 5,
# and lower learning rates: with the tiny encoders the paper's 0.01 / 0.1 collapse some students to chance
# (shapes *val* split, random N=200 seed 1, two students: 37.5 / 2.9 r_mean; 0.003 / 0.03: 41.7 / 39.7;
# 0.001 / 0.01: 41.5 / 39.3; random N=100 seed 0: 26.4 / 16.9 against 28.8 / 28.9).
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


def summarize(per_student: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float | None]]:
    """Mean and sample standard deviation (ddof=1); no std (None) for a single student, never a fake 0."""
    mean = {m: float(np.mean([s[m] for s in per_student])) for m in METRIC_NAMES}
    std = {m: float(np.std([s[m] for s in per_student], ddof=1)) if len(per_student) > 1 else None
           for m in METRIC_NAMES}
    return mean, std


# How a student's text enters: (model, sample indices) -> projected text features.
TextBatches = Callable[[DualEncoder, torch.Tensor], torch.Tensor]
# A student's loss on a batch: (projected image features, projected text features, sample indices) -> scalar.
StudentLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
    def student_text(self, distilled: DistilledSet, backbone: Backbone, device: torch.device) -> TextBatches:
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
        if distilled.text_kind not in self.accepts:
            raise UsageError(
                f"protocol {self.name!r} cannot evaluate text of kind {distilled.text_kind!r}; it accepts "
                f"{', '.join(self.accepts)}. Try --protocol frozen-text."
            )
        size = distilled.images.shape[-1]
        if size != backbone.image_size or distilled.images.shape[-2] != backbone.image_size:
            raise UsageError(
                f"distilled images are {tuple(distilled.images.shape[-2:])} px but backbone {backbone.name!r} "
                f"takes {backbone.image_size} px; evaluate with the backbone the set was distilled for."
            )
        if distilled.text_kind != "captions" and distilled.encoder_id != backbone.text_encoder_id:
            raise UsageError(
                f"the set's text embeddings live in {distilled.encoder_id!r}, not in this backbone's text "
                f"encoder {backbone.text_encoder_id!r}; evaluate with --backbone matching the set."
            )

    def evaluate(self, distilled: DistilledSet, dataset: Dataset, backbone: Backbone, params: EvalParams,
                 seed: int, device: torch.device, cache_dir, progress: ProgressFn | None = None) -> EvalResult:
        params = self.resolve_params(params, backbone)
        self.check_compatible(distilled, backbone)
        start = time.perf_counter()
        backbone.to(device)
        lrs, notes = self.learning_rates(distilled, backbone, params)
        loss, loss_notes = self.student_loss(distilled, params, device)
        notes = notes + loss_notes
        test_images = ImageStore(dataset.test.image_paths, backbone.image_size, cache_dir,
                                 dataset.test.fingerprint, backbone.mean, backbone.std)
        val_images = None
        if params.selection == "val":
            val_images = ImageStore(dataset.val.image_paths, backbone.image_size, cache_dir,
                                    dataset.val.fingerprint, backbone.mean, backbone.std)
        images = distilled.images.to(device)
        text = self.student_text(distilled, backbone, device)
        cache: dict = {}
        per_student, selected = [], []
        for k in range(params.n_students):
            student_seed = seed * 1000 + k
            model = backbone.dual_encoder(text_trainable=self.text_trainable, image_head=self.image_head,
                                          seed=student_seed, device=device)

            def score(split: RetrievalSplit, store: ImageStore, m: DualEncoder = model) -> dict[str, float]:
                return self.score(m, split, store, backbone, device, cache)

            best_epoch = self.train_student(
                model, images, text, params, lrs, student_seed, device,
                validate=(lambda m: score(dataset.val, val_images, m)) if val_images is not None else None,
                progress=(lambda d, t, k=k: progress(f"student {k + 1}/{params.n_students}", d, t)) if progress else None,
                loss=loss,
            )
            per_student.append(score(dataset.test, test_images))
            selected.append(best_epoch)
        mean, std = summarize(per_student)
        return EvalResult(per_student, mean, std, asdict(params), selected, lrs,
                          time.perf_counter() - start, notes)

    def train_student(self, model: DualEncoder, images: torch.Tensor, text: TextBatches, params: EvalParams,
                      lrs: dict[str, float], seed: int, device: torch.device,
                      validate: Callable[[DualEncoder], dict[str, float]] | None = None,
                      progress: Callable[[int, int], None] | None = None, loss: StudentLoss | None = None) -> int:
        """SGD with momentum, lr x0.1 at ``lr_decay_epoch``; returns the selected epoch (1-based).

        ``loss``: the batch loss (``student_loss``); None is InfoNCE with diagonal targets."""
        groups = [{"params": model.encoder_parameters(), "lr": lrs["encoder"]},
                  {"params": model.head_parameters(), "lr": lrs["projection"]}]
        opt = torch.optim.SGD([g for g in groups if g["params"]], momentum=params.momentum,
                              weight_decay=params.weight_decay)
        decay = params.lr_decay_epoch or max(1, params.epochs // 2)  # resolved by evaluate; direct callers may not
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[decay], gamma=0.1)
        gen = torch.Generator().manual_seed(seed)
        n = images.shape[0]
        best = (-1.0, params.epochs, None)
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)  # dropout
            for epoch in range(1, params.epochs + 1):
                model.train()
                if not self.text_trainable:
                    model.text_encoder.eval()
                for idx in torch.randperm(n, generator=gen).split(params.batch_size):
                    idx_dev = idx.to(device)
                    _, g_img = model.image_features(images[idx_dev])
                    g_txt = text(model, idx_dev)
                    batch_loss = contrastive_loss(g_img, g_txt) if loss is None else loss(g_img, g_txt, idx_dev)
                    if not torch.isfinite(batch_loss):
                        raise FloatingPointError(
                            f"student loss became {batch_loss.item()} at epoch {epoch}; lower eval.lr_encoder / eval.lr_projection"
                        )
                    opt.zero_grad(set_to_none=True)
                    batch_loss.backward()
                    opt.step()
                sched.step()
                if validate is not None and (epoch % params.val_every == 0 or epoch == params.epochs):
                    r = validate(model)["r_mean"]
                    if r > best[0]:
                        best = (r, epoch, copy.deepcopy(model.state_dict()))
                if progress:
                    progress(epoch, params.epochs)
        if validate is not None and best[2] is not None:
            model.load_state_dict(best[2])
        return best[1]

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
