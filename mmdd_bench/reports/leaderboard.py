"""Leaderboards: one row per (dataset, backbone and its weights, splits, protocol, method, variant, the backbone
that distilled the set when it is another one, settings, size), aggregated over **seeds**.

A row averages one record per seed: when several records describe the same seed of the same row (a
re-evaluation with ``mmdd-bench eval``, a rerun elsewhere), the newest is kept and the others are named in
a warning, so ``n_seeds`` is what it says. Each seed's value is already a mean over its students. The std
is over seeds and left empty below two seeds (never a fake 0). Uncertainty comes from ``stats``: a 95%
bootstrap interval of ``r_mean`` and the paired gain over random with its interval; a row whose gain
interval contains 0 is flagged ``~ random``.

A transfer evaluation (a set distilled with backbone A, scored with B: ``distilled_backbone`` = A) is a row
of its own in B's table, labelled ``method (distilled with A)``, never merged with B's own sets; its gain is
over B's own random subsets (the baseline under the backbone that scores it), and the ceilings, the
equal-bytes curves and the baselines themselves come from B's own rows only.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd

from ..metrics import METRIC_NAMES
from ..records import RunRecord, canonical_id
from .stats import indistinguishable, mean_interval, paired_gain

# The columns a reader sees as a row's label; ``settings`` tells apart rows that share one.
LABEL = ["dataset", "backbone", "protocol", "protocol_version", "eval_variant", "method", "variant", "size"]
# ``settings`` hashes everything else a result depends on: the method version and every method and protocol
# parameter, the backbone's weights and the splits, so rows made under different code defaults, weights or
# data never merge.
KEY = [*LABEL[:-1], "distilled_backbone", "settings", "backbone_weights", "train_fingerprint", "test_fingerprint",
       "size"]
# Rows compared with random at the same size: the same evaluation and data, random at its defaults.
BASE = ["dataset", "backbone", "backbone_weights", "train_fingerprint", "test_fingerprint", "protocol",
        "protocol_version", "eval_variant", "size"]
# Evaluation overrides that cannot change how random's sets are scored (random carries no learned lrs and no
# learned similarity), so rows made with only these compare with random's default evaluation.
NEUTRAL_FOR_RANDOM = {"use_learned_lrs", "use_learned_similarity"}
NEAR_RANDOM = "~ random"

COLUMNS = [*LABEL, "n_seeds"] + [c for m in METRIC_NAMES for c in (m, f"{m}_std")] + [
    "gain_vs_random", "storage_bytes", "distill_s", "settings", "distilled_backbone",
    "r_mean_ci_low", "r_mean_ci_high", "gain_ci_low", "gain_ci_high", "vs_random", "deterministic", "n_pairs",
    "budget_pairs", "pairs_equal_bytes", "random_equal_bytes", "gain_equal_bytes",
    "backbone_weights", "train_fingerprint", "test_fingerprint", "ceiling_r_mean", "share_of_ceiling",
    "settings_detail"]
CEILING_METHOD = "full-data"


def settings_id(record: RunRecord) -> str:
    settings = {"method_version": record.method_version, "method_params": record.method_params,
                "protocol_params": record.protocol_params, "backbone_weights": record.backbone_weights,
                "train": record.dataset_fingerprints.get("train"), "test": record.dataset_fingerprints.get("test")}
    if record.distilled_backbone:  # a transfer: which weights distilled the set (only then: old hashes stay)
        settings["distilled_backbone_weights"] = record.distilled_backbone_weights
    return canonical_id(settings)[:8]


def settings_detail(record: RunRecord) -> str:
    """What ``settings_id`` hashes that a reader can tell apart: the method's version and the method and
    protocol parameters (JSON), so rows of one label but different settings can say how they differ."""
    return json.dumps({"method_version": record.method_version, "method": record.method_params,
                       "protocol": record.protocol_params}, sort_keys=True, default=str)


def method_settings(detail: str) -> str:
    """``settings_detail`` less the protocol's parameters: which set was scored, however it was scored."""
    settings = json.loads(detail)
    settings.pop("protocol", None)
    return json.dumps(settings, sort_keys=True)


def own(board: pd.DataFrame) -> pd.Series:
    """Rows of sets scored with the backbone that distilled them (not transfer evaluations)."""
    return board["distilled_backbone"] == ""


def method_label(method: str, distilled_backbone: str) -> str:
    """``covmatch``, or ``covmatch (distilled with tiny)`` for a transfer evaluation's row."""
    return f"{method} (distilled with {distilled_backbone})" if distilled_backbone else method


def records_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per usable record (ok, not a debug run, with metrics)."""
    rows = []
    for r in records:
        if r.status != "ok" or r.debug or not r.metrics.get("mean"):
            continue  # failed runs and debugging runs never enter a leaderboard
        row = {"dataset": r.dataset, "backbone": r.backbone, "protocol": r.protocol,
               "protocol_version": r.protocol_version, "eval_variant": r.eval_variant, "method": r.method,
               "variant": r.variant, "distilled_backbone": r.distilled_backbone or "", "settings": settings_id(r),
               "settings_detail": settings_detail(r),
               "backbone_weights": r.backbone_weights,
               "train_fingerprint": r.dataset_fingerprints.get("train", ""),
               "test_fingerprint": r.dataset_fingerprints.get("test", ""), "size": r.size, "seed": r.seed,
               "run_id": r.run_id, "finished_utc": r.finished_utc, "deterministic": r.deterministic,
               "storage_bytes": r.storage_bytes, "n_pairs": r.n_pairs, "budget_pairs": r.budget_pairs,
               "distill_s": r.timings.get("distill_s", np.nan),
               "eval_aids": None if r.eval_aids is None else "+".join(r.eval_aids)}
        row.update({m: r.metrics["mean"].get(m, np.nan) for m in METRIC_NAMES})
        rows.append(row)
    return pd.DataFrame(rows, columns=[*KEY, "seed", "run_id", "finished_utc", "deterministic", "storage_bytes",
                                       "n_pairs", "budget_pairs", "distill_s", "eval_aids", "settings_detail",
                                       *METRIC_NAMES])


def one_record_per_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the newest record of each (row, seed); warn naming the files left out."""
    if frame.empty:
        return frame
    frame = frame.sort_values(["finished_utc", "run_id"], kind="stable")
    dup = frame.duplicated([*KEY, "seed"], keep="last")
    if dup.any():
        kept = frame[~dup].set_index([*KEY, "seed"])["run_id"]
        for key, part in frame[dup].groupby([*KEY, "seed"], sort=True, dropna=False):
            dropped = ", ".join(f"runs/{r}.json" for r in part["run_id"])
            warnings.warn(f"{key[0]} {key[5]} N={key[-2]} seed {key[-1]}: several records of one seed; kept the newest "
                          f"runs/{kept.loc[key]}.json, left out {dropped}", stacklevel=2)
    return frame[~dup]


def leaderboard(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row: each metric's mean and sample std over seeds, intervals, and the gain over random."""
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame = one_record_per_seed(frame)
    grouped = frame.groupby(KEY, sort=True, dropna=False)
    out = grouped[METRIC_NAMES].mean()
    std = grouped[METRIC_NAMES].std(ddof=1)  # NaN below two seeds: no spread to report
    for m in METRIC_NAMES:
        out[f"{m}_std"] = std[m]
    out["n_seeds"] = grouped["seed"].nunique()
    for column in ("storage_bytes", "n_pairs", "budget_pairs", "distill_s"):
        out[column] = grouped[column].mean()
    out["deterministic"] = grouped["deterministic"].any()
    out["settings_detail"] = grouped["settings_detail"].first()  # one settings hash: one detail
    per_seed = grouped.apply(lambda g: dict(zip(g["seed"], g["r_mean"], strict=True)), include_groups=False)
    intervals = [mean_interval(list(values.values())) for values in per_seed]
    out["r_mean_ci_low"] = [lo for lo, _ in intervals]
    out["r_mean_ci_high"] = [hi for _, hi in intervals]
    out = out.reset_index()
    per_seed = list(per_seed)
    gains = [paired_gain(seeds, baseline) if baseline is not None else (math.nan, math.nan, math.nan)
             for seeds, baseline in zip(per_seed, random_baselines(out, per_seed), strict=True)]
    # Random against itself: a gain of 0 by definition, with no interval to speak of.
    gains = [(g, math.nan, math.nan) if is_base else (g, lo, hi) for (g, lo, hi), is_base in
             zip(gains, baseline_rows(out).tolist(), strict=True)]
    out["gain_vs_random"] = [g for g, _, _ in gains]
    out["gain_ci_low"] = [lo for _, lo, _ in gains]
    out["gain_ci_high"] = [hi for _, _, hi in gains]
    out["vs_random"] = [NEAR_RANDOM if method != "random" and indistinguishable(lo, hi) else ""
                        for method, (_, lo, hi) in zip(out["method"], gains, strict=True)]
    equal = equal_bytes(out)
    out["pairs_equal_bytes"] = [n for n, _ in equal]
    out["random_equal_bytes"] = [r for _, r in equal]
    out["gain_equal_bytes"] = out["r_mean"] - out["random_equal_bytes"]
    out["ceiling_r_mean"] = ceilings(out)
    out["share_of_ceiling"] = 100 * out["r_mean"] / out["ceiling_r_mean"]
    out = out.sort_values(["dataset", "backbone", "protocol", "size", "r_mean"],
                          ascending=[True, True, True, True, False]).reset_index(drop=True)
    rounded = [c for c in COLUMNS if c in METRIC_NAMES or c.endswith(("_std", "_ci_low", "_ci_high"))
               or c in ("gain_vs_random", "distill_s", "random_equal_bytes", "gain_equal_bytes", "ceiling_r_mean",
                        "share_of_ceiling")]
    out[rounded] = out[rounded].astype(float).round(2)
    return out[COLUMNS]


def baseline_rows(board: pd.DataFrame) -> pd.Series:
    """Random without overrides, on its own backbone's sets: the rows other rows are compared with."""
    return (board["method"] == "random") & (board["variant"] == "") & own(board)


def random_baselines(board: pd.DataFrame, per_seed: list[dict[int, float]]) -> list[dict[int, float] | None]:
    """Random's per-seed r_mean to compare each row with: same size, evaluation and data, random without
    overrides, distilled and scored with the row's (scoring) backbone. None when random has no such row, or when
    several random rows with different settings would qualify (records from different code versions): a gain
    against an ambiguous baseline would lie."""
    is_random = baseline_rows(board).tolist()
    table: dict[tuple, list[dict[int, float]]] = {}
    for i, row in enumerate(board[BASE].itertuples(index=False, name=None)):
        if is_random[i]:
            table.setdefault(row, []).append(per_seed[i])
    eval_col = BASE.index("eval_variant")
    baselines: list[dict[int, float] | None] = []
    for row in board[BASE].itertuples(index=False, name=None):
        key = row
        if key not in table and row[eval_col]:
            names = {item.split("=", 1)[0] for item in row[eval_col].split(",")}
            if names <= NEUTRAL_FOR_RANDOM:
                key = (*row[:eval_col], "", *row[eval_col + 1:])
        found = table.get(key, [])
        baselines.append(found[0] if len(found) == 1 else None)
    return baselines


def ceilings(board: pd.DataFrame) -> list[float]:
    """For each row: the ``full-data`` ceiling's r_mean under the same protocol, backbone weights and splits (its
    own student epochs, whatever the row's evaluation overrides). NaN when no ceiling was run, or when several
    ceilings with different settings would qualify (records from different code versions)."""
    base = [c for c in BASE if c not in ("size", "eval_variant")]
    ceiling_rows = board[(board["method"] == CEILING_METHOD) & (board["variant"] == "") & own(board)]
    table: dict[tuple, list[float]] = {}
    for key, value in zip(ceiling_rows[base].itertuples(index=False, name=None), ceiling_rows["r_mean"], strict=True):
        table.setdefault(key, []).append(float(value))
    found = [table.get(key, []) for key in board[base].itertuples(index=False, name=None)]
    return [values[0] if len(values) == 1 else math.nan for values in found]


def equal_bytes(board: pd.DataFrame) -> list[tuple[float, float]]:
    """For each row: the number of random pairs that cost as many bytes as its set, and random's r_mean there
    (interpolated linearly in log size between the random sizes measured under the same evaluation and data;
    none outside them: no extrapolation). Pairs differ in cost by text kind (captions are a few bytes, token
    embeddings kilobytes) and by what a set stores besides its pairs, so this compares at equal storage."""
    base = [c for c in BASE if c != "size"]
    randoms = board[baseline_rows(board)]
    curves: dict[tuple, tuple[np.ndarray, np.ndarray, float]] = {}
    for key, part in randoms.groupby(base, dropna=False):
        part = part.sort_values("size")
        if part["settings"].nunique() > 1 or part["storage_bytes"].isna().any():
            continue  # ambiguous or unmeasured baseline: no comparison rather than a wrong one
        per_pair = float((part["storage_bytes"] / part["size"]).mean())
        curves[key if isinstance(key, tuple) else (key,)] = (np.log(part["size"].to_numpy(float)),
                                                             part["r_mean"].to_numpy(float), per_pair)
    out = []
    for row in board.itertuples(index=False):
        key = tuple(getattr(row, c) for c in base)
        if key not in curves or not row.storage_bytes or math.isnan(row.storage_bytes):
            out.append((math.nan, math.nan))
            continue
        log_sizes, recalls, per_pair = curves[key]
        pairs = row.storage_bytes / per_pair
        at = math.log(pairs)
        inside = log_sizes[0] - 1e-9 <= at <= log_sizes[-1] + 1e-9
        out.append((round(pairs, 1), float(np.interp(at, log_sizes, recalls)) if inside else math.nan))
    return out


def _flat(detail: str, method_only: bool = False) -> dict[str, str]:
    parsed = json.loads(detail) if detail else {}
    flat = {"method_version": f"v{parsed.get('method_version')}"}
    flat.update({k: str(v) for k, v in (parsed.get("method") or {}).items()})
    if not method_only:
        flat.update({f"eval.{k}": str(v) for k, v in (parsed.get("protocol") or {}).items()})
    return flat


def settings_labels(board: pd.DataFrame, by: list[str] | None = None, method_only: bool = False) -> list[str]:
    """Per row, how it differs from the rows that share its visible label: the method version and the method
    and protocol parameters whose values differ among them (``lr_encoder=0.003``; ``None`` is the backbone's
    own value), or the settings hash where only the weights or splits differ; "" where no other row shares
    the label. This is how a row made under an older default reads apart from today's.

    ``by`` are the columns that make the visible label (the leaderboard's by default); ``method_only`` compares
    the distillations alone (method version and parameters), for a table whose rows span protocols: rows that
    differ only in how they were scored then get no name, and the caller decides what to do with them."""
    labels = [""] * len(board)
    if board.empty:
        return labels
    positions = {index: i for i, index in enumerate(board.index)}
    for _, group in board.groupby([*(LABEL if by is None else by), "distilled_backbone"], dropna=False):
        if group["settings"].nunique() < 2:
            continue
        flats = {index: _flat(detail, method_only) for index, detail in group["settings_detail"].items()}
        if method_only and len({json.dumps(f, sort_keys=True) for f in flats.values()}) < 2:
            continue
        keys = sorted({k for f in flats.values() for k in f})
        differing = [k for k in keys if len({f.get(k, "-") for f in flats.values()}) > 1]
        for index, flat in flats.items():
            shown = ", ".join(f"{k}={flat.get(k, '-')}" for k in differing)
            labels[positions[index]] = f"[{shown}]" if shown else f"[settings {group.loc[index, 'settings']}]"
    return labels


def _number(value: float, fmt: str = "{:.2f}") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def metric_cell(mean: float, std: float) -> str:
    """``12.34 ± 1.20``, or ``12.34`` alone when there is no std (one seed)."""
    return _number(mean) if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def interval_cell(low: float, high: float) -> str:
    return "" if math.isnan(low) or math.isnan(high) else f"[{low:.2f}, {high:.2f}]"


def gain_cell(gain: float, low: float, high: float) -> str:
    if math.isnan(gain):
        return ""
    return f"{gain:+.2f}" + (f" [{low:+.2f}, {high:+.2f}]" if not (math.isnan(low) or math.isnan(high)) else "")


DETERMINISTIC_MARK = "†"
DETERMINISTIC_NOTE = (f"{DETERMINISTIC_MARK} deterministic method: every seed selects the same set, so its spread "
                      "is the students' alone, not the subset's.")
MARKDOWN_COLUMNS = ["method", "variant", "eval_variant", "size", "n_seeds", "i2t_R@1", "i2t_R@5", "i2t_R@10",
                    "t2i_R@1", "t2i_R@5", "t2i_R@10", "r_mean", "r_mean 95% CI", "gain_vs_random [95% CI]", "vs_random",
                    "KiB", "gain at equal bytes (random pairs)", "% of ceiling"]


def display_rows(board: pd.DataFrame) -> list[list[str]]:
    """The leaderboard as text cells (Markdown and the page show the same thing)."""
    rows = []
    for (_, row), settings in zip(board.iterrows(), settings_labels(board), strict=True):
        method = method_label(row["method"], row["distilled_backbone"])
        method = f"{method} {DETERMINISTIC_MARK}" if row["deterministic"] else method
        variant = f"{row['variant']} {settings}".strip()
        cells = [method, variant, row["eval_variant"], str(row["size"]), str(row["n_seeds"])]
        cells += [metric_cell(row[m], row[f"{m}_std"]) for m in METRIC_NAMES]
        cells += [interval_cell(row["r_mean_ci_low"], row["r_mean_ci_high"]),
                  gain_cell(row["gain_vs_random"], row["gain_ci_low"], row["gain_ci_high"]), row["vs_random"],
                  _number(row["storage_bytes"] / 1024, "{:.0f}") if row["storage_bytes"] else "",
                  "" if math.isnan(row["gain_equal_bytes"]) else
                  f"{row['gain_equal_bytes']:+.2f} ({row['pairs_equal_bytes']:.0f})",
                  _number(row["share_of_ceiling"], "{:.0f}%")]
        rows.append(cells)
    return rows


def to_markdown(board: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in display_rows(board)]
    if board["deterministic"].any():
        lines += ["", DETERMINISTIC_NOTE]
    return "\n".join(lines) + "\n"


def published_markdown(published: pd.DataFrame) -> str:
    if published.empty:
        return ""
    lines = ["", "## Published (paper setting, for reference; not measured here)", "",
             "| source | method | size | t2i_mean | i2t_mean | r_mean |", "|---|---|---|---|---|---|"]
    for _, row in published.sort_values(["source", "size", "method"]).iterrows():
        lines.append(f"| {row['source']} | {row['method']} | {row['size_label']} | {row['t2i_mean']} | "
                     f"{row['i2t_mean']} | {row['r_mean']} |")
    return "\n".join(lines) + "\n"


__all__ = ["BASE", "CEILING_METHOD", "COLUMNS", "ceilings", "KEY", "LABEL", "NEAR_RANDOM", "baseline_rows", "display_rows",
           "leaderboard", "method_label", "one_record_per_seed", "own", "published_markdown",
           "records_frame", "settings_detail", "settings_id", "settings_labels", "to_markdown"]
