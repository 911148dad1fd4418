"""Per-iteration time and peak memory of the trajectory-matching methods at equal settings.

The published claim (TESLA, used by LoRS) is that the two-phase gradient needs memory for ``syn_steps``
parameter copies plus one step's activations, where MTT-VL's exact unroll keeps every step's activations.
Each variant runs in its own process (so one's allocations never count for another), after one preparing
process has trained the experts and cached the features; memory is the RSS growth during ``distill``
(the CUDA allocator peak on GPUs), time is ``IterationTimer``'s steady per-iteration time.

    nice -n 10 python benchmarks/trajectory_memory.py --cache-dir /tmp/cache --out /tmp/trajectory_memory.json

Equal settings: the same dataset, backbone, size (N pairs asked for; lors stores N-1), expert, syn_steps and
mini-batch for every variant; their own losses (mtt-vl InfoNCE, tesla-vl and lors WBCE), whose cost is
negligible beside the encoders'.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {  # name -> (method, extra parameters)
    "mtt-vl": ("mtt-vl", {}),
    "tesla-vl": ("tesla-vl", {}),
    "lors": ("lors", {}),
    "lors-exact": ("lors", {"gradient": "exact"}),
}


def _common(args: argparse.Namespace) -> dict:
    return {"iterations": args.iterations, "num_experts": 1, "syn_steps": args.syn_steps,
            "mini_batch": args.mini_batch, "checkpoint_every": 0}


def _context(args: argparse.Namespace):
    import torch

    from mmdd_bench.data import load_dataset
    from mmdd_bench.encoders import build_backbone
    from mmdd_bench.method import DistillContext

    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, None, args.cache_dir)
    bb = build_backbone("tiny", args.cache_dir)
    device = torch.device(args.device)
    return DistillContext(ds, bb.to(device), args.size, 0, device, args.cache_dir)


def prepare(args: argparse.Namespace) -> None:
    """Train the expert and cache the features, so that the measured processes only read them."""
    from mmdd_bench.features import train_features
    from mmdd_bench.method import get_method
    from mmdd_bench.params import apply_overrides
    from mmdd_bench.trajectory import ensure_experts

    ctx = _context(args)
    method = get_method("mtt-vl")
    params = apply_overrides(method.default_params(args.size, args.dataset), _common(args), scope="mtt-vl")
    ensure_experts(ctx, params.expert_settings(), 1, params.expert_train_epochs)
    train_features(ctx.dataset.train, ctx.train_images, ctx.backbone, ctx.device, ctx.cache_dir)


def measure_one(args: argparse.Namespace, variant: str) -> dict:
    import torch

    from mmdd_bench.memory import PeakMemory
    from mmdd_bench.method import get_method
    from mmdd_bench.params import apply_overrides

    name, extra = VARIANTS[variant]
    ctx = _context(args)
    ctx.train_images  # noqa: B018 -- open the memory-mapped images before measuring
    method = get_method(name)
    params = apply_overrides(method.default_params(args.size, args.dataset), {**_common(args), **extra}, scope=name)
    torch.manual_seed(0)
    start = time.perf_counter()
    with PeakMemory(ctx.device) as pm:
        distilled = method.distill(ctx, params)
    timings = distilled.meta["timings"]
    return {"variant": variant, "method": name, "params": extra, "pairs_stored": len(distilled),
            "distill_s": round(time.perf_counter() - start, 2),
            "s_first_iteration": timings["s_first_iteration"],
            "s_per_iteration_steady": timings["s_per_iteration_steady"], "memory_mb": pm.result()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--syn-steps", type=int, default=8)
    parser.add_argument("--mini-batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args)
        return
    if args.one:
        print(json.dumps(measure_one(args, args.one)))
        return
    base = [sys.executable, __file__, "--cache-dir", str(args.cache_dir), "--out", str(args.out),
            "--dataset", args.dataset, "--size", str(args.size), "--iterations", str(args.iterations),
            "--syn-steps", str(args.syn_steps), "--mini-batch", str(args.mini_batch),
            "--threads", str(args.threads), "--device", args.device]
    subprocess.run([*base, "--prepare"], check=True)
    rows = []
    for variant in args.variants.split(","):
        out = subprocess.run([*base, "--one", variant], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    by = {r["variant"]: r for r in rows}
    ratios = {}
    if "mtt-vl" in by:
        for other in ("tesla-vl", "lors", "lors-exact"):
            if other in by:
                mine, theirs = by["mtt-vl"], by[other]
                key = "cuda_peak" if "cuda_peak" in mine["memory_mb"] else "rss_growth"
                ratios[f"mtt-vl/{other}"] = {
                    "memory": round(mine["memory_mb"][key] / max(theirs["memory_mb"][key], 1e-9), 3),
                    "s_per_iteration": round(mine["s_per_iteration_steady"] / theirs["s_per_iteration_steady"], 3)}
    result = {"settings": {k: getattr(args, k) for k in ("dataset", "size", "iterations", "syn_steps", "mini_batch",
                                                          "threads", "device")},
              "load_average": os.getloadavg(), "rows": rows, "ratios": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out)
    print(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
