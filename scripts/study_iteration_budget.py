#!/usr/bin/env python
"""How many iterations does an iterative method need on an embedded set? A study on val (issue 16: the grid must
reproduce in a few hours, and a cut is chosen on val, never on test).

One distillation per (size, seed) runs to the largest budget and hands over its set after each smaller one
(``DistillContext.snapshot_iterations``: the very set a run with that many iterations returns, since neither
CovMatch's nor MTT-VL's loop reads its total). Each set is scored by the method's own protocol (or the ones named),
on val (what a choice may use) and on test (for the record), by the same students. Results are saved after every
evaluation to benchmarks/results/iteration-budget-<method>-<dataset>.json; a rerun skips what is there, and two
processes (one per seed or size) may share the file.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/study_iteration_budget.py --method covmatch --size 100 \
        --seeds 0 --budgets 25,50,75,100,150 --students 1
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/study_iteration_budget.py --method mtt-vl --size 200 \
        --seeds 0 --budgets 25,50,100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
from filelock import FileLock

from mmdd_bench.cli import default_cache_dir
from mmdd_bench.data import EMBEDDED, load_dataset
from mmdd_bench.encoders import build_backbone
from mmdd_bench.method import DistillContext, get_method
from mmdd_bench.protocols import get_protocol
from mmdd_bench.protocols.base import summarize

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def save(out: Path, key: str, entry: dict) -> None:
    """Merge one entry into the shared results file (processes may share it), then replace it atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        merged = {**(json.loads(out.read_text()) if out.is_file() else {}), key: entry}
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(merged, indent=1))
        os.replace(tmp, out)


def main(method_name: str, dataset_name: str, size: int, seeds: list[int], budgets: list[int],
         protocol_names: list[str], students: int | None) -> None:
    cache = default_cache_dir()
    out = RESULTS / f"iteration-budget-{method_name}-{dataset_name}.json"
    device = torch.device("cpu")
    dataset = load_dataset(dataset_name, None, cache)
    backbone = build_backbone(dataset.default_backbone, cache)
    method = get_method(method_name)
    protocols = [get_protocol(name) for name in (protocol_names or [method.default_protocol])]
    done = json.loads(out.read_text()) if out.is_file() else {}
    for seed in seeds:
        keys = {(b, p.name): f"N={size} / seed {seed} / {b} iterations / {p.name}" for b in budgets for p in protocols}
        if all(key in done for key in keys.values()):
            continue
        defaults = method.default_params(size, dataset_name)
        params = dataclasses.replace(defaults, iterations=max(budgets))
        ctx = DistillContext(dataset.train_view(), backbone, size, seed, device, cache,
                             snapshot_iterations=frozenset(budgets))
        start = time.time()
        method.distill(ctx, params)
        distill_s = time.time() - start
        print(f"N={size} seed {seed}: {max(budgets)} iterations in {distill_s:.0f} s", flush=True)
        for budget in budgets:
            distilled = ctx.snapshots[budget]
            for protocol in protocols:
                key = keys[(budget, protocol.name)]
                if key in done:
                    continue
                eval_params = protocol.default_params(dataset_name)
                if students is not None:
                    eval_params = dataclasses.replace(eval_params, n_students=students)
                began = time.time()
                result = protocol.evaluate(distilled, dataset, backbone, eval_params, seed, device, cache,
                                           also_score=("val",))
                val = summarize(result.other_splits["val"])[0]["r_mean"]
                entry = {"val": round(val, 2), "test": round(result.mean["r_mean"], 2),
                         "val_per_student": [round(s["r_mean"], 2) for s in result.other_splits["val"]],
                         "students": eval_params.n_students, "default_iterations": defaults.iterations,
                         "distill_s_per_iteration": round(distill_s / max(budgets), 3),
                         "eval_s": round(time.time() - began, 1)}
                if "learned_lrs" in distilled.meta:
                    entry["learned_lrs"] = {k: round(v, 4) for k, v in distilled.meta["learned_lrs"].items()}
                save(out, key, entry)
                done[key] = entry
                print(f"{key}: val {val:.2f} test {result.mean['r_mean']:.2f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=("covmatch", "mtt-vl"))
    parser.add_argument("--dataset", default="scenes", choices=sorted(EMBEDDED))
    parser.add_argument("--size", type=int, default=100, help="pairs in the set")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--budgets", required=True, help="comma-separated iteration counts, e.g. 50,100,150")
    parser.add_argument("--protocols", default="", help="comma-separated (default: the method's own)")
    parser.add_argument("--students", type=int, default=None, help="students per set (default: the protocol's)")
    args = parser.parse_args()
    main(args.method, args.dataset, args.size, [int(s) for s in args.seeds.split(",")],
         sorted({int(b) for b in args.budgets.split(",")}), [p for p in args.protocols.split(",") if p],
         args.students)
