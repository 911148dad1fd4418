"""The papers' claims, tested on one dataset and backbone from its records (issue 16, item 3).

Each claim is a set of comparisons, every one a gain paired by seed with its 95% bootstrap interval
(``stats.paired_gain``), between rows of the same dataset and backbone scored under one protocol:

- CovMatch beats every baseline at every size (each baseline under its own protocol, where CovMatch's sets were
  scored too: the protocol matrix; the papers compare each method under its own protocol);
- trainable-text beats frozen-text for CovMatch (CovMatch under trainable-text against its frozen-text ablation,
  ``covmatch.text_trainable=False``, under frozen-text: what CovMatch's paper compares);
- CovMatch-100 beats random-500 (under CovMatch's protocol);
- LoRS and MTT-VL beat the coresets (random, herding, k-center, forgetting), at each size, under their protocols;
- the online update helps CovMatch (against ``covmatch.online_update=False``).

A claim **holds** when every comparison's interval lies above 0, **fails** when some comparison's interval
lies below 0, and is **not shown** otherwise (an interval contains 0); **not measured** when the records hold
no comparison. Only rows of sets scored with the backbone that distilled them enter; the default row of a method
is the one without a variant (of the newest record's method settings, where an older code default left rows of the
same label: those rows never choose the evaluation either). Each side is scored with the protocol's default evaluation or, where an experiment
cut only the number of students (``n_students=1`` on ``scenes``: every student is an independent draw, so the mean
over seeds stays unbiased, only noisier), with that cut; a same-protocol comparison needs both sides scored alike
(the default preferred), and the cut is named in the comparison's protocol. Any other evaluation variant (fewer
epochs, an aid) never enters: it changes what a score means.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .leaderboard import gain_cell, method_settings, one_record_per_seed
from .matrix import md_cell
from .stats import paired_gain

COVMATCH = "covmatch"
BASELINES = ("random", "herding", "k-center", "forgetting", "mtt-vl", "tesla-vl", "lors")
CORESETS = ("random", "herding", "k-center", "forgetting")
# Each method's own protocol (the registry's default_protocol, fixed here so reports need no method code).
OWN_PROTOCOL = {"covmatch": "trainable-text", "random": "trainable-text", "herding": "trainable-text",
                "k-center": "trainable-text", "forgetting": "trainable-text", "mtt-vl": "frozen-text-mtt",
                "tesla-vl": "frozen-text", "lors": "frozen-text"}
FROZEN_TEXT_ABLATION = "text_trainable=False"
# Evaluation parameters whose change leaves a score's expectation alone: fewer students, each trained as the protocol says.
UNBIASED_CUTS = frozenset({"n_students"})
NO_ONLINE_ABLATION = "online_update=False"
CLAIMS_COLUMNS = ["dataset", "backbone", "claim", "comparison", "protocol", "gain", "gain_ci_low", "gain_ci_high",
                  "n_seeds"]


@dataclass(frozen=True)
class Row:
    """Which rows of a (dataset, backbone) a side of a comparison is: method, size, protocol, variant."""

    method: str
    size: int
    protocol: str
    variant: str = ""

    def label(self) -> str:
        return f"{self.method}{f' ({self.variant})' if self.variant else ''} N={self.size}"


def _matching(frame: pd.DataFrame, row: Row) -> pd.DataFrame:
    """The row's records made with its newest record's method settings: where an older code default of the method
    left records under the same label, they never speak for the row, nor choose its evaluation."""
    part = frame[(frame["method"] == row.method) & (frame["size"] == row.size) & (frame["protocol"] == row.protocol)
                 & (frame["variant"] == row.variant)]
    if part.empty:
        return part
    method = part["settings_detail"].map(method_settings)
    newest = method.loc[part.sort_values(["finished_utc", "run_id"], kind="stable").index[-1]]
    return part[method == newest]


def _per_seed(frame: pd.DataFrame, row: Row, eval_variant: str) -> dict[int, float]:
    """The row's r_mean per seed. Where records of several settings share the row's label (records made
    under an older code default beside today's), the settings of the newest record speak for it, whole: seeds
    are never mixed across settings."""
    part = _matching(frame, row)
    part = part[part["eval_variant"] == eval_variant]
    if part["settings"].nunique() > 1:
        newest = part.sort_values(["finished_utc", "run_id"], kind="stable")["settings"].iloc[-1]
        part = part[part["settings"] == newest]
    return dict(zip(part["seed"].astype(int), part["r_mean"].astype(float), strict=True))


def is_unbiased_cut(eval_variant: str) -> bool:
    """The default evaluation, or one that changes only parameters in ``UNBIASED_CUTS``."""
    return all(item.split("=", 1)[0] in UNBIASED_CUTS for item in eval_variant.split(",") if item)


def _one(variants: set[str]) -> str | None:
    """The default evaluation where measured, else the only cut measured; None when there is none, or several."""
    return "" if "" in variants else (next(iter(variants)) if len(variants) == 1 else None)


def _eval_variants(frame: pd.DataFrame, better: Row, worse: Row) -> tuple[str, str] | None:
    """Which evaluation each side is read from (see the module's docstring), or None when they cannot be compared."""
    a, b = (set(_matching(frame, row)["eval_variant"]) for row in (better, worse))
    if better.protocol == worse.protocol:
        common = _one(a & b)
        return None if common is None else (common, common)
    mine, theirs = _one(a), _one(b)
    return None if mine is None or theirs is None else (mine, theirs)


def _protocol_label(protocol: str, eval_variant: str) -> str:
    return f"{protocol} ({eval_variant})" if eval_variant else protocol


def _sizes(frame: pd.DataFrame, method: str, protocol: str, variant: str = "") -> list[int]:
    part = frame[(frame["method"] == method) & (frame["protocol"] == protocol) & (frame["variant"] == variant)]
    return sorted(int(s) for s in part["size"].unique())


def _comparisons(frame: pd.DataFrame) -> list[tuple[str, Row, Row]]:
    """(claim, better, worse) for every comparison the records allow."""
    out: list[tuple[str, Row, Row]] = []
    cov = OWN_PROTOCOL[COVMATCH]
    for size in _sizes(frame, COVMATCH, cov):
        for base in BASELINES:
            protocol = OWN_PROTOCOL[base]
            out.append(("CovMatch beats every baseline at every size", Row(COVMATCH, size, protocol),
                        Row(base, size, protocol)))
        out.append(("trainable-text beats frozen-text for CovMatch", Row(COVMATCH, size, cov),
                    Row(COVMATCH, size, "frozen-text", FROZEN_TEXT_ABLATION)))
        out.append(("the online update helps CovMatch", Row(COVMATCH, size, cov),
                    Row(COVMATCH, size, cov, NO_ONLINE_ABLATION)))
    out.append(("CovMatch-100 beats random-500", Row(COVMATCH, 100, cov), Row("random", 500, cov)))
    for method in ("lors", "mtt-vl"):
        protocol = OWN_PROTOCOL[method]
        for size in _sizes(frame, method, protocol):
            out += [("LoRS and MTT-VL beat the coresets", Row(method, size, protocol), Row(core, size, protocol))
                    for core in CORESETS]
    return out


def claims_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every comparison with both sides measured (``records_frame`` rows): one row each, per (dataset, backbone)."""
    if frame.empty:
        return pd.DataFrame(columns=CLAIMS_COLUMNS)
    frame = one_record_per_seed(frame)
    frame = frame[(frame["distilled_backbone"] == "") & frame["eval_variant"].map(is_unbiased_cut)]
    rows = []
    for (dataset, backbone), part in frame.groupby(["dataset", "backbone"], sort=True):
        for claim, better, worse in _comparisons(part):
            chosen = _eval_variants(part, better, worse)
            if chosen is None:
                continue
            a, b = _per_seed(part, better, chosen[0]), _per_seed(part, worse, chosen[1])
            if not a or not b:
                continue
            gain, low, high = paired_gain(a, b)
            mine, theirs = (_protocol_label(r.protocol, ev) for r, ev in zip((better, worse), chosen, strict=True))
            rows.append({"dataset": dataset, "backbone": backbone, "claim": claim,
                         "comparison": f"{better.label()} vs {worse.label()}",
                         "protocol": mine if mine == theirs else f"{mine} vs {theirs}",
                         "gain": gain, "gain_ci_low": low, "gain_ci_high": high, "n_seeds": len(set(a) & set(b))})
    return pd.DataFrame(rows, columns=CLAIMS_COLUMNS)


CLAIMS = ("CovMatch beats every baseline at every size", "trainable-text beats frozen-text for CovMatch",
          "CovMatch-100 beats random-500", "LoRS and MTT-VL beat the coresets", "the online update helps CovMatch")


def verdict(part: pd.DataFrame) -> str:
    """holds / fails / not shown / not measured, from a claim's comparisons (see the module's docstring)."""
    if part.empty:
        return "not measured"
    if (part["gain_ci_high"] < 0).any():
        return "fails"
    if ((part["gain_ci_low"] > 0) & part["gain_ci_low"].notna()).all():
        return "holds"
    return "not shown"


CLAIMS_NOTE = ("Each comparison is a gain in r_mean paired by seed [95% bootstrap interval]. A claim holds when every "
               "comparison's interval is above 0, fails when one is below 0, and is not shown otherwise.")
SUMMARY_HEADER = ["claim", "verdict", "comparisons above 0", "weakest comparison"]


def claims_summary(table: pd.DataFrame, dataset: str, backbone: str) -> list[list[str]]:
    """Per claim (plain text cells): its verdict, how many comparisons hold, and the weakest comparison."""
    mine = table[(table["dataset"] == dataset) & (table["backbone"] == backbone)]
    rows = []
    for claim in CLAIMS:
        part = mine[mine["claim"] == claim]
        if part.empty:
            rows.append([claim, "not measured", "0 / 0", ""])
            continue
        above = int(((part["gain_ci_low"] > 0) & part["gain_ci_low"].notna()).sum())
        weakest = part.loc[part["gain"].idxmin()]
        cell = gain_cell(weakest["gain"], weakest["gain_ci_low"], weakest["gain_ci_high"])
        rows.append([claim, verdict(part), f"{above} / {len(part)}",
                     f"{weakest['comparison']} ({weakest['protocol']}): {cell}"])
    return rows


def claims_markdown(table: pd.DataFrame, dataset: str, backbone: str) -> str:
    """The summary, then every comparison."""
    mine = table[(table["dataset"] == dataset) & (table["backbone"] == backbone)]
    lines = [f"# The papers' claims: {md_cell(dataset)} / backbone {md_cell(backbone)}", "", CLAIMS_NOTE, "",
             "| " + " | ".join(SUMMARY_HEADER) + " |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in claims_summary(table, dataset, backbone)]
    lines += ["", "## Every comparison", "", "| claim | comparison | protocol | gain | seeds |", "|---|---|---|---|---|"]
    for _, r in mine.iterrows():
        lines.append(f"| {r['claim']} | {md_cell(r['comparison'])} | {md_cell(r['protocol'])} | "
                     f"{gain_cell(r['gain'], r['gain_ci_low'], r['gain_ci_high'])} | {r['n_seeds']} |")
    return "\n".join(lines) + "\n"


__all__ = ["CLAIMS", "CLAIMS_COLUMNS", "CLAIMS_NOTE", "SUMMARY_HEADER", "UNBIASED_CUTS", "claims_markdown",
           "claims_summary", "claims_table", "is_unbiased_cut", "verdict"]
