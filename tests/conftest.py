import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
