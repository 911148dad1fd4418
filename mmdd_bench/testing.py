"""A contract check every method plugin can run (like scikit-learn's ``check_estimator``).

    from mmdd_bench.testing import check_method
    check_method("my-method", cache_dir=tmp_path, params={"iterations": 2})

It distills a few pairs of the embedded ``shapes-mini`` set twice and checks the result is a valid
``DistilledSet`` of the right size, deterministic for a fixed seed, different for another seed where the
method is stochastic, saves and loads losslessly, and is accepted by the method's default protocol.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import load_dataset
from .distilled import DistilledSet
from .encoders import build_backbone
from .method import DistillContext, get_method
from .params import apply_overrides
from .protocols import get_protocol


def _same(a: DistilledSet, b: DistilledSet) -> bool:
    if not torch.equal(a.images, b.images) or a.captions != b.captions or a.text_kind != b.text_kind:
        return False
    if (a.text_embeddings is None) != (b.text_embeddings is None):
        return False
    return a.text_embeddings is None or torch.equal(a.text_embeddings, b.text_embeddings)


def check_method(name: str, cache_dir: Path, params: dict | None = None, size: int = 6,
                 backbone: str = "tiny", dataset: str = "shapes-mini") -> DistilledSet:
    method = get_method(name)
    assert method.name == name, f"method registered as {name!r} calls itself {method.name!r}"
    get_protocol(method.default_protocol)
    ds = load_dataset(dataset, None, cache_dir)
    bb = build_backbone(backbone, cache_dir)
    p = apply_overrides(method.default_params(size, dataset), params or {}, scope=name)
    device = torch.device("cpu")

    def run(seed: int) -> DistilledSet:
        torch.manual_seed(seed)
        return method.distill(DistillContext(ds, bb, size, seed, device, cache_dir), p)

    first, again = run(0), run(0)
    assert isinstance(first, DistilledSet), f"{name}.distill must return a DistilledSet"
    assert len(first) == size, f"{name} returned {len(first)} pairs for size {size}"
    assert first.images.shape[1:] == (3, bb.image_size, bb.image_size), "images must be model inputs"
    assert torch.isfinite(first.images).all(), "images contain NaN/Inf"
    assert _same(first, again), f"{name} is not deterministic for a fixed seed"
    get_protocol(method.protocol_for(p)).check_compatible(first, bb)
    path = first.save(cache_dir / "contract" / name)
    assert _same(DistilledSet.load(path), first), "save/load is not lossless"
    return first
