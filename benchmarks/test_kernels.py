"""Small kernels on the hot paths, timed with pytest-benchmark (never part of the default test run).

    pip install -c constraints.txt -e '.[bench]'
    HF_HUB_OFFLINE=1 python -m pytest benchmarks/test_kernels.py --benchmark-json=benchmarks/results/kernels.json

``python benchmarks/end_to_end.py`` runs this too and puts the figures in BENCHMARKS.md.
"""

import os

import numpy as np
import pytest
import torch
from end_to_end import per_image_torchvision  # this folder is on sys.path under pytest

from mmdd_bench.cli import default_cache_dir
from mmdd_bench.data.augment import BatchAugment
from mmdd_bench.methods.covmatch import covmatch_loss
from mmdd_bench.metrics import retrieval_metrics

torch.set_num_threads(min(2, os.cpu_count() or 1))
CACHE = default_cache_dir()


def coco_test_like(seed: int = 0) -> tuple[torch.Tensor, list[list[int]]]:
    """5000 images x 25,010 captions (10 images with 6), as COCO's Karpathy test split."""
    counts = [6] * 10 + [5] * 4990
    img2txt, start = [], 0
    for c in counts:
        img2txt.append(list(range(start, start + c)))
        start += c
    sim = torch.randn(5000, start, generator=torch.Generator().manual_seed(seed))
    return sim, img2txt


def test_scoring_coco_test_size(benchmark):
    sim, img2txt = coco_test_like()
    out = benchmark.pedantic(retrieval_metrics, args=(sim, img2txt), rounds=3, iterations=1)
    assert 0 <= out["r_mean"] <= 100


@pytest.mark.parametrize("shape", [(128, 256, 384), (128, 2304, 768)], ids=["tiny", "paper"])
def test_covmatch_loss(benchmark, shape):
    b, dv, dl = shape
    gen = torch.Generator().manual_seed(0)
    real = tuple(torch.randn(b, d, generator=gen) for d in (dv, dl, dv, dv))
    syn = tuple(torch.randn(100, d, generator=gen) for d in (dv, dl, dv, dv))
    assert torch.isfinite(benchmark(covmatch_loss, real, syn, 2.0, 0.1))


@pytest.fixture(scope="module")
def shapes_store():
    from mmdd_bench.data import load_dataset
    from mmdd_bench.data.images import ImageStore
    from mmdd_bench.encoders.backbone import CLIP_MEAN, CLIP_STD

    ds = load_dataset("shapes-mini", None, CACHE)
    return ds, ImageStore(ds.train.image_paths, 224, CACHE, ds.train.fingerprint, CLIP_MEAN, CLIP_STD)


def test_real_batch_from_uint8_cache_224px(benchmark, shapes_store):
    """128 real images as the distillation loop gets them: memory-mapped uint8 -> normalised float."""
    _, store = shapes_store
    rng = np.random.default_rng(0)
    out = benchmark(lambda: store.batch(rng.choice(len(store), 128, replace=False)))
    assert out.shape == (128, 3, 224, 224)


def test_real_batch_with_paper_augmentation_per_image_224px(benchmark, shapes_store):
    """Before: torchvision's transforms image by image (a Python loop over the batch, on the host)."""
    _, store = shapes_store
    augment = per_image_torchvision(224)
    rng = np.random.default_rng(0)

    def batch():
        images = store.uint8(rng.choice(len(store), 128, replace=False))
        return store.normalize(torch.stack([augment(img) for img in images]))

    assert benchmark.pedantic(batch, rounds=3, iterations=1).shape == (128, 3, 224, 224)


def test_real_batch_with_paper_augmentation_batched_224px(benchmark, shapes_store):
    """After: mmdd_bench's BatchAugment, the same distributions drawn for the whole batch at once."""
    _, store = shapes_store
    augment = BatchAugment(224)
    rng = np.random.default_rng(0)

    def batch():
        return store.normalize(augment(store.uint8(rng.choice(len(store), 128, replace=False))))

    assert benchmark.pedantic(batch, rounds=3, iterations=1).shape == (128, 3, 224, 224)


def test_decode_from_image_files_224px(benchmark, shapes_store):
    """What the uint8 cache saves: decoding and resizing 128 image files per batch."""
    from mmdd_bench.data.images import _decode

    ds, _ = shapes_store
    paths = ds.train.image_paths[:128]
    out = benchmark.pedantic(lambda: [_decode(p, 224) for p in paths], rounds=3, iterations=1)
    assert len(out) == 128


def test_decode_flickr_size_jpegs_to_224px(benchmark, tmp_path):
    """Decoding Flickr-sized photos (500 x 375 JPEGs), which the uint8 cache replaces after the first pass."""
    from PIL import Image

    from mmdd_bench.data.images import _decode

    rng = np.random.default_rng(0)
    paths = []
    for i in range(128):  # smooth noise compresses like a photo more than white noise does
        small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    out = benchmark.pedantic(lambda: [_decode(p, 224) for p in paths], rounds=3, iterations=1)
    assert out[0].shape == (224, 224, 3)


def test_one_student_epoch_trainable_text_tiny(benchmark):
    """One epoch of the trainable-text protocol on 100 pairs with the tiny backbone."""
    from mmdd_bench.data import load_dataset
    from mmdd_bench.encoders import build_backbone
    from mmdd_bench.method import DistillContext
    from mmdd_bench.methods.random_subset import RandomSubset
    from mmdd_bench.protocols import get_protocol

    ds = load_dataset("shapes", None, CACHE)
    bb = build_backbone("tiny", CACHE)
    cpu = torch.device("cpu")
    distilled = RandomSubset().distill(DistillContext(ds, bb, 100, 0, cpu, CACHE), RandomSubset.Params())
    protocol = get_protocol("trainable-text")
    params = protocol.default_params("shapes")
    params.epochs = 1
    data = protocol.student_data(distilled, ds, bb, cpu, CACHE)
    lrs, _ = protocol.learning_rates(distilled, bb, params)

    def epoch():
        model = protocol.build_student(bb, 0, cpu)
        return protocol.train_student(model, data, params, lrs, 0, cpu)

    assert benchmark.pedantic(epoch, rounds=3, iterations=1) == 1


@pytest.fixture(scope="module")
def scenes_caption_batch():
    from mmdd_bench.data import load_dataset
    from mmdd_bench.encoders import build_backbone

    ds = load_dataset("scenes", None, CACHE)
    bb = build_backbone("tiny-scenes", CACHE)
    order = torch.randperm(len(ds.train.captions), generator=torch.Generator().manual_seed(0))[:128]
    ids, mask = bb.tokenize([ds.train.captions[i] for i in order])
    return bb, ids, mask


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_text_tower_step_tiny_scenes(benchmark, scenes_caption_batch, packed):
    """One training forward and backward of the six-layer text tower on 128 scenes captions (what each
    trainable-text student step and each CovMatch iteration pays): without the padding (encoders/packed_bert.py)
    and with it (Hugging Face's forward)."""
    bb, ids, mask = scenes_caption_batch
    encoder = bb.fresh_text_encoder(True).train()
    encoder.packed = packed

    def step():
        encoder.zero_grad(set_to_none=True)
        encoder(ids, mask).square().sum().backward()

    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    assert encoder.model.encoder.layer[0].output.dense.weight.grad is not None
