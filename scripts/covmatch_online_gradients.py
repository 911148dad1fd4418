#!/usr/bin/env python
"""How the online update changes the step CovMatch takes on its synthetic set (issue 16, item 3).

With the online update, CovMatch's online model takes one InfoNCE step on real data per iteration and is reset
every ``reset_every`` iterations; without it the model stays the pretrained encoders with fresh heads. This
measures, over one reset period and from CovMatch's own initial set (random's pairs, embedded defaults), the
norm of the matching loss's gradient on the synthetic images and token embeddings, and the loss itself, while
the online model trains as in CovMatch. The synthetic set is held fixed (no synthetic step), so only the online
model changes. Each iteration draws a fresh real batch; the no-update reference is the pretrained model (the
reset model), measured on the same batches. No student is trained, no split but train is read.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/covmatch_online_gradients.py --dataset scenes --size 200

Writes benchmarks/results/covmatch-online-gradients-<dataset>-N<size>-s<seed>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mmdd_bench.cli import default_cache_dir
from mmdd_bench.data import EMBEDDED, load_dataset
from mmdd_bench.data.real_batches import RealBatches
from mmdd_bench.encoders import build_backbone
from mmdd_bench.encoders.heads import contrastive_loss
from mmdd_bench.method import get_method
from mmdd_bench.methods.covmatch import matching_loss, online_model, synthetic_start
from mmdd_bench.pairs import initial_pairs
from mmdd_bench.records import atomic_write_text

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def gradient_norms(model, real, syn, params) -> tuple[float, float, float]:
    """CovMatch's matching loss (the method's own function) and its gradient norms on the synthetic images and
    token embeddings."""
    loss = matching_loss(model, real, syn, params, torch.device("cpu"))
    g_img, g_txt = torch.autograd.grad(loss, [syn[0], syn[1]])
    return loss.item(), g_img.norm().item(), g_txt.norm().item()


def measure(dataset, bb, cache: Path, size: int, seed: int, steps: int | None) -> dict:
    """The per-step gradient norms and losses, online model against the pretrained one, and their mean ratios."""
    dev = torch.device("cpu")
    method = get_method("covmatch")
    params = method.resolve_params(method.default_params(size, dataset.name), bb)
    train = dataset.train
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    real = RealBatches(dataset, cache, dev, bb.image_size, bb.mean, bb.std)
    _, pairs0 = initial_pairs(train, size, rng)
    initial = synthetic_start(bb, train.captions, real, pairs0, params, gen, dev)
    syn_images, syn_text = initial.images.requires_grad_(True), initial.text.requires_grad_(True)
    syn_mask = initial.mask
    all_ids, all_mask = bb.tokenize(train.captions)
    torch.manual_seed(seed)
    # CovMatch's own builder: the model it trains from its first reset, and the reset model it would restart at.
    model, opt = online_model(bb, params, seed, 0, dev)
    pretrained, _ = online_model(bb, params, seed, 0, dev)
    rows = []
    started = time.time()
    for it in range(params.reset_every if steps is None else steps):
        batch = rng.choice(train.n_pairs, size=min(params.real_batch, train.n_pairs), replace=False)
        imgs = real.batch(batch, gen)
        length = int(all_mask[batch].sum(1).max())
        r_ids, r_mask = all_ids[batch, :length], all_mask[batch, :length]
        real_batch, syn = (imgs, r_ids, r_mask), (syn_images, syn_text, syn_mask)
        online, fixed = gradient_norms(model, real_batch, syn, params), gradient_norms(pretrained, real_batch, syn, params)
        rows.append({"online_steps": it, "loss": round(online[0], 5), "grad_images": online[1], "grad_text": online[2],
                     "pretrained_loss": round(fixed[0], 5), "pretrained_grad_images": fixed[1],
                     "pretrained_grad_text": fixed[2]})
        model.train()
        _, g_v = model.image_features(imgs)
        _, g_l = model.text_features_from_tokens(r_ids, r_mask)
        opt.zero_grad(set_to_none=True)
        contrastive_loss(g_v, g_l).backward()
        opt.step()
        print(f"{it:3d}: grad images x{online[1] / fixed[1]:.2f} text x{online[2] / fixed[2]:.2f} "
              f"of the pretrained model's ({time.time() - started:.0f} s)", flush=True)
    real.close()
    ratio_img = float(np.mean([r["grad_images"] / r["pretrained_grad_images"] for r in rows]))
    ratio_txt = float(np.mean([r["grad_text"] / r["pretrained_grad_text"] for r in rows]))
    return {"dataset": dataset.name, "size": size, "seed": seed, "backbone_weights": bb.weights_id,
               "online_lrs": [params.lr_encoder, params.lr_projection], "reset_every": params.reset_every,
               "rho": params.rho, "lam": params.lam,
               "mean_ratio_over_period": {"images": round(ratio_img, 3), "text": round(ratio_txt, 3)},
               "seconds": round(time.time() - started), "per_step": rows}


def main(dataset_name: str, size: int, seed: int, steps: int | None) -> None:
    cache = default_cache_dir()
    dataset = load_dataset(dataset_name, None, cache)
    summary = measure(dataset, build_backbone(dataset.default_backbone, cache), cache, size, seed, steps)
    out = RESULTS / f"covmatch-online-gradients-{dataset_name}-N{size}-s{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(summary, indent=1))
    ratios = summary["mean_ratio_over_period"]
    print(f"mean over the period: images x{ratios['images']:.2f}, text x{ratios['text']:.2f} -> {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scenes", choices=sorted(EMBEDDED))
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="online steps measured (default: one reset period)")
    args = parser.parse_args()
    main(args.dataset, args.size, args.seed, args.steps)
