"""Pretrain an embedded image encoder (``tiny`` / ``tiny-vit``) and check that its features are useful.

    python benchmarks/pretrain_probe.py --backbone tiny-vit --pretrain-to /tmp/tiny-vit-v1.safetensors
    python benchmarks/pretrain_probe.py --backbone tiny                # probe the shipped weights

``--pretrain-to FILE`` runs the package's pretraining recipe (``mmdd_bench/encoders/pretrain.py``, seed 0) and
writes the weights and their sha256 (what ``IMAGE_TOWERS`` pins once the file is shipped); without it the
shipped weights are probed. The probe: a linear classifier per scene attribute trained on the frozen features
of 5,000 scenes (seed stream 1) and scored on 2,000 others (stream 2), both disjoint from the pretraining
scenes (stream 0) and from every dataset split; the same for the randomly initialised architecture, the floor
that pretraining has to clear. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mmdd_bench.encoders import tiny
from mmdd_bench.encoders.pretrain import attribute_heads, attribute_scenes


@torch.no_grad()
def features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    return torch.cat([net(chunk) for chunk in x.split(500)])


def linear_probe(train: tuple[torch.Tensor, dict], test: tuple[torch.Tensor, dict], epochs: int = 100) -> dict[str, float]:
    """Per-attribute test accuracy (percent) of linear heads fitted on standardised frozen features."""
    (f_train, y_train), (f_test, y_test) = train, test
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    torch.manual_seed(0)
    heads = attribute_heads(f_train.shape[1])
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2)
    for _ in range(epochs):
        for idx in torch.randperm(len(f_train)).split(256):
            loss = sum(F.cross_entropy(h(f_train[idx]), y_train[k][idx]) for k, h in heads.items())
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = {k: 100 * float((h(f_test).argmax(1) == y_test[k]).float().mean()) for k, h in heads.items()}
    return {**{k: round(v, 1) for k, v in acc.items()}, "mean": round(sum(acc.values()) / len(acc), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(tiny.IMAGE_TOWERS), default="tiny-vit")
    parser.add_argument("--pretrain-to", type=Path, default=None, help="pretrain (seed 0) and write the weights here")
    args = parser.parse_args()
    tower = tiny.IMAGE_TOWERS[args.backbone]
    report: dict = {"backbone": args.backbone, "architecture": tower.architecture.__name__,
                    "threads": torch.get_num_threads()}
    if args.pretrain_to:
        t0 = time.perf_counter()
        state = tiny._pretrain(tower, 0)
        report["pretrain_s"] = round(time.perf_counter() - t0, 1)
        args.pretrain_to.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(args.pretrain_to))
        report["weights"] = str(args.pretrain_to)
        report["sha256"] = hashlib.sha256(args.pretrain_to.read_bytes()).hexdigest()
        net = tower.architecture(out_dim=tiny.IMAGE_DIM)
        net.load_state_dict(load_file(str(args.pretrain_to)))
    else:
        net, report["weights_id"] = tiny.packaged_image_encoder(args.backbone)
    report["parameters"] = sum(p.numel() for p in net.parameters())
    train = attribute_scenes(5000, tiny.IMAGE_SIZE, 1)
    test = attribute_scenes(2000, tiny.IMAGE_SIZE, 2)
    report["probe_pretrained"] = linear_probe((features(net, train[0]), train[1]), (features(net, test[0]), test[1]))
    torch.manual_seed(0)
    untrained = tower.architecture(out_dim=tiny.IMAGE_DIM)
    report["probe_random_init"] = linear_probe((features(untrained, train[0]), train[1]),
                                               (features(untrained, test[0]), test[1]))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
