#!/usr/bin/env python
"""Does a rerun reproduce committed records, and how much faster or slower was it? Cell by cell.

Takes a reference results folder (the committed ``results/``) and a candidate one (a rerun of some of its
cells, e.g. after a speed-up, or on another machine) and pairs records by run id: the same cell, the same
identity. For each pair it reports whether every metric of every student is equal, the largest metric
difference, and the distillation and evaluation seconds of both; then the totals. A candidate that scores the
same set under the same protocol with fewer students than the reference (a grid cut to fewer students) pairs with
it too, on the students both have: student k of a cell is trained from the same seed whatever the count, so a
cut must reproduce the reference's first students exactly. Records of the candidate with no reference are
listed, not guessed at.

Each pair also names both records' torch thread counts: on a CPU the same seed can give other floats under
another thread count (the kernels split their sums differently), and the trajectory methods amplify that (MTT-VL
on scenes, N=100, seed 0: r_mean 5.25 distilled with 1 thread, 2.98 with 2, from the same experts).

    python scripts/compare_records.py results /tmp/rerun --out benchmarks/results/rerun-vs-committed.json

What it says about time holds only as far as the two runs' machines and loads compare: the JSON keeps each
record's ``environment`` CPU and its start time so a reader can judge that.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmdd_bench.metrics import METRIC_NAMES
from mmdd_bench.records import RunRecord, atomic_write_text, read_records


def _seconds(record: RunRecord, key: str) -> float:
    return float((record.timings or {}).get(key) or 0.0)


def _same_but_students(record: RunRecord) -> str:
    """What makes a record's result, less its protocol's student count: the same set scored the same way."""
    protocol_params = {k: v for k, v in (record.protocol_params or {}).items() if k != "n_students"}
    return json.dumps([record.dataset, record.dataset_fingerprints, record.method, record.method_version,
                       record.method_params, record.size, record.seed, record.variant, record.backbone,
                       record.backbone_weights, record.protocol, record.protocol_version, protocol_params],
                      sort_keys=True, default=str)


def _students(record: RunRecord) -> int:
    return len(record.metrics.get("per_student", []))


def compare(reference: list[RunRecord], candidate: list[RunRecord]) -> dict:
    by_id = {r.run_id: r for r in reference}
    by_identity = {_same_but_students(r): r for r in reference if r.status == "ok"}
    cells, unmatched = [], []
    for new in sorted(candidate, key=lambda r: (r.dataset, r.method, r.size, r.seed, r.protocol, r.variant)):
        old, paired_by = by_id.get(new.run_id), "run_id"
        if old is None and new.status == "ok":
            fewer = by_identity.get(_same_but_students(new))
            if fewer is not None and _students(fewer) > _students(new):
                old, paired_by = fewer, "first students"
        if old is None or old.status != "ok" or new.status != "ok":
            unmatched.append({"run_id": new.run_id, "dataset": new.dataset, "method": new.method, "size": new.size, "seed": new.seed,
                              "protocol": new.protocol, "why": "no reference record" if old is None else "a failed record"})
            continue
        old_students, new_students = old.metrics.get("per_student", []), new.metrics.get("per_student", [])
        if paired_by == "first students":
            old_students = old_students[:len(new_students)]
        diffs = [abs(a[m] - b[m]) for a, b in zip(old_students, new_students, strict=False) for m in METRIC_NAMES]
        cells.append({
            "run_id": new.run_id, "dataset": new.dataset, "method": new.method, "size": new.size, "seed": new.seed, "protocol": new.protocol,
            "variant": new.variant, "eval_variant": new.eval_variant, "paired_by": paired_by,
            "reference_run_id": old.run_id, "students_compared": len(new_students),
            "identical_metrics": len(old_students) == len(new_students) and not any(diffs),
            "max_metric_diff": max(diffs, default=None),
            "r_mean": {"reference": old.metrics["mean"]["r_mean"], "candidate": new.metrics["mean"]["r_mean"]},
            "distill_s": {"reference": _seconds(old, "distill_s"), "candidate": _seconds(new, "distill_s")},
            "eval_s": {"reference": _seconds(old, "eval_s"), "candidate": _seconds(new, "eval_s")},
            "cpu": {"reference": (old.environment or {}).get("cpu_model"), "candidate": (new.environment or {}).get("cpu_model")},
            "torch_threads": {"reference": (old.environment or {}).get("torch_threads"),
                              "candidate": (new.environment or {}).get("torch_threads")},
            "started_utc": {"reference": old.started_utc, "candidate": new.started_utc},
        })
    # A set scored by several protocols is distilled once: count each distillation once per side.
    distill = {side: sum({(c["dataset"], c["method"], c["size"], c["seed"], c["variant"]): c["distill_s"][side]
                          for c in cells}.values()) for side in ("reference", "candidate")}
    evaluate = {side: sum(c["eval_s"][side] for c in cells) for side in ("reference", "candidate")}
    total = {side: distill[side] + evaluate[side] for side in ("reference", "candidate")}
    return {
        "cells": cells, "unmatched": unmatched,
        "summary": {
            "paired": len(cells), "identical": sum(c["identical_metrics"] for c in cells),
            "paired_on_first_students": sum(c["paired_by"] == "first students" for c in cells),
            "max_metric_diff": max((c["max_metric_diff"] or 0.0 for c in cells), default=None),
            "distill_s": distill, "eval_s": evaluate, "total_s": total,
            "reference_over_candidate": total["reference"] / total["candidate"] if total["candidate"] else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="results folder with the records to reproduce")
    parser.add_argument("candidate", type=Path, help="results folder of the rerun")
    parser.add_argument("--out", type=Path, help="write the comparison as JSON here")
    args = parser.parse_args()
    for folder in (args.reference, args.candidate):
        if not (folder / "runs").is_dir():
            raise SystemExit(f"{folder}: no runs/ folder of records; pass a results folder (e.g. results)")
    report = compare(read_records(args.reference), read_records(args.candidate))
    s = report["summary"]
    for c in report["cells"]:
        same = "identical" if c["identical_metrics"] else f"max diff {c['max_metric_diff']:.4g}"
        if c["paired_by"] == "first students":
            same += f" (first {c['students_compared']})"
        threads = c["torch_threads"]
        if threads["reference"] != threads["candidate"]:
            same += f" threads {threads['reference']}->{threads['candidate']}"
        print(f"{c['method']:>9} N={c['size']:<4} seed={c['seed']} {c['protocol']:<16} {c['variant'] or '-':<20} "
              f"r_mean {c['r_mean']['reference']:6.2f} -> {c['r_mean']['candidate']:6.2f} "
              f"{same:<16} "
              f"distil {c['distill_s']['reference']:7.1f} -> {c['distill_s']['candidate']:7.1f} s  "
              f"eval {c['eval_s']['reference']:7.1f} -> {c['eval_s']['candidate']:7.1f} s")
    for u in report["unmatched"]:
        print(f"unmatched: {u}")
    print(f"{s['identical']}/{s['paired']} cells with identical metrics ({s['paired_on_first_students']} paired on "
          f"their first students; largest difference {s['max_metric_diff']}); "
          f"seconds {s['total_s']['reference']:.0f} -> {s['total_s']['candidate']:.0f} "
          f"(x{s['reference_over_candidate'] or float('nan'):.2f})")
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
