"""The protocol matrix: per dataset, backbone and size, each method's gain over random under every protocol
that scored its sets (with its interval), and each protocol's full-data ceiling.

Papers score their methods under different protocols (CovMatch trains the text encoder, MTT-VL and LoRS
freeze it), so a lead between two published rows mixes method and protocol. A gain over random *under the
same protocol* separates them; random's own lift from one protocol to another is the part of a cross-protocol
lead that no distillation produced. ``published_protocol_share`` computes that part for the papers' tables.
"""

from __future__ import annotations

import math

import pandas as pd

from .leaderboard import CEILING_METHOD, gain_cell, method_settings, own, settings_labels

MATRIX_COLUMNS = ["dataset", "backbone", "size", "method", "variant", "eval_variant", "protocol", "n_seeds",
                  "r_mean", "gain_vs_random", "gain_ci_low", "gain_ci_high", "vs_random", "share_of_ceiling", "ceiling_r_mean"]
# The published pair whose lead the papers' readers compare: CovMatch (trainable-text) against LoRS (frozen-text).
PUBLISHED_LEAD = (("covmatch", "trainable-text"), ("lors", "frozen-text"))


def protocol_matrix(board: pd.DataFrame) -> pd.DataFrame:
    """Long form of the matrix: one row per (dataset, backbone, size, method [variant], protocol). Where a set
    has rows under several evaluation overrides, the one without overrides fills its cell; rows of different settings
    under one label (an older default's records) get their own row, named by how they differ
    (``leaderboard.settings_labels``), and a cell those names still cannot tell apart is left out rather than
    picked from. The gains are the leaderboard's: over random under the same protocol and evaluation. Transfer
    evaluations (sets distilled with another backbone) are the transfer matrix's (``transfer.py``), not this one's."""
    rows = board[(board["method"] != CEILING_METHOD) & own(board)].copy()
    rows["label"] = [f"{m} {v}".strip() for m, v in zip(rows["method"], rows["variant"], strict=True)]
    keys = ["dataset", "backbone", "size", "label", "protocol"]
    # The default evaluation wins over a cut of the same set only: another set under the label (an older default)
    # scored with the default evaluation never pushes today's set, scored with a cut, out of the matrix.
    rows["method_settings"] = rows["settings_detail"].map(method_settings)
    has_default_eval = rows.groupby([*keys, "method_settings"], dropna=False)["eval_variant"].transform(
        lambda e: (e == "").any())
    rows = rows[~has_default_eval | (rows["eval_variant"] == "")]
    # Sets of an older default share today's label: name how their distillations differ, the same name under
    # every protocol, so each set keeps one row.
    names = settings_labels(rows, by=["dataset", "backbone", "size", "label"], method_only=True)
    rows["label"] = [f"{label} {name}".strip() for label, name in zip(rows["label"], names, strict=True)]
    unique = rows.groupby(keys, dropna=False)["settings"].transform("size") == 1
    return rows[unique][["label", *MATRIX_COLUMNS]].sort_values(keys).reset_index(drop=True)


def _ceiling_by_protocol(board: pd.DataFrame, dataset: str, backbone: str) -> dict[str, float]:
    ceil = board[(board["method"] == CEILING_METHOD) & (board["variant"] == "") & (board["dataset"] == dataset)
                 & (board["backbone"] == backbone) & own(board)]
    counts = ceil.groupby("protocol")["settings"].nunique()
    return {p: float(v) for p, v in zip(ceil["protocol"], ceil["r_mean"], strict=True) if counts[p] == 1}


def md_cell(text: object) -> str:
    """A Markdown table cell from a record field (untrusted): no column breaks, no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _cell(row: pd.Series) -> str:
    gain = gain_cell(row["gain_vs_random"], row["gain_ci_low"], row["gain_ci_high"])
    text = f"{row['r_mean']:.2f}"
    if gain:
        text += f" ({gain}{' ~' if row['vs_random'] else ''})"
    if not math.isnan(row["share_of_ceiling"]):
        text += f", {row['share_of_ceiling']:.0f}%"
    return text


def random_lifts(matrix: pd.DataFrame) -> list[str]:
    """Sentences: how much random gains from one protocol to another at each size (protocol, not method)."""
    lines = []
    randoms = matrix[matrix["label"] == "random"]
    for size, part in randoms.groupby("size"):
        by_protocol = dict(zip(part["protocol"], part["r_mean"], strict=True))
        ranked = sorted(by_protocol, key=by_protocol.get, reverse=True)
        for high, low in zip(ranked, ranked[1:], strict=False):
            lines.append(f"N={size}: random scores {by_protocol[high] - by_protocol[low]:+.2f} under {high} over "
                         f"{low}; a method scored under {high} leads one scored under {low} by this much before "
                         "either distils anything.")
    return lines


def matrix_tables(board: pd.DataFrame, dataset: str, backbone: str) -> list[tuple[int, list[str], list[list[str]]]]:
    """Per size: the protocols (columns) and the rows of cells (method first; the ceilings last), as text that
    the Markdown and the page show alike. Each cell: ``r_mean (gain over random under that protocol [95% CI]),
    % of that protocol's ceiling``; ``~`` flags a gain whose interval contains 0."""
    matrix = protocol_matrix(board)
    matrix = matrix[(matrix["dataset"] == dataset) & (matrix["backbone"] == backbone)]
    ceilings = _ceiling_by_protocol(board, dataset, backbone)
    tables = []
    for size, part in matrix.groupby("size"):
        protocols = sorted(part["protocol"].unique())
        rows = []
        for method, cells in part.groupby("label", sort=True):
            by_protocol = {r["protocol"]: _cell(r) for _, r in cells.iterrows()}
            rows.append([str(method), *[by_protocol.get(p, "") for p in protocols]])
        if ceilings:
            rows.append(["ceiling (full-data)", *[f"{ceilings[p]:.2f}" if p in ceilings else "" for p in protocols]])
        tables.append((int(size), protocols, rows))
    return tables


MATRIX_NOTE = ("Each cell: r_mean (gain over random under the same protocol, paired by seed [95% CI]; ~ when the "
               "interval contains 0), and the share of that protocol's full-data ceiling. A method's lead over another "
               "scored under a different protocol is only comparable through these gains.")


def matrix_markdown(board: pd.DataFrame, dataset: str, backbone: str) -> str:
    lines = [f"# Protocol matrix: {dataset} / backbone {backbone}", "", MATRIX_NOTE, ""]
    for size, protocols, rows in matrix_tables(board, dataset, backbone):
        lines += [f"## N = {size}", "", "| method | " + " | ".join(md_cell(p) for p in protocols) + " |",
                  "|---|" + "---|" * len(protocols)]
        lines += ["| " + " | ".join(md_cell(c) for c in cells) + " |" for cells in rows]
        lines.append("")
    matrix = protocol_matrix(board)
    lifts = random_lifts(matrix[(matrix["dataset"] == dataset) & (matrix["backbone"] == backbone)])
    if lifts:
        lines += ["What is protocol:", "", *[f"- {line}" for line in lifts], ""]
    return "\n".join(lines)


def _published(part: pd.DataFrame, method: str, protocol: str) -> float | None:
    hit = part[(part["method"] == method) & (part["protocol"] == protocol)]["r_mean"]
    return float(hit.iloc[0]) if len(hit) == 1 else None


def published_protocol_share(published: pd.DataFrame) -> pd.DataFrame:
    """Per published (dataset, size): CovMatch's lead over LoRS, random's lift from LoRS's protocol to CovMatch's,
    and the share of the lead that lift explains (the published CSV's own numbers)."""
    (lead_method, lead_protocol), (other_method, other_protocol) = PUBLISHED_LEAD
    rows = []
    for (dataset, size), part in published.dropna(subset=["size"]).groupby(["dataset", "size"]):
        lead, other = _published(part, lead_method, lead_protocol), _published(part, other_method, other_protocol)
        rand_lead, rand_other = _published(part, "random", lead_protocol), _published(part, "random", other_protocol)
        if None in (lead, other, rand_lead, rand_other):
            continue
        lead_gap, lift = lead - other, rand_lead - rand_other
        rows.append({"dataset": dataset, "size": int(size), "lead": round(lead_gap, 2), "random_lift": round(lift, 2),
                     "share_of_lead": round(100 * lift / lead_gap, 0) if lead_gap > 0 else math.nan})
    return pd.DataFrame(rows, columns=["dataset", "size", "lead", "random_lift", "share_of_lead"])


def published_share_markdown(published: pd.DataFrame) -> str:
    share = published_protocol_share(published)
    if share.empty:
        return ""
    (lm, lp), (om, op) = PUBLISHED_LEAD
    lines = [f"# Published: how much of {lm}'s lead over {om} is protocol", "",
             f"{lm} is scored under {lp}, {om} under {op}; random's lift between the two protocols (the same "
             "papers' random rows) is the part of the lead that is protocol.", "",
             "| dataset | size | lead (r_mean) | random's lift | share of the lead |", "|---|---|---|---|---|"]
    lines += [f"| {r.dataset} | {r.size} | {r.lead:+.2f} | {r.random_lift:+.2f} | "
              f"{'' if math.isnan(r.share_of_lead) else f'{r.share_of_lead:.0f}%'} |" for r in share.itertuples()]
    return "\n".join(lines) + "\n"


__all__ = ["MATRIX_COLUMNS", "MATRIX_NOTE", "matrix_markdown", "matrix_tables", "md_cell", "protocol_matrix", "published_protocol_share",
           "published_share_markdown", "random_lifts"]
