import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """GPU tests skip with a reason where there is no GPU, so the default suite stays CPU-only."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (the GPU smoke set: python -m pytest -m cuda on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the whole session: the shapes data and the tiny image encoder are made once."""
    shared = os.environ.get("MMDD_BENCH_TEST_CACHE")
    path = Path(shared) if shared else tmp_path_factory.mktemp("cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def mini(cache_dir):
    from mmdd_bench.data import load_dataset

    return load_dataset("shapes-mini", None, cache_dir)


@pytest.fixture(scope="session")
def tiny(cache_dir):
    from mmdd_bench.encoders import build_backbone

    return build_backbone("tiny", cache_dir)


from mmdd_bench.data.photos import FLICKR_SIZES, photo  # noqa: E402, F401 - shared with the tests


def write_flickr(root: Path, image_folder: str = "flickr30k-images", n_train: int = 4, n_test: int = 3,
                 sizes: list[tuple[int, int]] | None = None) -> Path:
    """A Flickr30K-format fixture: BLIP Karpathy JSONs + JPEGs; test image 0 has 6 captions.
    Images are 40x30 noise, or with ``sizes`` (e.g. ``FLICKR_SIZES``, cycled) photo-like JPEGs of those sizes."""
    ds = root / "flickr30k"
    (ds / "annotations").mkdir(parents=True)
    (ds / image_folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    written: dict[str, int] = {}  # file name -> its index (train files are named twice: two captions each)

    def image(name: str) -> str:
        if sizes is None:
            Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(ds / image_folder / name)
        else:
            k = written.setdefault(name, len(written))
            width, height = sizes[k % len(sizes)]
            Image.fromarray(photo(width, height, k)).save(ds / image_folder / name, quality=90)
        return f"flickr30k-images/{name}"

    train = [{"image": image(f"tr{i}.jpg"), "caption": f"A dog (number {i}) runs!", "image_id": i}
             for i in range(n_train) for _ in range(2)]
    # each train image listed twice (two captions): the loader deduplicates images
    train = [{"image": e["image"], "caption": e["caption"] + f" take {k}", "image_id": e["image_id"]}
             for k, e in enumerate(train)]
    test = [{"image": image(f"te{i}.jpg"), "caption": [f"caption {i}.{j}" for j in range(6 if i == 0 else 5)]}
            for i in range(n_test)]
    val = [{"image": image(f"va{i}.jpg"), "caption": [f"val {i}"]} for i in range(2)]
    for split, entries in [("train", train), ("val", val), ("test", test)]:
        (ds / "annotations" / f"flickr30k_{split}.json").write_text(json.dumps(entries))
    return ds
