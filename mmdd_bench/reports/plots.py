"""Figures from a leaderboard: mean recall against size per method (error bars = std over seeds; none for
a single seed), with published curves dashed beside measured ones; one figure per (dataset, backbone,
protocol). Figures read a finished leaderboard and nothing reads them back."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .leaderboard import method_label, settings_labels  # noqa: E402
from .published import published_for  # noqa: E402


def _save(fig, stem: Path) -> list[Path]:
    out = []
    for ext in ("png", "svg"):
        path = stem.with_name(f"{stem.name}.{ext}")  # never with_suffix: a dot in a name is not a suffix
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{ext}")
        # No date and a fixed id salt: regenerating a report leaves an unchanged figure's SVG byte for byte.
        with plt.rc_context({"svg.hashsalt": "mmdd-bench"}):
            fig.savefig(tmp, dpi=120, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        os.replace(tmp, path)
        out.append(path)
    plt.close(fig)
    return out


def series_name(method: str, variant: str, eval_variant: str, settings: str = "") -> str:
    """One label per leaderboard series: the method, its variant, how it was evaluated if not default, and
    how its settings differ when the same label also names rows of other settings (``settings_labels``)."""
    name = f"{method} [{variant}]" if variant else method
    name = f"{name} (eval {eval_variant})" if eval_variant else name
    return f"{name} {settings}" if settings else name


def _with_series(board: pd.DataFrame) -> pd.DataFrame:
    board = board.copy()
    board["series"] = [series_name(method_label(r.method, r.distilled_backbone), r.variant, r.eval_variant, label)
                       for r, label in zip(board.itertuples(index=False), settings_labels(board), strict=True)]
    return board


def recall_vs_size(board: pd.DataFrame, dataset: str, backbone: str, protocol: str, stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(6, 4))
    colours: dict[str, str] = {}
    for (method, variant, eval_variant, source, name), part in _with_series(board).groupby(
            ["method", "variant", "eval_variant", "distilled_backbone", "series"], sort=True):
        part = part.sort_values("size")
        line = ax.errorbar(part["size"], part["r_mean"], yerr=part["r_mean_std"], marker="o", capsize=3,
                           label=f"{name} (measured)", linestyle=":" if variant or eval_variant or source else "-")
        colours.setdefault(method, line[0].get_color())
    published = published_for(dataset, backbone, protocol).dropna(subset=["size"])
    for (method, source), part in published.groupby(["method", "source"], sort=True):
        part = part.sort_values("size")
        ax.plot(part["size"], part["r_mean"], linestyle="--", marker="x", color=colours.get(method),
                label=f"{method} (published: {source.split('(')[0].strip()})")
    ax.set_xlabel("distilled pairs (N)")
    ax.set_ylabel("mean recall r_mean (%)")
    ax.set_title(f"{dataset} / {backbone} / {protocol}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, stem)


def metric_bars(board: pd.DataFrame, size: int, title: str, stem: Path) -> list[Path]:
    metrics = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"]
    part = _with_series(board[board["size"] == size]).sort_values(["method", "variant", "eval_variant",
                                                                   "distilled_backbone", "settings"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(part))
    for k, (_, row) in enumerate(part.iterrows()):
        xs = [i + k * width for i in range(len(metrics))]
        ax.bar(xs, [row[m] for m in metrics], width, yerr=[row[f"{m}_std"] for m in metrics], capsize=2,
               label=row["series"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))], metrics)
    ax.set_ylabel("recall (%)")
    ax.set_title(f"{title}, N={size}")
    ax.legend(fontsize=8)
    return _save(fig, stem)
