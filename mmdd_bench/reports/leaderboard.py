"""Leaderboards: one row per (dataset, backbone, protocol, method, size), mean and std over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..metrics import METRIC_NAMES
from ..records import RunRecord, atomic_write_text, canonical_id, read_records

# ``settings`` hashes the method version and every parameter that makes a result (method and protocol):
# records made under different code defaults never merge into one row, even with the same label.
KEY = ["dataset", "backbone", "protocol", "protocol_version", "eval_variant", "method", "variant", "settings", "size"]
# Rows compared with random at the same size: same evaluation, random with its published defaults.
BASE = ["dataset", "backbone", "protocol", "protocol_version", "eval_variant", "size"]
# Evaluation overrides that cannot change how random's sets are scored (random carries no learned lrs), so
# rows made with only these compare with random's default evaluation.
NEUTRAL_FOR_RANDOM = {"use_learned_lrs"}


def settings_id(record: RunRecord) -> str:
    return canonical_id({"method_version": record.method_version, "method_params": record.method_params,
                         "protocol_params": record.protocol_params})[:8]


def records_frame(records: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        if r.status != "ok" or r.debug or not r.metrics.get("mean"):
            continue  # failed runs and debugging runs never enter a leaderboard
        row = {"dataset": r.dataset, "backbone": r.backbone, "protocol": r.protocol,
               "protocol_version": r.protocol_version, "eval_variant": r.eval_variant, "method": r.method,
               "variant": r.variant, "settings": settings_id(r), "size": r.size, "seed": r.seed,
               "storage_bytes": r.storage_bytes, "distill_s": r.timings.get("distill_s", np.nan)}
        row.update({m: r.metrics["mean"][m] for m in METRIC_NAMES})
        rows.append(row)
    return pd.DataFrame(rows, columns=[*KEY, "seed", "storage_bytes", "distill_s", *METRIC_NAMES])


def leaderboard(frame: pd.DataFrame) -> pd.DataFrame:
    """Per group: each metric's mean over seeds (each seed's value is already a mean over students) and
    its sample std over seeds; ``gain_vs_random`` compares ``r_mean`` with random at the same size."""
    columns = [*(c for c in KEY if c != "settings"), "n_seeds"] + [c for m in METRIC_NAMES for c in (m, f"{m}_std")] + [
        "gain_vs_random", "storage_bytes", "distill_s", "settings"]  # settings last: earlier columns keep their place
    if frame.empty:
        return pd.DataFrame(columns=columns)
    grouped = frame.groupby(KEY, sort=True, dropna=False)
    out = grouped[METRIC_NAMES].mean()
    std = grouped[METRIC_NAMES].std(ddof=1).fillna(0.0)
    for m in METRIC_NAMES:
        out[f"{m}_std"] = std[m]
    out["n_seeds"] = grouped["seed"].nunique()
    out["storage_bytes"] = grouped["storage_bytes"].mean()
    out["distill_s"] = grouped["distill_s"].mean()
    out = out.reset_index()
    out["gain_vs_random"] = [row.r_mean - baseline for row, baseline in
                             zip(out.itertuples(index=False), random_baselines(out), strict=True)]
    out = out.sort_values(["dataset", "backbone", "protocol", "size", "r_mean"],
                          ascending=[True, True, True, True, False]).reset_index(drop=True)
    return out[columns].round(2)


def random_baselines(board: pd.DataFrame) -> list[float]:
    """Random's r_mean to compare each row with: same size and evaluation, random without overrides.

    No baseline (NaN) when random has no such row, or when several random rows with different settings
    would qualify (records from different code versions): a gain against an ambiguous baseline would lie.
    """
    is_random = (board["method"] == "random") & (board["variant"] == "")
    by_base = board[is_random].groupby(BASE, dropna=False)["r_mean"]
    table = {key: (values.iloc[0] if len(values) == 1 else np.nan) for key, values in by_base}
    position = {name: i for i, name in enumerate(board.columns)}
    baselines = []
    for row in board.itertuples(index=False, name=None):
        key = tuple(row[position[c]] for c in BASE)
        eval_variant = row[position["eval_variant"]]
        if key not in table and eval_variant:
            names = {item.split("=", 1)[0] for item in eval_variant.split(",")}
            if names <= NEUTRAL_FOR_RANDOM:
                key = tuple("" if c == "eval_variant" else row[position[c]] for c in BASE)
        baselines.append(table.get(key, np.nan))
    return baselines


def label_clashes(board: pd.DataFrame) -> list[bool]:
    """Rows whose visible label (method, variant, evaluation, size) is shared with a row of other settings."""
    if board.empty:
        return []
    label = [c for c in KEY if c != "settings"]
    return list(board.groupby(label, dropna=False)["settings"].transform("nunique") > 1)


def to_markdown(board: pd.DataFrame) -> str:
    cols = ["method", "variant", "eval_variant", "size", "n_seeds", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10",
            "r_mean", "gain_vs_random"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for (_, row), clash in zip(board.iterrows(), label_clashes(board), strict=True):
        cells = []
        for c in cols:
            v = row[c]
            if c == "variant" and clash:  # same label, different settings: show which
                cells.append(f"{v} [settings {row['settings']}]".strip())
                continue
            if c in METRIC_NAMES:
                cells.append(f"{v:.2f} ± {row[c + '_std']:.2f}")
            elif isinstance(v, float):
                cells.append("" if np.isnan(v) else f"{v:+.2f}" if c == "gain_vs_random" else f"{v:.2f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def published_markdown(published) -> str:
    if published.empty:
        return ""
    lines = ["", "## Published (paper setting, for reference; not measured here)", "",
             "| source | method | size | t2i_mean | i2t_mean | r_mean |", "|---|---|---|---|---|---|"]
    for _, row in published.sort_values(["source", "size", "method"]).iterrows():
        lines.append(f"| {row['source']} | {row['method']} | {row['size_label']} | {row['t2i_mean']} | "
                     f"{row['i2t_mean']} | {row['r_mean']} |")
    return "\n".join(lines) + "\n"


def write_leaderboards(results_dir: Path, plots: bool = True) -> list[Path]:
    """Regenerate ``<results>/leaderboard/``: ``leaderboard.csv`` with every group, and per
    (dataset, backbone, protocol) a CSV, a Markdown table (published numbers beside, labelled) and
    figures (``r_mean`` against size; per-metric bars at the largest size)."""
    from .plots import metric_bars, recall_vs_size
    from .published import published_for

    results_dir = Path(results_dir)
    board = leaderboard(records_frame(read_records(results_dir)))
    out_dir = results_dir / "leaderboard"
    written = [out_dir / "leaderboard.csv"]
    atomic_write_text(written[0], board.to_csv(index=False))
    for (ds, bb, proto), part in board.groupby(["dataset", "backbone", "protocol"], sort=True):
        stem = out_dir / f"{ds}__{bb}__{proto}"
        atomic_write_text(stem.with_suffix(".csv"), part.to_csv(index=False))
        title = f"# {ds} / backbone {bb} / protocol {proto}\n\nmean ± std over seeds; recall in percent.\n\n"
        atomic_write_text(stem.with_suffix(".md"), title + to_markdown(part) + published_markdown(published_for(ds, bb, proto)))
        written += [stem.with_suffix(".csv"), stem.with_suffix(".md")]
        if plots:
            written += recall_vs_size(part, ds, bb, proto, out_dir / f"{ds}__{bb}__{proto}__r_mean_vs_size")
            methods_per_size = part.groupby("size")["method"].nunique()
            compared = methods_per_size[methods_per_size == methods_per_size.max()].index.max()  # most methods
            written += metric_bars(part, int(compared), f"{ds} / {bb} / {proto}", out_dir / f"{ds}__{bb}__{proto}__metrics")
    return written
