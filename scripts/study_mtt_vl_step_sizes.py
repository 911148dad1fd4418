#!/usr/bin/env python
"""Why are MTT-VL-500's seeds on scenes so far apart (issue 16)? A study of saved sets, on val and test.

The committed grid has MTT-VL-500 at 11.08 / 25.79 / 7.82 under frozen-text (seeds 0 / 1 / 2), and its sets
carry learned image step sizes of 0.144 / 0.023 / 0.196, which the students of frozen-text and frozen-text-mtt
train their image encoder with (the protocol's own lr is 0.003). Over the nine committed MTT-VL cells of scenes
the learned image lr and frozen-text's score rank against each other (Spearman -0.73). This study takes the
saved sets of a run (``results/artifacts``) and scores each one three ways, so every comparison is of one set:

- ``frozen-text``: MTT-VL's sets as the grid scores them (the learned step sizes);
- ``frozen-text, protocol lrs``: the same students at the protocol's lrs (``eval.use_learned_lrs=false``);
- ``frozen-encoders``: only the heads train, on frozen features, and no learned step size is read: what the
  pixels and text hold, apart from how a student is told to train on them.

Each is scored on val (what a conclusion may rest on) and on test (for the record), with the set's learned
step sizes and its matching-loss curve beside them.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/study_mtt_vl_step_sizes.py results/artifacts/<id>.safetensors ...

Writes benchmarks/results/mtt-vl-step-sizes-<dataset>.json after every set; a rerun scores only what is missing.
What it found (README, "MTT-VL-500's seed spread"): the same seeds distilled on another machine learned other
step sizes and scored otherwise, so the spread is round-off amplified, not the seed; and on every set the
protocol's lrs beat the learned ones on val (+5.3 / +14.2 / +16.2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from mmdd_bench.cli import default_cache_dir
from mmdd_bench.data import load_dataset
from mmdd_bench.distilled import DistilledSet
from mmdd_bench.encoders import build_backbone
from mmdd_bench.protocols import get_protocol
from mmdd_bench.protocols.base import summarize
from mmdd_bench.records import atomic_write_text

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
SCORINGS = {"frozen-text": ("frozen-text", {}),
            "frozen-text, protocol lrs": ("frozen-text", {"use_learned_lrs": False}),
            "frozen-encoders": ("frozen-encoders", {})}


def main(artifacts: list[Path]) -> None:
    cache = default_cache_dir()
    device = torch.device("cpu")
    loaded = {}
    for path in artifacts:
        distilled = DistilledSet.load(path)
        meta = distilled.meta
        if meta.get("method") != "mtt-vl":
            raise SystemExit(f"{path}: a {meta.get('method')!r} set; this study reads MTT-VL's")
        loaded[path] = distilled
    datasets = {d.meta["dataset"] for d in loaded.values()}
    if len(datasets) != 1:
        raise SystemExit(f"the sets come from several datasets ({sorted(datasets)}); study one at a time")
    (dataset_name,) = datasets
    out = RESULTS / f"mtt-vl-step-sizes-{dataset_name}.json"
    dataset = load_dataset(dataset_name, None, cache)
    backbone = build_backbone(dataset.default_backbone, cache)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for path, distilled in loaded.items():
        meta = distilled.meta
        key = f"N={meta['size']} / seed {meta['seed']} / {path.stem}"
        entry = dict(results.get(key, {}))
        missing = [label for label in SCORINGS if label not in entry]
        if not missing:
            continue
        start = time.time()
        for label in missing:
            proto = get_protocol(SCORINGS[label][0])
            params = dataclasses.replace(proto.default_params(dataset_name), **SCORINGS[label][1])
            result = proto.evaluate(distilled, dataset, backbone, params, meta["seed"], device, cache,
                                    also_score=("val",))
            entry[label] = {"val": round(summarize(result.other_splits["val"])[0]["r_mean"], 2),
                            "test": round(result.mean["r_mean"], 2),
                            "test_per_student": [round(s["r_mean"], 2) for s in result.per_student]}
        results[key] = {**entry, "learned_lrs": {k: round(v, 4) for k, v in meta["learned_lrs"].items()},
                        "loss_every_10": meta.get("loss_every_10"), "method_params": meta["method_params"],
                        "seconds": round(time.time() - start + entry.get("seconds", 0))}
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(results, indent=1))
        print(f"{key}: {json.dumps({k: results[key][k] for k in (*SCORINGS, 'learned_lrs')})}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path, help="saved MTT-VL sets (.safetensors)")
    main(parser.parse_args().artifacts)
