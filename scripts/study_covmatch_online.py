#!/usr/bin/env python
"""Why does CovMatch's online update not help on the embedded sets (issue 16, item 3)? A study on val.

CovMatch at N=100 (embedded defaults) with variants of its online model (and of its iteration budget); each
set is scored by the trainable-text protocol, on val (what the conclusions use) and on test (for the record:
the default variant's test numbers equal the committed grid records' with the same protocol parameters).
Results are saved after every variant to benchmarks/results/covmatch-online-<dataset>.json; a rerun skips
what is there, and two processes (one per seed or per variant) may share the file.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/study_covmatch_online.py --seeds 0,1
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/study_covmatch_online.py --dataset scenes \
        --students 1 --variants paper-lrs,none,protocol-lrs,protocol-lrs-reset20
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/study_covmatch_online.py --dataset scenes --size 200 \
        --students 1 --variants protocol-lrs,none,protocol-lrs-syn-x0.7

A set that a harness run in ``--results`` already distilled with the same parameters is reused (the
distillation is deterministic); each entry also records how far the set moved from its start (``drift``).
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
from mmdd_bench.data.real_batches import RealBatches
from mmdd_bench.distilled import DistilledSet
from mmdd_bench.encoders import build_backbone
from mmdd_bench.method import DistillContext, get_method
from mmdd_bench.methods.covmatch import EMBEDDED_LR_TEXT, CovMatchParams, synthetic_start
from mmdd_bench.params import identity_dict
from mmdd_bench.protocols import get_protocol
from mmdd_bench.protocols.base import summarize

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def variants(eval_lrs: tuple[float, float], eval_epochs: int) -> dict[str, tuple[str, dict]]:
    """Short name -> (the name in the results file, the change to CovMatch's embedded defaults).

    The online model once trained at the backbone's lrs (0.01 / 0.1, the paper's: "paper-lrs", the study's
    "default" before the embedded default became the protocol's lrs) and resets every 50 iterations. The paper's students train at those same lrs for 100 steps (N=100, batch 128, 100 epochs), so
    an online run of 50 steps covers half a student's path; the embedded protocol's students take `eval_epochs`
    steps at `eval_lrs`. "protocol-lrs-reset20" keeps the paper's proportion on the embedded protocol.
    """
    half = max(1, eval_epochs // 2)
    return {
        # The name in the results file is kept from when these were the embedded default.
        "paper-lrs": ("default (online lrs 0.01/0.1)", {"lr_encoder": 0.01, "lr_projection": 0.1}),
        "none": ("no online update", {"online_update": False}),
        "protocol-lrs": ("online at the protocol's lrs", {"lr_encoder": eval_lrs[0], "lr_projection": eval_lrs[1]}),
        "x0.1": ("online lrs x0.1 (0.001/0.01)", {"lr_encoder": 0.001, "lr_projection": 0.01}),
        "reset10": ("online, reset every 10", {"reset_every": 10}),
        "protocol-lrs-reset20": (f"online at the protocol's lrs, reset every {half}",
                                 {"lr_encoder": eval_lrs[0], "lr_projection": eval_lrs[1], "reset_every": half}),
        "600": ("600 iterations", {"iterations": 600}),
        "600-none": ("600 iterations, no online update", {"iterations": 600, "online_update": False}),
        # The online model's trained heads give larger gradients, so the synthetic set moves further from its
        # start (see `drift`): does the update hurt through that larger step or through its direction?
        "protocol-lrs-syn-x0.7": ("online at the protocol's lrs, synthetic lrs x0.7",
                                  {"lr_encoder": eval_lrs[0], "lr_projection": eval_lrs[1],
                                   "lr_images": CovMatchParams().lr_images * 0.7, "lr_text": EMBEDDED_LR_TEXT * 0.7}),
    }


def drift(distilled, dataset, backbone, params: CovMatchParams, cache: Path) -> dict[str, float]:
    """How far the learned set moved from its start (random's pairs, unaugmented on the embedded sets): the
    mean relative L2 change per image and per real token embedding."""
    pairs = distilled.extras["source_pairs"].numpy()
    real = RealBatches(dataset, cache, torch.device("cpu"), backbone.image_size, backbone.mean, backbone.std)
    start = synthetic_start(backbone, dataset.train.captions, real, pairs, params, torch.Generator().manual_seed(0),
                            torch.device("cpu"))
    real.close()
    start_images, start_text = start.images, start.text
    tokens = distilled.attention_mask.bool()
    images = (distilled.images - start_images).flatten(1).norm(dim=1) / start_images.flatten(1).norm(dim=1)
    text = (distilled.text_embeddings - start_text)[tokens].norm(dim=-1) / start_text[tokens].norm(dim=-1)
    return {"image_drift": round(images.mean().item(), 4), "token_drift": round(text.mean().item(), 4)}


def saved_set(results_dir: Path, dataset_name: str, method, identity: dict, size: int, seed: int, weights: str):
    """The set a harness run already distilled with exactly these parameters (the distillation is
    deterministic, so it is the set this study would make), or None."""
    for path in sorted((results_dir / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        if (record.get("dataset"), record.get("method"), record.get("method_version"), record.get("size"),
                record.get("seed"), record.get("backbone_weights"), record.get("method_params")) == (
                dataset_name, method.name, method.version, size, seed, weights, identity):
            artifact = results_dir / "artifacts" / f"{record['distill_id']}.json"
            if artifact.is_file():
                return DistilledSet.load(artifact), record["distill_id"]
    return None


def main(dataset_name: str, seeds: list[int], names: list[str], students: int | None, size: int,
         results_dir: Path) -> None:
    cache = default_cache_dir()
    out = RESULTS / f"covmatch-online-{dataset_name}.json"
    device = torch.device("cpu")
    dataset = load_dataset(dataset_name, None, cache)
    backbone = build_backbone(dataset.default_backbone, cache)
    method, protocol = get_method("covmatch"), get_protocol("trainable-text")
    eval_params = protocol.default_params(dataset_name)
    if students is not None:
        eval_params = dataclasses.replace(eval_params, n_students=students)
    table = variants((eval_params.lr_encoder, eval_params.lr_projection), eval_params.epochs)
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(table)}")
    print(f"{dataset_name}: eval lrs {eval_params.lr_encoder} / {eval_params.lr_projection}, {eval_params.epochs} "
          f"epochs, {eval_params.n_students} student(s); online model's default {backbone.lr_encoder} / "
          f"{backbone.lr_projection}", flush=True)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for seed in seeds:
        for short in names:
            name, change = table[short]
            key = f"{name} / seed {seed}" if size == 100 else f"{name} / N={size} / seed {seed}"
            if key in results:
                continue
            start = time.time()
            params = dataclasses.replace(method.default_params(size, dataset_name), **change)
            identity = identity_dict(method.resolve_params(params, backbone))
            found = saved_set(results_dir, dataset_name, method, identity, size, seed, backbone.weights_id)
            if found is not None:
                distilled, source = found
                print(f"{key}: the set of harness run {source} (same parameters)", flush=True)
            else:
                ctx = DistillContext(dataset.train_view(), backbone, size, seed, device, cache)
                distilled, source = method.distill(ctx, params), "distilled here"
            result = protocol.evaluate(distilled, dataset, backbone, eval_params, seed, device, cache,
                                       also_score=("val",))
            val = summarize(result.other_splits["val"])[0]["r_mean"]
            results[key] = {"val": round(val, 2), "test": round(result.mean["r_mean"], 2),
                            "students": eval_params.n_students, "seconds": round(time.time() - start),
                            "set": source, **drift(distilled, dataset, backbone, params, cache)}
            out.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(out) + ".lock"):  # processes may share the file: merge, then replace
                merged = {**(json.loads(out.read_text()) if out.is_file() else {}), key: results[key]}
                tmp = out.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps(merged, indent=1))
                os.replace(tmp, out)
            print(f"{key}: val {val:.2f} test {result.mean['r_mean']:.2f} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes", choices=sorted(EMBEDDED))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--variants", default="paper-lrs,none,protocol-lrs,x0.1,reset10", help="comma-separated")
    parser.add_argument("--students", type=int, default=None, help="students per set (default: the protocol's)")
    parser.add_argument("--size", type=int, default=100, help="pairs in the set")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="a results folder whose saved sets are reused when their parameters match")
    args = parser.parse_args()
    main(args.dataset, [int(s) for s in args.seeds.split(",")], args.variants.split(","), args.students,
         args.size, args.results)
