"""The aids table: per method, its gain over random with the aids its evaluation hands it, without them, and
over random given the same kind of aids (DD-Ranking's split, for image-text sets).

An aid is what an evaluation gives the students besides the pairs (``eval_aids`` in a record): step sizes
(learned by MTT-VL, TESLA-VL and LoRS, or tuned on val for a set that carries none) and a similarity to train
against (learned by LoRS, or a full-data teacher's). A method whose gain survives only against random without
aids gains from its aids, not from its pairs. Kinds, not names, are matched: a learned step size is compared
with random's val-tuned one, a learned similarity with random's teacher similarity.

Records made before aids were named (``eval_aids`` None) are left out: what they were handed is not recorded.
"""

from __future__ import annotations

import math

import pandas as pd

from .leaderboard import CEILING_METHOD, gain_cell, one_record_per_seed
from .matrix import md_cell
from .stats import paired_gain

AID_KINDS = {"learned_lrs": "step sizes", "val_tuned_lrs": "step sizes", "learned_similarity": "similarity",
             "teacher_similarity": "similarity"}
GROUP = ["dataset", "backbone", "protocol", "size"]
AIDS_COLUMNS = [*GROUP, "method", "aids", "n_seeds", "r_mean_without", "r_mean_with", "gain_without", "gain_without_ci_low",
                "gain_without_ci_high", "gain_with", "gain_with_ci_low", "gain_with_ci_high", "random_aids",
                "random_with_aids", "gain_same_aids", "gain_same_aids_ci_low", "gain_same_aids_ci_high"]


def _kinds(aids: str) -> frozenset[str]:
    return frozenset(AID_KINDS.get(a, a) for a in aids.split("+") if a)


def _per_seed(part: pd.DataFrame) -> dict[int, float]:
    return dict(zip(part["seed"].astype(int), part["r_mean"].astype(float), strict=True))


def _evaluations(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One evaluation per set of aids (``a+b``): the rows without evaluation overrides where there are several,
    and none at all where rows of different settings or overrides would still compete (no guessing)."""
    out = {}
    for aids, part in rows.groupby("eval_aids", sort=True):
        if part["eval_variant"].nunique() > 1:
            part = part[part["eval_variant"] == ""]
        if not part.empty and part["settings"].nunique() == 1 and part["eval_variant"].nunique() == 1:
            out[str(aids)] = part
    return out


def aids_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, backbone, protocol, size, method) that was scored both with and without aids."""
    frame = frame[frame["eval_aids"].notna() & (frame["variant"] == "") & (frame["method"] != CEILING_METHOD)
                  & (frame["distilled_backbone"] == "")]  # a set's own backbone only: transfers have their matrix
    frame = one_record_per_seed(frame) if not frame.empty else frame
    rows = []
    for key, group in frame.groupby(GROUP, sort=True):
        by_method = {m: _evaluations(part) for m, part in group.groupby("method", sort=True)}
        randoms = by_method.get("random", {})
        plain_random = randoms.get("")
        for method, evaluations in by_method.items():
            if "" not in evaluations or len(evaluations) < 2:
                continue
            aided = [a for a in evaluations if a]
            # the evaluation with the most kinds of aid; between equals, the one without overrides (the method's own)
            best = max(aided, key=lambda a: (len(_kinds(a)), (evaluations[a]["eval_variant"] == "").all(), a))
            same = [a for a in randoms if a and _kinds(a) == _kinds(best)]
            random_same = randoms[same[0]] if len(same) == 1 else None
            without, with_aids = _per_seed(evaluations[""]), _per_seed(evaluations[best])
            base = _per_seed(plain_random) if plain_random is not None else {}
            g0, g1 = paired_gain(without, base), paired_gain(with_aids, base)
            g2 = paired_gain(with_aids, _per_seed(random_same)) if random_same is not None else (math.nan,) * 3
            rows.append({**dict(zip(GROUP, key, strict=True)), "method": method, "aids": best,
                         "n_seeds": len(set(without) & set(with_aids)),
                         "r_mean_without": sum(without.values()) / len(without),
                         "r_mean_with": sum(with_aids.values()) / len(with_aids),
                         "gain_without": g0[0], "gain_without_ci_low": g0[1], "gain_without_ci_high": g0[2],
                         "gain_with": g1[0], "gain_with_ci_low": g1[1], "gain_with_ci_high": g1[2],
                         "random_aids": same[0] if random_same is not None else "",
                         "random_with_aids": (float(random_same["r_mean"].mean()) if random_same is not None else math.nan),
                         "gain_same_aids": g2[0], "gain_same_aids_ci_low": g2[1], "gain_same_aids_ci_high": g2[2]})
    table = pd.DataFrame(rows, columns=AIDS_COLUMNS)
    numeric = [c for c in AIDS_COLUMNS if c.startswith(("r_mean", "gain", "random_with"))]
    table[numeric] = table[numeric].astype(float).round(2)
    return table


AIDS_NOTE = ("r_mean without and with the aids the evaluation hands the students; gains over random paired by seed "
             "[95% CI]: without aids and with them against random without aids, and with them against random given "
             "the same kinds of aid (step sizes tuned on val for a learned step size, a full-data teacher's "
             "similarity for a learned one). Only the last gain is the pairs' own.")


def aids_rows(table: pd.DataFrame) -> list[list[str]]:
    """The table's cells as text (the Markdown and the page show the same)."""
    out = []
    for r in table.itertuples(index=False):
        out.append([str(r.method), str(r.aids).replace("+", ", "), str(r.n_seeds), f"{r.r_mean_without:.2f}",
                    f"{r.r_mean_with:.2f}", gain_cell(r.gain_without, r.gain_without_ci_low, r.gain_without_ci_high),
                    gain_cell(r.gain_with, r.gain_with_ci_low, r.gain_with_ci_high),
                    "" if math.isnan(r.random_with_aids) else f"{r.random_with_aids:.2f}",
                    gain_cell(r.gain_same_aids, r.gain_same_aids_ci_low, r.gain_same_aids_ci_high)])
    return out


AIDS_HEADER = ["method", "aids", "seeds", "r_mean without", "r_mean with", "gain without aids", "gain with aids",
               "random with the same aids", "gain over random with the same aids"]


def aids_markdown(table: pd.DataFrame, dataset: str, backbone: str) -> str:
    lines = [f"# Evaluation aids: {md_cell(dataset)} / backbone {md_cell(backbone)}", "", AIDS_NOTE, ""]
    part = table[(table["dataset"] == dataset) & (table["backbone"] == backbone)]
    for (protocol, size), rows in part.groupby(["protocol", "size"], sort=True):
        lines += [f"## {md_cell(protocol)}, N = {size}", "", "| " + " | ".join(AIDS_HEADER) + " |",
                  "|---|" + "---|" * (len(AIDS_HEADER) - 1)]
        lines += ["| " + " | ".join(md_cell(c) for c in cells) + " |" for cells in aids_rows(rows)]
        lines.append("")
    return "\n".join(lines)


__all__ = ["AIDS_COLUMNS", "AIDS_HEADER", "AIDS_NOTE", "aids_markdown", "aids_rows", "aids_table"]
