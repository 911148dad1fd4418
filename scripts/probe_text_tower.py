#!/usr/bin/env python
"""Val probe behind ``tiny-scenes``' text tower (issue 16): the full-data ceiling of ``scenes`` under one
protocol with a variant of the MiniLM tower (pooling, layers), students cut to ``--epochs``.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/probe_text_tower.py mean 6 trainable-text --epochs 3

It is the harness's ``full-data`` cell (``calibration.measure``) with only the text tower swapped, scored on
val (test is recorded, never chosen on). Each result is appended as a JSON line to ``--out``
(default ``benchmarks/results/scenes-text-tower-probe.jsonl``). The variant gets its own weights id, so its
cached frozen features never mix with the shipped tower's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from mmdd_bench.cli import default_cache_dir

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pooling", choices=("mean", "cls"))
    ap.add_argument("layers", type=int, help="how many of all-MiniLM-L6-v2's layers (1-6)")
    ap.add_argument("protocol", choices=("trainable-text", "frozen-text"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dataset", default="scenes")
    ap.add_argument("--cache-dir", default=str(default_cache_dir()))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scenes-text-tower-probe.jsonl")
    args = ap.parse_args(argv)
    if not 1 <= args.layers <= 6:
        ap.error(f"layers must be 1-6 (all-MiniLM-L6-v2 has 6), got {args.layers}")
    import transformers

    from mmdd_bench.calibration import measure
    from mmdd_bench.data import load_dataset
    from mmdd_bench.encoders import build_backbone, tiny
    from mmdd_bench.encoders.text import BertTextEncoder

    cache = Path(args.cache_dir)
    ds = load_dataset(args.dataset, None, cache)
    bb = build_backbone(ds.default_backbone, cache)
    model = transformers.AutoModel.from_pretrained(tiny.minilm_path(), num_hidden_layers=args.layers)
    bb = dataclasses.replace(bb, text_encoder=BertTextEncoder(model, pooling=args.pooling),
                             weights_id=f"{bb.weights_id}-probe-{args.pooling}{args.layers}")
    start = time.time()
    r = measure("full-data", args.protocol, ds, bb, ds.train.n_pairs, 0, torch.device("cpu"), cache,
                {"epochs": args.epochs})
    row = {"dataset": ds.name, "pooling": args.pooling, "layers": args.layers, "protocol": args.protocol,
           "epochs": args.epochs, "val": r["mean"]["val"], "test_r_mean_not_used": r["mean"]["test"]["r_mean"],
           "selected_epochs": r["selected_epochs"], "seconds": round(time.time() - start, 1),
           "torch_threads": torch.get_num_threads()}
    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
