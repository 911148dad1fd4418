"""``lors``: low-rank similarity mining (Xu et al., "Low-Rank Similarity Mining for Multimodal Dataset
Distillation", ICML 2024).

``tesla-vl``'s pipeline (learned pixels, sentence embeddings of the frozen text encoder, two learned step
sizes, TESLA's two-phase gradient of the trajectory-matching loss) plus a learned similarity between the
synthetic pairs that replaces the identity target of the student's loss:
S = diag(a) + (alpha/r) L R^T with a = 1, L ~ N(0, 1), R = 0, so S = I at the start and at first only R
learns (LoRA-style). Each student step uses S[b][:, b] of its mini-batch b with the weighted BCE loss;
the similarity learns with its own lr (``lr_sim``) and momentum. ``sim_type=full`` learns all of S instead
(starting at I). The set is evaluated the way LoRS does: ``frozen-text`` trains its students with the same
loss against the learned S (``eval.use_learned_similarity=false``: plain InfoNCE).

Budget: the field counts LoRS's sets as N-1 pairs plus the similarity for a budget of N (RepBlend's
captions state it; LoRS's scripts pass 99 / 199 / 499), fair when S's parameters fit in the freed pair's
bytes, which is checked before any work; ``budget=pairs`` keeps N pairs (an ablation over budget).

Published defaults: LoRS's scripts per dataset and size (``tesla_loop.PUBLISHED``), nearest size. The
published Flickr-500 config is reported wrong by LoRS's author (issue #7 of silicx/LoRS_Distill); it is kept
as published and the sets made with it say so in ``meta["notes"]``. Published LoRS numbers select the
distillation iteration and the evaluation epoch on the *test* split; we never do (final epoch or val).
Other choices are ``tesla-vl``'s (see ``methods/tesla_vl.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmdd_bench.distilled import similarity_block
from mmdd_bench.errors import UsageError
from mmdd_bench.method import DistillContext
from mmdd_bench.tesla_loop import TeslaMatching, TeslaParams

SIM_TYPES = ("lowrank", "full")
BUDGETS = ("minus-one", "pairs")
FLOAT_BYTES = 4


@dataclass
class LoRSParams(TeslaParams):
    lr_sim: float = 10.0
    sim_type: str = "lowrank"
    sim_rank: int = 10
    sim_alpha: float = 3.0
    budget: str = "minus-one"  # N-1 pairs plus S for a budget of N (the field's convention); "pairs": N pairs

    @property
    def scope(self) -> str:
        return "lors"

    def validate(self) -> None:
        super().validate()
        if self.sim_type not in SIM_TYPES:
            raise UsageError(f"lors.sim_type must be one of {', '.join(SIM_TYPES)}, got {self.sim_type!r}")
        if self.budget not in BUDGETS:
            raise UsageError(f"lors.budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        if self.sim_rank < 1 or self.sim_alpha <= 0:
            raise UsageError(f"lors.sim_rank must be >= 1 and lors.sim_alpha > 0, got {self.sim_rank}, {self.sim_alpha}")

    def similarity_floats(self, n: int) -> int:
        """Numbers the similarity of an ``n``-pair set stores: N(2r+1) + the scale, or N^2."""
        return n * (2 * self.sim_rank + 1) + 1 if self.sim_type == "lowrank" else n * n


def fitting_rank(n: int, pair_floats: int) -> int:
    """The largest rank r whose low-rank similarity of ``n`` pairs, n(2r+1) + 1 numbers, fits in one pair of
    ``pair_floats`` numbers (0: none does)."""
    return max(0, ((pair_floats - 1) // n - 1) // 2)


# One pair of the embedded datasets under the tiny backbone: a 3x32x32 image and a 384-d sentence embedding.
TINY_PAIR_FLOATS = 3 * 32 * 32 + 384


class LowRankSimilarity:
    """S = diag(a) + scale * L R^T, learned through a, L and R; a batch's block without forming S."""

    def __init__(self, n: int, rank: int, alpha: float, lr: float, gen: torch.Generator, device: torch.device) -> None:
        self.lr = lr
        self.rank, self.alpha = rank, alpha
        self.diag = torch.ones(n, device=device).requires_grad_(True)
        self.left = torch.randn(n, rank, generator=gen).to(device).requires_grad_(True)
        self.right = torch.zeros(n, rank, device=device).requires_grad_(True)
        self.scale = torch.tensor(alpha / rank, device=device)  # stored as is, so S is the one that trained

    def parameters(self) -> dict[str, torch.Tensor]:
        return {"sim_diag": self.diag, "sim_left": self.left, "sim_right": self.right}

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return similarity_block(self.diag, self.left, self.right, self.scale, idx)

    def extras(self) -> dict[str, torch.Tensor]:
        return {**{k: v.detach() for k, v in self.parameters().items()}, "sim_scale": self.scale}

    def describe(self) -> dict:
        return {"kind": "lowrank", "rank": self.rank, "alpha": self.alpha, "scale": self.alpha / self.rank}


class FullSimilarity:
    """All of S learned (starting at I): N^2 numbers, which fit in one freed pair only for small N."""

    def __init__(self, n: int, lr: float, device: torch.device) -> None:
        self.lr = lr
        self.full = torch.eye(n, device=device).requires_grad_(True)

    def parameters(self) -> dict[str, torch.Tensor]:
        return {"sim_full": self.full}

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.full[idx][:, idx]

    def extras(self) -> dict[str, torch.Tensor]:
        return {"sim_full": self.full.detach()}

    def describe(self) -> dict:
        return {"kind": "full"}


class LoRS(TeslaMatching):
    name = "lors"
    version = "1"
    default_protocol = "frozen-text"
    description = "learned low-rank similarity as soft labels + TESLA trajectory matching, N-1 pairs (Xu et al., ICML 2024)"
    Params = LoRSParams

    def embedded_overrides(self, size: int) -> dict:
        # The chosen rank where it fits in the freed tiny pair (rank 10: up to N = 165), else the largest that does,
        # with alpha lowered with it so that the scale alpha / r stays the chosen 0.3 (EMBEDDED_SCALE below).
        rank = max(1, min(EMBEDDED["sim_rank"], fitting_rank(max(size - 1, 1), TINY_PAIR_FLOATS)))
        return {**EMBEDDED, "sim_rank": rank, "sim_alpha": EMBEDDED_SCALE * rank}

    def pairs_stored(self, params: LoRSParams, size: int) -> int:
        return size - 1 if params.budget == "minus-one" else size

    def similarity(self, params: LoRSParams, n: int, gen: torch.Generator,
                   device: torch.device) -> LowRankSimilarity | FullSimilarity:
        if params.sim_type == "lowrank":
            return LowRankSimilarity(n, params.sim_rank, params.sim_alpha, params.lr_sim, gen, device)
        return FullSimilarity(n, params.lr_sim, device)

    def check_fits(self, ctx: DistillContext, params: LoRSParams) -> None:
        if params.budget == "pairs":
            return
        if ctx.size < 2:
            raise UsageError("lors stores N-1 pairs for a budget of N, so it needs a size of at least 2 "
                             "(or lors.budget=pairs)")
        n = ctx.size - 1
        pair = FLOAT_BYTES * (3 * ctx.backbone.image_size ** 2 + ctx.backbone.text_dim)
        need = FLOAT_BYTES * params.similarity_floats(n)
        if need > pair:
            fitting = fitting_rank(n, pair // FLOAT_BYTES)
            advice = (f"lower lors.sim_rank to {fitting} or less" if params.sim_type == "lowrank" and fitting >= 1
                      else "use lors.sim_type=lowrank with a small rank")
            raise UsageError(f"lors at size {ctx.size}: the {params.sim_type} similarity of {n} pairs takes {need} "
                             f"bytes, more than the {pair} bytes of the pair it replaces ({ctx.backbone.image_size}px "
                             f"images, {ctx.backbone.text_dim}-d text); {advice}, or keep N pairs with lors.budget=pairs.")


# Embedded datasets run on CPUs: 5 experts (mtt-vl's, the same trajectories) and 30 iterations. Chosen on the
# shapes *val* split (N=50, seed 0, 2 experts, one frozen-text student; three scores per set: LoRS's evaluation
# = WBCE against the learned S with the learned lrs, which is the default / the protocol's lrs / plain InfoNCE
# with the learned lrs). The initial set (49 pairs) scores 8.87 / 8.24 / 6.71. lr_images / lr_text / lr_lr / lr_sim:
#   30 iterations: 100 / 100 / 0.01 / 10 (published Flickr-100) -> 7.59 / 12.55 / 12.28;  100/100/0.01/1 -> 7.57 / 10.80 / 8.56
#                  300 / 300 / 0.01 / 10 -> 5.13 / 11.07 / 10.49;  10 / 0.3 / 1e-3 / 10 (mtt-vl's) -> 5.26 / 8.67 / 9.73
#                  10 / 0.3 / 1e-3 / 100 -> 4.07 / 4.44 / 11.94;  10 / 0.3 / 1e-3 / 1 -> 4.40 / 9.79 / 6.59
#   60 iterations: 100 / 100 / 0.01 / 10 -> 6.30 / 8.90 / 13.02
# so the published Flickr-100 values at 30 iterations; rank 10 and alpha 3 are published and were not swept.
# On this toy set no setting beat the initial set under LoRS's own evaluation, while the same sets gain ~4-6
# points under plain InfoNCE or the protocol's lrs: the learned S (and lrs) help the matching more than the
# students trained on them. Single seed and student: differences of 1-2 points are within noise.
EMBEDDED: dict = {"iterations": 30, "num_experts": 5, "lr_images": 100.0, "lr_text": 100.0, "lr_lr": 0.01,
                  "lr_sim": 10.0, "sim_rank": 10}
# Where the rank must drop to fit (8 at N=200, 2 at N=500), a fixed alpha of 3 raised the scale alpha / r to 1.5
# at rank 2, and an SGD step on R moves S's entries by about lr_sim * alpha^2 / r: LoRS collapsed at N=500 on
# scenes (test r_mean 0.79-2.94 under its own protocol, seeds 0-2), its S telling 49-63% of the students'
# images that another caption matches as well as their own. Chosen on scenes *val*
# (scripts/study_lors_similarity.py, benchmarks/results/lors-similarity-scenes.json; N=500, seed 0, rank 2;
# frozen-text with S and learned lrs / frozen-encoders): alpha 3 (scale 1.5) 0.81 / 1.84; alpha 1.34 (the
# rank-10 step alpha^2 / r) 13.59 / 24.55; alpha 0.6 (the rank-10 scale 0.3) 14.42 / 33.21 (25.94 under frozen-text
# at the protocol's lrs instead of the learned ones: those, not S, cost the rest). So the scale is kept,
# for every rank: at N=200 (rank 8, seed 0) alpha 3 gave 7.09 / 21.56 and alpha 2.4 6.85 / 22.22, within noise.
EMBEDDED_SCALE = LoRSParams.sim_alpha / EMBEDDED["sim_rank"]  # 3 / 10, the published Flickr-100 values

__all__ = ["LoRS", "LoRSParams", "LowRankSimilarity", "FullSimilarity"]
