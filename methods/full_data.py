"""``full-data``: the ceiling every table prints, the student trained on the whole training split.

Its "set" is the split itself, held by reference (``DistilledSet.reference == "train"``): the artifact holds no
copy of the data, and a protocol reads every pair from the dataset when it trains its students. Its size is the
split's pair count, whatever ``--sizes`` says, and it is deterministic (the seed only seeds the students), so a
leaderboard shows each method's share of the ceiling under the same protocol.

On the embedded datasets the students train for fewer epochs than the protocols' defaults (``EMBEDDED_EVAL``,
a full pass over 25,000 pairs being many steps): recorded in every record's ``protocol_params`` and shown as its
``eval_variant``.
"""

from __future__ import annotations

import torch

from mmdd_bench.distilled import REFERENCE_TRAIN, DistilledSet
from mmdd_bench.method import DistillContext, Method

# Student epochs for the ceilings on the embedded datasets (their protocols' defaults are 40 for sets of at most
# a few hundred pairs); chosen on the val split, see the comment in full_data's EMBEDDED_EVAL_SWEEP.
EMBEDDED_EVAL = {"epochs": 10}


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
