"""Image-text retrieval metrics (DESIGN.md section 3): one exact, vectorised, chunked implementation.

Rank of a ground truth = number of candidates scored strictly higher + number scored *equal* that come
earlier in index order, i.e. the position in a stable descending sort. Ties therefore never help a
candidate that comes later, and results do not depend on the sort algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

KS = (1, 5, 10)
METRIC_NAMES = [f"i2t_R@{k}" for k in KS] + [f"t2i_R@{k}" for k in KS] + ["r_mean"]


def _as_tensor(similarity) -> torch.Tensor:
    sim = torch.as_tensor(np.asarray(similarity) if not isinstance(similarity, torch.Tensor) else similarity)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be 2-D (n_images x n_captions), got shape {tuple(sim.shape)}")
    sim = sim.detach().float()
    if not torch.isfinite(sim).all():
        raise ValueError("similarity contains NaN or Inf; the model diverged (lower the learning rates)")
    return sim


def t2i_ranks(sim: torch.Tensor, txt2img: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """For each caption, the 0-based rank of its one image among all images."""
    n_img, n_txt = sim.shape
    img_idx = torch.arange(n_img, device=sim.device)
    ranks = torch.empty(n_txt, dtype=torch.long, device=sim.device)
    for start in range(0, n_txt, chunk):
        cols = sim[:, start:start + chunk].T  # [c, n_img]
        truth = txt2img[start:start + chunk]
        score = cols.gather(1, truth[:, None])
        higher = (cols > score).sum(1)
        tied_before = ((cols == score) & (img_idx[None, :] < truth[:, None])).sum(1)
        ranks[start:start + chunk] = higher + tied_before
    return ranks


def i2t_ranks(sim: torch.Tensor, img2txt: Sequence[Sequence[int]], chunk: int = 256) -> torch.Tensor:
    """For each image, the best (lowest) 0-based rank among all of its captions."""
    n_img, n_txt = sim.shape
    width = max(len(c) for c in img2txt)
    truth = torch.full((n_img, width), -1, dtype=torch.long)
    for i, caps in enumerate(img2txt):
        truth[i, : len(caps)] = torch.as_tensor(list(caps), dtype=torch.long)
    truth = truth.to(sim.device)
    valid = truth >= 0
    txt_idx = torch.arange(n_txt, device=sim.device)
    ranks = torch.empty(n_img, dtype=torch.long, device=sim.device)
    for start in range(0, n_img, chunk):
        rows = sim[start:start + chunk]  # [b, n_txt]
        t = truth[start:start + chunk]
        score = rows.gather(1, t.clamp(min=0))  # [b, w]
        higher = (rows[:, None, :] > score[:, :, None]).sum(-1)
        tied_before = ((rows[:, None, :] == score[:, :, None]) & (txt_idx[None, None, :] < t[:, :, None])).sum(-1)
        r = (higher + tied_before).masked_fill(~valid[start:start + chunk], n_txt)
        ranks[start:start + chunk] = r.min(dim=1).values
    return ranks


def retrieval_metrics(similarity, img2txt: Sequence[Sequence[int]]) -> dict[str, float]:
    """Recall@{1,5,10} in percent for both directions and their mean ``r_mean``.

    ``similarity`` is (n_images x n_captions), numpy or torch; ``img2txt[i]`` lists caption indices of
    image i. Every caption must belong to exactly one image.
    """
    sim = _as_tensor(similarity)
    n_img, n_txt = sim.shape
    if len(img2txt) != n_img:
        raise ValueError(f"img2txt has {len(img2txt)} entries but similarity has {n_img} rows (images)")
    txt2img = torch.full((n_txt,), -1, dtype=torch.long)
    for i, caps in enumerate(img2txt):
        if len(caps) == 0:
            raise ValueError(f"image {i} has no captions")
        for c in caps:
            if not 0 <= c < n_txt or txt2img[c] != -1:
                raise ValueError(f"caption index {c} of image {i} is out of range or belongs to two images")
            txt2img[c] = i
    if (txt2img < 0).any():
        raise ValueError("some captions belong to no image")
    r_i2t = i2t_ranks(sim, img2txt)
    r_t2i = t2i_ranks(sim, txt2img.to(sim.device))
    return recalls(r_i2t, r_t2i)


def recalls(r_i2t: torch.Tensor, r_t2i: torch.Tensor) -> dict[str, float]:
    """Recall@K in percent from 0-based ranks: hits counted as integers, divided in float64, so every recall
    is the double nearest to 100 * hits / n (an exact multiple of 100/n up to that last rounding)."""
    out: dict[str, float] = {}
    for direction, ranks in (("i2t", r_i2t), ("t2i", r_t2i)):
        n = int(ranks.numel())
        for k in KS:
            out[f"{direction}_R@{k}"] = 100.0 * int((ranks < k).sum()) / n
    out["r_mean"] = math.fsum(out[m] for m in METRIC_NAMES[:-1]) / (len(METRIC_NAMES) - 1)
    return out
