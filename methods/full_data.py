"""``full-data``: the ceiling every table prints, the student trained on the whole training split.

Its "set" is the split itself, held by reference (``DistilledSet.reference == "train"``): the artifact holds no
copy of the data, and a protocol reads every pair from the dataset when it trains its students. Its size is the
split's pair count, whatever ``--sizes`` says, and it is deterministic (the seed only seeds the students), so a
leaderboard shows each method's share of the ceiling under the same protocol.

On the embedded datasets one student trains for at most 6 epochs, and the epoch is chosen on the val split
(``EMBEDDED_EVAL``): an epoch over 25,000 pairs is ~200 steps (about a minute on 2 CPU cores under
trainable-text), against 40 epochs of one step for a set of 100 pairs. Recorded in every record's
``protocol_params``, with the selected epoch, and shown as its ``eval_variant``.
"""

from __future__ import annotations

import torch

from mmdd_bench.distilled import REFERENCE_TRAIN, DistilledSet
from mmdd_bench.method import DistillContext, Method

# The ceilings on the embedded datasets (their protocols' defaults are 40 epochs x 2 students for sets of at most a
# few hundred pairs): one student, up to 6 epochs (the CPU budget: ~6-7 minutes under trainable-text on 2 cores),
# the epoch with the best val r_mean kept (selection on val, never test), so no epoch count is tuned by hand.
EMBEDDED_EVAL = {"epochs": 6, "n_students": 1, "selection": "val", "val_every": 1}


class FullData(Method):
    name = "full-data"
    version = "1"
    default_protocol = "trainable-text"
    description = "the whole training split (the ceiling), by reference: no copy of the data"
    deterministic = True  # the set is the split: seeds only seed the students

    def text_kind(self, params) -> str:
        return "captions"

    def fixed_size(self, dataset) -> int:
        return dataset.train.n_pairs

    def eval_defaults(self, dataset_name: str) -> dict:
        from mmdd_bench.data import EMBEDDED

        return dict(EMBEDDED_EVAL) if dataset_name in EMBEDDED else {}

    def distill(self, ctx: DistillContext, params) -> DistilledSet:
        size = ctx.backbone.image_size
        return DistilledSet(torch.zeros(0, 3, size, size), "captions", captions=[], reference=REFERENCE_TRAIN,
                            budget_pairs=ctx.dataset.train.n_pairs,
                            meta={"reference": {"split": "train", "fingerprint": ctx.dataset.train.fingerprint,
                                                "pairs": ctx.dataset.train.n_pairs}})
