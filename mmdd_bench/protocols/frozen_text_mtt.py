"""``frozen-text-mtt``: MTT-VL's published evaluation (``evaluate_synset`` in its public code).

Like ``frozen-text`` (image encoder and text projection train, the text encoder is frozen, text enters as
sentence features), with MTT-VL's schedule: **one** learning rate for both towers, the set's learned image
step size when it carries one; 51 epochs, batch 64; and no decay in effect (the public code's x0.1 comes
after its last epoch, so here the decay epoch resolves to one past the last). ``frozen-text`` is LoRS's
evaluation (a learned lr per tower, 100 epochs, batch 128, x0.1 at half).

What the public code leaves open and we chose: a set without learned step sizes (a coreset) trains at the
protocol's per-tower lrs, as under ``frozen-text``, so the two protocols differ only in their schedule and
in how they use learned step sizes. Selection is the final epoch, or val; never test.
"""

from __future__ import annotations

import dataclasses

from ..distilled import DistilledSet
from ..encoders.backbone import Backbone
from ..params import apply_overrides
from .base import EMBEDDED_DEFAULTS, EvalParams, Protocol
from .frozen_text import FrozenTextProtocol

PUBLISHED = {"epochs": 51, "batch_size": 64}
# The embedded CPU setting keeps the number of student steps of frozen-text's embedded setting (40 epochs at
# batch 128 there, 20 at batch 64 here), with the embedded lrs and students.
EMBEDDED = {**EMBEDDED_DEFAULTS, "epochs": 20}


class FrozenTextMTTProtocol(FrozenTextProtocol):
    name = "frozen-text-mtt"
    version = "1"
    description = ("MTT-VL's evaluation: frozen text encoder, one lr (the set's learned image lr) for both towers, "
                   "51 epochs, batch 64, no decay")

    def default_params(self, dataset_name: str) -> EvalParams:
        from ..data import EMBEDDED as EMBEDDED_DATASETS

        return apply_overrides(EvalParams(), EMBEDDED if dataset_name in EMBEDDED_DATASETS else PUBLISHED)

    def resolve_params(self, params: EvalParams, backbone: Backbone) -> EvalParams:
        if params.lr_decay_epoch is None:  # MTT-VL's decay falls after its last epoch: none in effect
            params = dataclasses.replace(params, lr_decay_epoch=params.epochs + 1)
        return super().resolve_params(params, backbone)

    def learning_rates(self, distilled: DistilledSet, backbone: Backbone, params: EvalParams) -> tuple[dict[str, float], list[str]]:
        lrs, notes = Protocol.learning_rates(self, distilled, backbone, params)  # the protocol's own, per tower
        if params.use_learned_lrs and "lr_image" in distilled.extras:
            lr = float(distilled.extras["lr_image"])
            lrs = {"encoder": lr, "projection": lr}
            notes.append("trained both towers with the set's learned image step size (MTT-VL's evaluation)")
        return lrs, notes
