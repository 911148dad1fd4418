"""Calibrating an embedded dataset on method-independent properties (issue 16), never on a method's result.

An embedded benchmark is useful only if it behaves like Flickr30K where the papers' claims are made:
freezing the text encoder must cost something (Flickr30K: 55.7 frozen-text against about 75 trainable-text at
full data), random subsets must be weak (random-100 is about 11% of the trainable-text ceiling there) and
grow with N, and retrieval must leave headroom. This module measures exactly those properties, on the **val**
split (what a design may be tuned on) and on **test** (reported once, for the record):

- a *full-data ceiling*: the ``full-data`` method under a protocol, as the harness runs it (its embedded
  evaluation: one student, the epoch chosen on val);
- *random-N*: the ``random`` method's sets, scored by the protocol with its default parameters.

Every entry is ``Protocol.evaluate`` with the harness's parameters, its students scored on test and also on
val (``also_score``), so the test numbers equal what ``mmdd-bench run`` records for the same cells.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from .data.splits import Dataset
from .encoders.backbone import Backbone
from .method import DistillContext, get_method
from .metrics import METRIC_NAMES
from .params import apply_overrides, identity_dict
from .protocols import get_protocol
from .protocols.base import EvalParams, summarize

SPLITS = ("val", "test")
# What "far from saturated" means here: no metric of a full-data ceiling above this (Flickr30K's
# trainable-text R@10 is in the 90s; a toy set whose R@10 is 100 has no headroom left).
SATURATION = 90.0


def harness_eval_params(protocol_name: str, method_name: str, dataset_name: str,
                        overrides: dict[str, Any] | None = None) -> EvalParams:
    """The evaluation parameters ``mmdd-bench run`` gives a method's sets under a protocol, then ``overrides``
    (as ``--set eval.NAME=VALUE`` would; a calibration uses none, smoke runs shrink the students)."""
    params = get_protocol(protocol_name).default_params(dataset_name)
    params = apply_overrides(params, get_method(method_name).eval_defaults(dataset_name), "eval")
    return apply_overrides(params, overrides or {}, "eval")


def measure(method_name: str, protocol_name: str, dataset: Dataset, backbone: Backbone, size: int, seed: int,
            device: torch.device, cache_dir: Path, overrides: dict[str, Any] | None = None) -> dict:
    """One harness cell (the method's set for (size, seed), scored under the protocol), scored on val and test."""
    method = get_method(method_name)
    ctx = DistillContext(dataset.train_view(), backbone, size, seed, device, cache_dir)
    distilled = method.distill(ctx, method.default_params(size, dataset.name))
    protocol = get_protocol(protocol_name)
    params = harness_eval_params(protocol_name, method_name, dataset.name, overrides)
    result = protocol.evaluate(distilled, dataset, backbone, params, seed, device, cache_dir, also_score=("val",))
    per_student = {"test": result.per_student, "val": result.other_splits["val"]}
    means, stds = {}, {}
    for name in SPLITS:
        means[name], stds[name] = summarize(per_student[name])
    return {"per_student": per_student, "mean": means, "std": stds, "params": result.params,
            "selected_epochs": result.selected_epochs, "seconds": round(result.seconds, 1),
            "identity": identity_dict(protocol.resolve_params(params, backbone)), "seed": seed}


# ---- the calibration run ----------------------------------------------------------------------------------
@dataclass
class CalibrationConfig:
    dataset: str
    backbone: str
    sizes: tuple[int, ...] = (100, 200, 500)
    seeds: tuple[int, ...] = (0, 1, 2)
    protocols: tuple[str, ...] = ("trainable-text", "frozen-text")
    ceiling_seed: int = 0
    eval_overrides: dict[str, Any] = field(default_factory=dict)  # smoke runs only: not a calibration
    # fnmatch patterns over the entry keys ("trainable-text/random-500/*"): measure only those; empty means all.
    # Two processes with disjoint patterns share one output file (each save merges under a lock).
    only: tuple[str, ...] = ()


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _same_data(results: dict, dataset: Dataset, backbone: Backbone) -> bool:
    return (results.get("backbone_weights") == backbone.weights_id
            and results.get("train_fingerprint") == dataset.train.fingerprint)


def _read(out: Path) -> dict:
    try:
        return json.loads(out.read_text()) if out.is_file() else {}
    except ValueError:
        return {}


def _save_merged(out: Path, results: dict, mine: set[str], dataset: Dataset, backbone: Backbone,
                 config: CalibrationConfig | None = None) -> None:
    """Write ``results`` to ``out`` keeping the entries another process saved there meanwhile (the ones this
    run did not measure), so calibrations of disjoint cells can run side by side on one file; with
    ``config``, the table is recomputed over the merged entries first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        on_disk = _read(out)
        if _same_data(on_disk, dataset, backbone):
            for key, entry in on_disk.get("entries", {}).items():
                if key not in mine:
                    results["entries"][key] = entry
        if config is not None:
            results["table"] = calibration_table(results, config)
        _write_json(out, results)


def run_calibration(config: CalibrationConfig, dataset: Dataset, backbone: Backbone, device: torch.device,
                    cache_dir: Path, out: Path, log: Callable[[str], None] = print) -> dict:
    """Measure every property, saving after each evaluation; an entry already in ``out`` with the same
    parameters and weights is kept, so an interrupted run resumes."""
    results = _read(out)
    if not _same_data(results, dataset, backbone):
        results = {}
    results.setdefault("entries", {})
    results.update({"dataset": dataset.name, "backbone": backbone.name, "backbone_weights": backbone.weights_id,
                    "train_fingerprint": dataset.train.fingerprint, "val_fingerprint": dataset.val.fingerprint,
                    "test_fingerprint": dataset.test.fingerprint, "torch": torch.__version__, "device": str(device),
                    "eval_overrides": config.eval_overrides})
    entries = results["entries"]
    cells = [(f"{name}/full", "full-data", name, dataset.train.n_pairs, config.ceiling_seed)
             for name in config.protocols]
    cells += [(f"{name}/random-{size}/seed{seed}", "random", name, size, seed)
              for name in config.protocols for size in config.sizes for seed in config.seeds]
    if config.only:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c[0], pattern) for pattern in config.only)]
    mine: set[str] = set()
    for key, method, protocol, size, seed in cells:
        identity = identity_dict(get_protocol(protocol).resolve_params(
            harness_eval_params(protocol, method, dataset.name, config.eval_overrides), backbone))
        if key in entries and entries[key].get("identity") == identity:
            log(f"  {key}: kept from {out}")
            continue
        log(f"  {key} ...")
        entries[key] = measure(method, protocol, dataset, backbone, size, seed, device, cache_dir,
                               config.eval_overrides)
        mine.add(key)
        log(f"  {key}: val r_mean {entries[key]['mean']['val']['r_mean']:.2f}, "
            f"test {entries[key]['mean']['test']['r_mean']:.2f} ({entries[key]['seconds']:.0f} s)")
        _save_merged(out, results, mine, dataset, backbone)
    _save_merged(out, results, mine, dataset, backbone, config)
    return results


def _mean_over_seeds(entries: dict, prefix: str, split: str, metric: str = "r_mean") -> float | None:
    values = [e["mean"][split][metric] for k, e in entries.items() if k.startswith(prefix + "/seed")]
    return float(np.mean(values)) if values else None


def calibration_table(results: dict, config: CalibrationConfig) -> list[dict]:
    """The properties, their targets and what was measured on val and test."""
    entries = results["entries"]
    rows = []

    def ceiling(protocol: str, split: str) -> float | None:
        entry = entries.get(f"{protocol}/full")
        return entry["mean"][split]["r_mean"] if entry else None

    def per_split(fn: Callable[[str], Any]) -> dict[str, Any]:
        return {split: fn(split) for split in SPLITS}

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1f}"

    tt, ft = "trainable-text", "frozen-text"
    for proto in (tt, ft):
        rows.append({"property": f"full-data ceiling, {proto} (r_mean)", "target": "(reference)",
                     **per_split(lambda s, p=proto: fmt(ceiling(p, s)))})

    def gap(split: str) -> str:
        a, b = ceiling(tt, split), ceiling(ft, split)
        return "n/a" if a is None or b is None else f"{a - b:.1f} ({'ok' if a - b >= 10 else 'MISSED'})"

    rows.append({"property": "ceiling gap, trainable-text minus frozen-text", "target": ">= 10", **per_split(gap)})

    smallest = min(config.sizes)

    def share(split: str) -> str:
        r_small, top = _mean_over_seeds(entries, f"{tt}/random-{smallest}", split), ceiling(tt, split)
        if r_small is None or not top:
            return "n/a"
        pct = 100 * r_small / top
        return f"{r_small:.1f} = {pct:.0f}% ({'ok' if 10 <= pct <= 25 else 'MISSED'})"

    rows.append({"property": f"random-{smallest} (trainable-text) as a share of its ceiling", "target": "10-25%",
                 **per_split(share)})
    for proto in config.protocols:
        def growth(split: str, proto: str = proto) -> str:
            values = [_mean_over_seeds(entries, f"{proto}/random-{n}", split) for n in config.sizes]
            if any(v is None for v in values):
                return "n/a"
            ok = all(b > a for a, b in zip(values, values[1:], strict=False))
            return " -> ".join(f"{v:.1f}" for v in values) + f" ({'ok' if ok else 'MISSED'})"

        rows.append({"property": f"random-{'/'.join(map(str, config.sizes))} ({proto}) grows with N",
                     "target": "increasing", **per_split(growth)})

    def saturation(split: str) -> str:
        found = [(entries[f"{p}/full"]["mean"][split][m], f"{p} {m}") for p in config.protocols
                 if f"{p}/full" in entries for m in METRIC_NAMES]
        if not found:
            return "n/a"
        top, where = max(found)
        return f"{top:.1f} [{where}] ({'ok' if top <= SATURATION else 'MISSED'})"

    rows.append({"property": "highest metric at full data (no metric near 100)", "target": f"<= {SATURATION:.0f}",
                 **per_split(saturation)})
    return rows


def format_table(rows: list[dict]) -> str:
    """The calibration table as Markdown."""
    lines = ["| property | target | val | test |", "|---|---|---|---|"]
    lines += [f"| {r['property']} | {r['target']} | {r['val']} | {r['test']} |" for r in rows]
    return "\n".join(lines)


__all__ = ["CalibrationConfig", "calibration_table", "format_table", "harness_eval_params", "measure",
           "run_calibration"]
