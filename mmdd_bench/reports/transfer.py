"""The transfer matrix: per dataset, protocol and size, each method's sets scored with every backbone, by the
backbone that distilled them (rows) and the one that scored them (columns).

A set is fitted to the image encoder it was distilled with; scored with another one (a transfer evaluation,
``mmdd-bench eval SET --backbone B``) it shows how much of its gain is the data's and how much the
architecture's. Each cell: ``r_mean`` with its 95% interval over seeds and the gain over random *under the
scoring backbone* (its own random subsets, paired by seed, with its interval): a transferred set must beat
what random pairs give the backbone that scores it, not the backbone that made it. Both come from the
leaderboard, which computes them with ``stats`` like every other row; the diagonal is each backbone's own sets.
"""

from __future__ import annotations

import pandas as pd

from .leaderboard import CEILING_METHOD, gain_cell, interval_cell
from .matrix import md_cell

TRANSFER_COLUMNS = ["dataset", "protocol", "size", "method", "variant", "eval_variant", "distilled_with", "evaluated_with",
                    "n_seeds", "r_mean", "r_mean_ci_low", "r_mean_ci_high", "gain_vs_random", "gain_ci_low",
                    "gain_ci_high", "vs_random", "settings"]
TRANSFER_NOTE = ("Rows: the backbone that distilled the sets; columns: the backbone that scored them (the diagonal: "
                 "each backbone's own sets). Each cell: r_mean [95% interval over seeds], and the gain over random "
                 "under the scoring backbone (its own random subsets, paired by seed [95% CI]; ~ when the interval "
                 "contains 0). A blank cell: no record of those sets scored with that backbone under that protocol "
                 "(a transfer evaluation scores a set under its method's own protocol).")


def transfer_matrix(board: pd.DataFrame) -> pd.DataFrame:
    """Long form: one row per (dataset, protocol, size, method [variant], distilled with, evaluated with), for
    the (dataset, protocol, size) groups that hold at least one transfer evaluation; empty when none does. Where
    a cell has rows under several evaluation overrides, the one without overrides fills it; a cell that rows of
    different settings would still share (records from different code versions or weights) is left out rather
    than picked from."""
    rows = board[board["method"] != CEILING_METHOD].copy()
    rows["distilled_with"] = [src or bb for src, bb in zip(rows["distilled_backbone"], rows["backbone"], strict=True)]
    rows["evaluated_with"] = rows["backbone"]
    group = ["dataset", "protocol", "size"]
    with_transfer = rows.groupby(group, dropna=False)["distilled_backbone"].transform(lambda s: (s != "").any())
    rows = rows[with_transfer.astype(bool)]
    rows["label"] = [f"{m} {v}".strip() for m, v in zip(rows["method"], rows["variant"], strict=True)]
    keys = [*group, "label", "distilled_with", "evaluated_with"]
    has_default_eval = rows.groupby(keys, dropna=False)["eval_variant"].transform(lambda e: (e == "").any())
    rows = rows[~has_default_eval.astype(bool) | (rows["eval_variant"] == "")]
    unique = rows.groupby(keys, dropna=False)["settings"].transform("size") == 1
    return rows[unique][["label", *TRANSFER_COLUMNS]].sort_values(keys).reset_index(drop=True)


def _cell(row: pd.Series) -> str:
    text = f"{row['r_mean']:.2f}"
    interval = interval_cell(row["r_mean_ci_low"], row["r_mean_ci_high"])
    if interval:
        text += f" {interval}"
    gain = gain_cell(row["gain_vs_random"], row["gain_ci_low"], row["gain_ci_high"])
    # Random on its own backbone is the baseline itself (a gain of 0 by definition): no gain to show.
    if gain and not (row["method"] == "random" and not row["variant"] and row["distilled_with"] == row["evaluated_with"]):
        text += f" ({gain}{' ~' if row['vs_random'] else ''})"
    return text


def transfer_tables(board: pd.DataFrame, dataset: str) -> list[tuple[str, int, list[str], list[list[str]]]]:
    """Per (protocol, size) of ``dataset``: the scoring backbones (columns) and the rows of cells, ``method``
    and ``distilled with`` first, as text that the Markdown and the page show alike."""
    matrix = transfer_matrix(board)
    matrix = matrix[matrix["dataset"] == dataset]
    tables = []
    for (protocol, size), part in matrix.groupby(["protocol", "size"], sort=True):
        backbones = sorted(part["evaluated_with"].unique())
        rows = []
        for (label, source), cells in part.groupby(["label", "distilled_with"], sort=True):
            by_backbone = {r["evaluated_with"]: _cell(r) for _, r in cells.iterrows()}
            rows.append([str(label), str(source), *[by_backbone.get(b, "") for b in backbones]])
        tables.append((str(protocol), int(size), backbones, rows))
    return tables


def transfer_markdown(board: pd.DataFrame, dataset: str) -> str:
    lines = [f"# Transfer matrix: {md_cell(dataset)}", "", TRANSFER_NOTE, ""]
    for protocol, size, backbones, rows in transfer_tables(board, dataset):
        lines += [f"## protocol {md_cell(protocol)}, N = {size}", "",
                  "| method | distilled with | " + " | ".join(f"scored with {md_cell(b)}" for b in backbones) + " |",
                  "|---|---|" + "---|" * len(backbones)]
        lines += ["| " + " | ".join(md_cell(c) for c in cells) + " |" for cells in rows]
        lines.append("")
    return "\n".join(lines)


def has_transfers(board: pd.DataFrame) -> bool:
    return bool(len(board)) and bool((board["distilled_backbone"] != "").any())


__all__ = ["TRANSFER_COLUMNS", "TRANSFER_NOTE", "has_transfers", "transfer_markdown", "transfer_matrix",
           "transfer_tables"]
