#!/usr/bin/env python
"""Why does CovMatch's online update not help on shapes (issue 16, item 3)? A study on the val split.

CovMatch at N=100 (embedded defaults) with variants of its online model only; each set is scored by the
trainable-text protocol with its default parameters, on val (what the conclusions use) and test (for the
record: the default variant's test numbers equal the committed records'). Results are saved after every
variant to benchmarks/results/covmatch-online-shapes.json; a rerun skips what is there.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/study_covmatch_online.py 0,1
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
from filelock import FileLock

from mmdd_bench.data import load_dataset
from mmdd_bench.encoders import build_backbone
from mmdd_bench.method import DistillContext, get_method
from mmdd_bench.protocols import get_protocol
from mmdd_bench.protocols.base import summarize

OUT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "covmatch-online-shapes.json"


def variants(eval_lrs: tuple[float, float]) -> dict[str, dict]:
    """The online model's settings under study (the backbone's lrs, 0.01 / 0.1, are the default)."""
    return {
        "default (online lrs 0.01/0.1)": {},
        "no online update": {"online_update": False},
        "online at the protocol's lrs": {"lr_encoder": eval_lrs[0], "lr_projection": eval_lrs[1]},
        "online lrs x0.1 (0.001/0.01)": {"lr_encoder": 0.001, "lr_projection": 0.01},
        "online, reset every 10": {"reset_every": 10},
    }


def main(seeds: list[int]) -> None:
    cache = Path(os.environ.get("MMDD_BENCH_CACHE", Path.home() / ".cache" / "mmdd-bench"))
    device = torch.device("cpu")
    dataset, backbone = load_dataset("shapes", None, cache), build_backbone("tiny", cache)
    method, protocol = get_method("covmatch"), get_protocol("trainable-text")
    eval_params = protocol.default_params("shapes")
    print(f"eval lrs {eval_params.lr_encoder} / {eval_params.lr_projection}; online model's default "
          f"{backbone.lr_encoder} / {backbone.lr_projection}", flush=True)
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for seed in seeds:
        for name, change in variants((eval_params.lr_encoder, eval_params.lr_projection)).items():
            key = f"{name} / seed {seed}"
            if key in results:
                continue
            start = time.time()
            params = dataclasses.replace(method.default_params(100, "shapes"), **change)
            distilled = method.distill(DistillContext(dataset.train_view(), backbone, 100, seed, device, cache), params)
            result = protocol.evaluate(distilled, dataset, backbone, eval_params, seed, device, cache,
                                       also_score=("val",))
            val = summarize(result.other_splits["val"])[0]["r_mean"]
            results[key] = {"val": val, "test": result.mean["r_mean"], "seconds": time.time() - start}
            OUT.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(OUT) + ".lock"):  # one process per seed may share the file: merge, then replace
                merged = {**(json.loads(OUT.read_text()) if OUT.is_file() else {}), key: results[key]}
                tmp = OUT.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps(merged, indent=1))
                os.replace(tmp, OUT)
            print(f"{key}: val {val:.2f} test {result.mean['r_mean']:.2f} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1].split(",")] if len(sys.argv) > 1 else [0])
