"""Evaluation aids a baseline can be given, so a method's gain can be split from what its evaluation hands it
(DD-Ranking's point, for image-text sets).

MTT-VL, TESLA-VL and LoRS sets carry learned step sizes their students train with, and LoRS a learned
similarity its students train against. A coreset carries neither; here it gets the same *kind* of aid:

- ``eval.tune_lrs``: the two step sizes (image encoder, text projection) chosen on the **val** split for this
  set, by a coordinate search around the protocol's lrs (``ENCODER_FACTORS`` with the projection lr fixed, then
  ``PROJECTION_FACTORS`` at the best encoder lr; one student per candidate, seeded like the first test
  student). It replaces any learned step sizes the set carries.
- ``eval.teacher_similarity``: students train against a teacher's similarity of the set's pairs instead of the
  identity, with the ``cwcl`` loss (soft InfoNCE, each row and column renormalised over the batch), so a batch's
  targets are the teacher's softmax over that batch: knowledge distillation, CLIP-KD style. The teacher is the
  full-data model that needs no image-text training beyond its heads: a ``frozen-encoders`` student (the
  pretrained encoders, both heads trained on the whole training split, its epoch chosen on val), trained once
  per (dataset, backbone) and cached. It replaces any similarity the set carries. ``eval.student_loss`` can pick
  another loss against the same targets.

The aids an evaluation used are named in its record (``eval_aids``): ``learned_lrs``, ``val_tuned_lrs``,
``learned_similarity``, ``teacher_similarity``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data.images import ImageStore
from ..data.splits import Dataset
from ..distilled import REFERENCE_TRAIN, DistilledSet
from ..encoders.backbone import Backbone
from ..encoders.heads import DualEncoder
from ..encoders.losses import soft_contrastive_loss
from ..errors import UsageError
from ..params import apply_overrides, identity_dict
from ..progress import ProgressFn

if TYPE_CHECKING:
    from .base import EvalParams, Protocol, StudentData, StudentLoss

LEARNED_LRS, VAL_TUNED_LRS = "learned_lrs", "val_tuned_lrs"
LEARNED_SIMILARITY, TEACHER_SIMILARITY = "learned_similarity", "teacher_similarity"
LRS_AIDS = (LEARNED_LRS, VAL_TUNED_LRS)
SIMILARITY_AIDS = (LEARNED_SIMILARITY, TEACHER_SIMILARITY)

# The search grid, as factors of the protocol's lrs: a decade each way for the encoder (the learned image lrs of
# MTT-VL and LoRS sets on the embedded set end 10-30x above the protocol's 0.003), then the projection a factor of
# 3 each way. 7 students per set: the price of the aid, paid on val.
ENCODER_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)
PROJECTION_FACTORS = (1 / 3, 3.0)

TEACHER_PROTOCOL = "frozen-encoders"
TEACHER_SEED = 0
TEACHER_VERSION = "1"
# The teacher's training: one student, its epoch chosen on val. On the embedded datasets the budget of the
# full-data ceiling there (6 epochs over the training split, methods/full_data.py); elsewhere the protocol's
# epochs, validated every 10.
TEACHER_EMBEDDED = {"n_students": 1, "epochs": 6, "selection": "val", "val_every": 1}
TEACHER_REAL = {"n_students": 1, "selection": "val", "val_every": 10}


def _student_seed(seed: int) -> int:
    from .base import student_seeds

    return student_seeds(seed, 1)[0]


def search_learning_rates(protocol: Protocol, data: StudentData, dataset: Dataset, backbone: Backbone,
                          params: EvalParams, base: dict[str, float | None], seed: int, device: torch.device,
                          cache_dir, loss: StudentLoss | None,
                          progress: ProgressFn | None = None) -> tuple[dict[str, float], list[str]]:
    """The step sizes with the best val r_mean (ties: the earlier candidate, so the protocol's own lrs win a
    tie), and a note with every candidate's score. A candidate whose student diverges scores nothing."""
    val_images = ImageStore(dataset.val.image_paths, backbone.image_size, cache_dir, dataset.val.fingerprint,
                            backbone.mean, backbone.std)
    cache: dict = {"cache_dir": cache_dir}
    student_seed = _student_seed(seed)
    scores: dict[tuple[float | None, float], float] = {}
    projection, encoder = float(base["projection"]), base["encoder"]
    encoder_trains = encoder is not None and "lr_encoder" not in protocol.inactive_params
    n_trials = len(ENCODER_FACTORS) + (len(PROJECTION_FACTORS) if encoder_trains else 0)

    def trial(lrs: dict[str, float]) -> float:
        key = (lrs["encoder"], lrs["projection"])
        if key not in scores:
            model = protocol.build_student(backbone, student_seed, device)
            try:
                protocol.train_student(model, data, dataclasses.replace(params, selection="final"), lrs, student_seed,
                                       device, loss=loss, dim=backbone.projection_dim)
                scores[key] = protocol.score(model, dataset.val, val_images, backbone, device, cache)["r_mean"]
            except FloatingPointError:
                scores[key] = -math.inf
            if progress:
                progress("step sizes on val", len(scores), n_trials)
        return scores[key]

    def best(candidates: list[dict[str, float]]) -> dict[str, float]:
        results = [(trial(c), -i, c) for i, c in enumerate(candidates)]
        return max(results, key=lambda r: (r[0], r[1]))[2]

    if encoder_trains:
        chosen = best([{"encoder": float(encoder) * f, "projection": projection} for f in _own_first(ENCODER_FACTORS)])
        chosen = best([{**chosen, "projection": projection * f} for f in _own_first((1.0, *PROJECTION_FACTORS))])
    else:  # only heads train: the projection lr over the encoder's wider grid
        chosen = best([{"encoder": encoder, "projection": projection * f} for f in _own_first(ENCODER_FACTORS)])
    if scores[(chosen["encoder"], chosen["projection"])] == -math.inf:
        raise FloatingPointError("every step size tried on val diverged; lower eval.lr_encoder / eval.lr_projection")
    grid = ", ".join(f"{_fmt(e)}/{_fmt(p)}: {'diverged' if s == -math.inf else f'{s:.2f}'}"
                     for (e, p), s in scores.items())
    note = (f"step sizes chosen on val (eval.tune_lrs): encoder {_fmt(chosen['encoder'])}, projection "
            f"{_fmt(chosen['projection'])}; val r_mean per encoder/projection lr: {grid}")
    return chosen, [note]


def _own_first(factors: tuple[float, ...]) -> list[float]:
    """The protocol's own lr (factor 1) first, so it wins a tie."""
    return sorted(factors, key=lambda f: f != 1.0)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def teacher_params(protocol: Protocol, dataset_name: str) -> EvalParams:
    from ..data import EMBEDDED

    return apply_overrides(protocol.default_params(dataset_name),
                           TEACHER_EMBEDDED if dataset_name in EMBEDDED else TEACHER_REAL)


def _teacher_key(dataset: Dataset, backbone: Backbone, teacher: Protocol, params: EvalParams) -> str:
    blob = json.dumps({"version": TEACHER_VERSION, "train": dataset.train.fingerprint, "val": dataset.val.fingerprint,
                       "backbone": backbone.name, "weights": backbone.weights_id, "protocol": teacher.name,
                       "protocol_version": teacher.version, "params": identity_dict(params), "seed": TEACHER_SEED},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def teacher_model(dataset: Dataset, backbone: Backbone, device: torch.device, cache_dir,
                  progress: ProgressFn | None = None) -> tuple[DualEncoder, str]:
    """The teacher (see the module docstring), trained here once and then read from
    ``<cache>/teachers/<key>.safetensors`` (its two heads; the encoders are the pretrained ones)."""
    from . import get_protocol

    teacher = get_protocol(TEACHER_PROTOCOL)
    params = teacher.resolve_params(teacher_params(teacher, dataset.name), backbone)
    key = _teacher_key(dataset, backbone, teacher, params)
    path = Path(cache_dir) / "teachers" / f"{key}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = teacher.build_student(backbone, TEACHER_SEED, device)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                model.load_state_dict(load_file(str(path), device=str(device)))
                return model.eval(), key
            except (SafetensorError, OSError, RuntimeError):  # a truncated or foreign file: train it again
                os.replace(path, path.with_name(f"{path.name}.bad"))
        reference = DistilledSet(torch.zeros(0, 3, backbone.image_size, backbone.image_size), "captions", captions=[],
                                 reference=REFERENCE_TRAIN, budget_pairs=dataset.train.n_pairs)
        data = teacher.student_data(reference, dataset, backbone, device, cache_dir)
        val_images = ImageStore(dataset.val.image_paths, backbone.image_size, cache_dir, dataset.val.fingerprint,
                                backbone.mean, backbone.std)
        cache: dict = {"cache_dir": cache_dir}
        lrs, _ = teacher.learning_rates(reference, backbone, params)
        teacher.train_student(model, data, params, lrs, TEACHER_SEED, device,
                              validate=lambda m: teacher.score(m, dataset.val, val_images, backbone, device, cache),
                              progress=(lambda d, t: progress("teacher (full data, frozen encoders)", d, t)) if progress else None,
                              dim=backbone.projection_dim)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    return model.eval(), key


def teacher_similarity(distilled: DistilledSet, dataset: Dataset, backbone: Backbone, device: torch.device,
                       cache_dir, progress: ProgressFn | None = None) -> tuple[torch.Tensor, str]:
    """S [N, N] = exp(s * (cos_ij - 1)) between the set's images i and texts j under the teacher (s: the
    students' logit scale, so a batch's row-normalised S is the teacher's softmax over that batch); in (0, 1]."""
    if distilled.reference is not None:
        raise UsageError("eval.teacher_similarity needs a set of its own pairs; the full-data reference set is the "
                         "teacher's own training data. Drop eval.teacher_similarity for full-data.")
    from . import get_protocol

    model, key = teacher_model(dataset, backbone, device, cache_dir, progress)
    with torch.no_grad():
        data = get_protocol(TEACHER_PROTOCOL).student_data(distilled, dataset, backbone, device, cache_dir)
        idx = torch.arange(data.n, device=device)
        image = torch.nn.functional.normalize(model.image_features(data.images[idx])[1].float(), dim=-1)
        text = torch.nn.functional.normalize(data.text(model, idx, None).float(), dim=-1)
        return torch.exp(math.exp(DualEncoder.logit_scale) * (image @ text.T - 1)), key


def teacher_loss(distilled: DistilledSet, dataset: Dataset, backbone: Backbone, params: EvalParams,
                 device: torch.device, cache_dir, progress: ProgressFn | None = None) -> tuple[StudentLoss, list[str]]:
    sim, key = teacher_similarity(distilled, dataset, backbone, device, cache_dir, progress)
    kind = params.student_loss or "cwcl"

    def loss(g_img: torch.Tensor, g_txt: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return soft_contrastive_loss(g_img, g_txt, sim[idx][:, idx], kind)

    own = " (replacing the set's learned similarity)" if distilled.has_similarity else ""
    return loss, [f"students trained with the {kind} loss against the teacher's similarity{own}: a {TEACHER_PROTOCOL} "
                  f"student trained on the whole training split (teacher {key}, eval.teacher_similarity)"]

__all__ = ["ENCODER_FACTORS", "LEARNED_LRS", "LEARNED_SIMILARITY", "LRS_AIDS", "PROJECTION_FACTORS",
           "SIMILARITY_AIDS", "TEACHER_SIMILARITY", "VAL_TUNED_LRS", "search_learning_rates", "teacher_loss",
           "teacher_model", "teacher_similarity"]
