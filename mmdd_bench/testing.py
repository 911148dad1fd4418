"""A contract check every method plugin can run (like scikit-learn's ``check_estimator``).

    from mmdd_bench.testing import check_method
    check_method("my-method", cache_dir=tmp_path, params={"iterations": 2})

It distills a few pairs of the embedded ``shapes-mini`` set and checks that the result

- is a valid ``DistilledSet`` for the budget (``size`` pairs, or fewer paid for by what else it stores),
  of model-input images, with the text kind the method declares (``Method.text_kind``);
- is identical, field by field (images, text, mask, extras such as learned step sizes, encoder id,
  metadata), when distilled twice with one seed, and different for another seed unless the method is
  declared ``deterministic``;
- was made from the training split alone: the method gets a dataset whose ``val`` and ``test`` raise;
- saves and loads losslessly, and is accepted by the protocol the method names for it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import load_dataset
from .distilled import DistilledSet, check_budget
from .encoders import build_backbone
from .method import DistillContext, get_method
from .params import apply_overrides, check_ranges
from .protocols import get_protocol

# Metadata that measures a run rather than describing its result.
VOLATILE_META = ("timings", "peak_memory_mb")


def stable_meta(meta: dict) -> dict:
    """A set's meta without what measures the machine rather than the set: timings, memory, and how long its
    experts took to train (0 when a second run loads them from the cache)."""
    out = {k: v for k, v in meta.items() if k not in VOLATILE_META}
    if isinstance(out.get("experts"), dict):
        out["experts"] = {k: v for k, v in out["experts"].items() if k != "train_s"}
    return out


def differences(a: DistilledSet, b: DistilledSet) -> list[str]:
    """The fields in which two sets differ (empty: identical)."""
    out = []

    def tensors_differ(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
        if x is None or y is None:
            return (x is None) != (y is None)
        return x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y)

    for name in ("images", "text_embeddings", "attention_mask"):
        if tensors_differ(getattr(a, name), getattr(b, name)):
            out.append(name)
    for name in ("text_kind", "captions", "encoder_id"):
        if getattr(a, name) != getattr(b, name):
            out.append(name)
    if a.extras.keys() != b.extras.keys():
        out.append(f"extras keys {sorted(a.extras)} vs {sorted(b.extras)}")
    else:
        out += [f"extras.{k}" for k in a.extras if tensors_differ(a.extras[k], b.extras[k])]
    meta_a, meta_b = stable_meta(a.meta), stable_meta(b.meta)
    if meta_a != meta_b:
        out.append(f"meta keys {sorted(k for k in meta_a.keys() | meta_b.keys() if meta_a.get(k) != meta_b.get(k))}")
    return out


def check_method(name: str, cache_dir: Path, params: dict | None = None, size: int = 6,
                 backbone: str = "tiny", dataset: str = "shapes-mini") -> DistilledSet:
    method = get_method(name)
    assert method.name == name, f"method registered as {name!r} calls itself {method.name!r}"
    get_protocol(method.default_protocol)
    ds = load_dataset(dataset, None, cache_dir)
    bb = build_backbone(backbone, cache_dir)
    p = method.resolve_params(apply_overrides(method.default_params(size, dataset), params or {}, scope=name), bb)
    check_ranges(p, name)
    device = torch.device("cpu")

    def run(seed: int) -> DistilledSet:
        torch.manual_seed(seed)
        return method.distill(DistillContext(ds.train_view(), bb, size, seed, device, cache_dir), p)

    first, again = run(0), run(0)
    assert isinstance(first, DistilledSet), f"{name}.distill must return a DistilledSet"
    check_budget(first, size, name)
    assert first.images.shape[1:] == (3, bb.image_size, bb.image_size), "images must be model inputs"
    assert torch.isfinite(first.images).all(), "images contain NaN/Inf"
    assert first.text_kind == method.text_kind(p), (
        f"{name} declares {method.text_kind(p)} text (Method.text_kind) but returned {first.text_kind}")
    diff = differences(first, again)
    assert not diff, f"{name} is not deterministic for a fixed seed: {', '.join(diff)} differ"
    other = run(1)
    if method.deterministic:
        assert not differences(first, other), f"{name} is declared deterministic but its seed changes the set"
    else:
        assert differences(first, other), (f"{name} gave the same set for seeds 0 and 1; use the seed (ctx.seed) or "
                                           "declare the method deterministic = True")
    get_protocol(method.protocol_for(p)).check_compatible(first, bb)
    path = first.save(cache_dir / "contract" / name)
    loaded = DistilledSet.load(path)
    diff = differences(loaded, first)
    assert not diff and loaded.meta == first.meta, f"save/load is not lossless: {', '.join(diff) or 'meta'} differ"
    return first
