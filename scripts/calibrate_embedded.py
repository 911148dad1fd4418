#!/usr/bin/env python
"""Measure the calibration properties of an embedded dataset and print the calibration table (issue 16).

    HF_HUB_OFFLINE=1 nice -n 15 python scripts/calibrate_embedded.py                 # scenes, all of it
    python scripts/calibrate_embedded.py --dataset scenes-mini --sizes 8,16 --seeds 0 --quick   # a smoke run

Every entry is a harness cell (``full-data`` or ``random`` under a protocol, the harness's parameters),
scored on val as well as test.

Properties (method-independent; measured on val, test reported for the record, never tuned on):
the frozen-text full-data ceiling is at least 10 r_mean points below the trainable-text one; random-100 is
10-25% of the trainable-text ceiling and random grows with N up to 500; no full-data metric is near 100.
Results go to ``benchmarks/results/calibration-<dataset>.json``, saved after every evaluation: rerunning
resumes and keeps what is there (delete the file to measure again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mmdd_bench.calibration import CalibrationConfig, format_table, run_calibration
from mmdd_bench.cli import default_cache_dir
from mmdd_bench.data import load_dataset
from mmdd_bench.encoders import build_backbone
from mmdd_bench.errors import MMDDError


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="scenes")
    ap.add_argument("--backbone", default=None, help="default: the dataset's own")
    ap.add_argument("--cache-dir", default=str(default_cache_dir()))
    ap.add_argument("--out", default=None, help="default: benchmarks/results/calibration-<dataset>.json")
    ap.add_argument("--sizes", type=_ints, default=(100, 200, 500))
    ap.add_argument("--seeds", type=_ints, default=(0, 1, 2))
    ap.add_argument("--protocols", default="trainable-text,frozen-text")
    ap.add_argument("--only", default="", help="comma-separated fnmatch patterns over the entry keys, e.g. "
                    "'trainable-text/random-500/*': measure only those (runs with disjoint patterns may share --out)")
    ap.add_argument("--quick", action="store_true", help="one-epoch students (a smoke test, not a calibration)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    cache = Path(args.cache_dir)
    out = Path(args.out or Path(__file__).resolve().parent.parent / "benchmarks" / "results" /
               f"calibration-{args.dataset}.json")
    try:
        ds = load_dataset(args.dataset, None, cache)
        bb = build_backbone(args.backbone or ds.default_backbone, cache)
        config = CalibrationConfig(dataset=ds.name, backbone=bb.name, sizes=args.sizes, seeds=args.seeds,
                                   protocols=tuple(p for p in args.protocols.split(",") if p),
                                   eval_overrides={"epochs": 1} if args.quick else {},
                                   only=tuple(p for p in args.only.split(",") if p))
        print(f"calibrating {ds.name} with backbone {bb.name} ({bb.weights_id}) on {args.device}; "
              f"torch threads {torch.get_num_threads()}; writing {out}", flush=True)
        results = run_calibration(config, ds, bb, torch.device(args.device), cache, out,
                                  log=lambda s: print(s, flush=True))
    except MMDDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(results["table"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
