"""The GPU smoke set (``-m cuda``): skipped with a reason on machines without CUDA; the default suite is CPU-only.

    HF_HUB_OFFLINE=1 python -m pytest -m cuda -q
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from mmdd_bench.cli import main
from mmdd_bench.records import read_records

pytestmark = pytest.mark.cuda

QUICK = ["--datasets", "shapes-mini", "--set", "eval.epochs=1", "--set", "eval.n_students=1", "--quiet",
         "--device", "cuda", "--sizes", "6"]


def test_one_covmatch_and_one_mtt_vl_iteration_and_a_student_epoch(tmp_path, cache_dir):
    assert main(["run", "--cache-dir", str(cache_dir), "--results", str(tmp_path), *QUICK, "--methods",
                 "covmatch,mtt-vl", "--set", "covmatch.iterations=2", "--set", "mtt-vl.iterations=2",
                 "--set", "mtt-vl.num_experts=1"]) == 0
    recs = read_records(tmp_path)
    assert {r.method for r in recs} == {"covmatch", "mtt-vl"} and all(r.status == "ok" for r in recs)
    assert all(r.device.startswith("cuda") and r.environment["gpu_count"] >= 1 for r in recs)
    assert all(any(k.endswith("cuda_peak") for k in r.peak_memory_mb) for r in recs)


def test_checkpoint_resume_on_the_gpu_equals_the_uninterrupted_run(tmp_path, cache_dir, monkeypatch):
    import mmdd_bench.methods.covmatch as covmatch
    from mmdd_bench.distilled import DistilledSet

    args = [*QUICK, "--methods", "covmatch", "--deterministic", "--set", "covmatch.iterations=10",
            "--set", "covmatch.reset_every=5", "--set", "covmatch.checkpoint_every=5"]
    calls = {"n": 0}
    original = covmatch.covmatch_loss

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("preempted")
        return original(*a, **k)

    monkeypatch.setattr(covmatch, "covmatch_loss", failing)
    assert main(["run", "--cache-dir", str(cache_dir), "--results", str(tmp_path / "a"), *args]) == 1
    monkeypatch.setattr(covmatch, "covmatch_loss", original)
    assert main(["run", "--cache-dir", str(cache_dir), "--results", str(tmp_path / "a"), "--retry-failed", *args]) == 0
    assert main(["run", "--cache-dir", str(cache_dir), "--results", str(tmp_path / "b"), *args]) == 0
    a = DistilledSet.load(next((tmp_path / "a" / "artifacts").glob("*.json")))
    b = DistilledSet.load(next((tmp_path / "b" / "artifacts").glob("*.json")))
    assert a.meta["timings"]["resumed_from_iteration"] == 5
    assert torch.equal(a.images, b.images) and torch.equal(a.text_embeddings, b.text_embeddings)


def test_each_local_rank_takes_its_own_gpu(tmp_path):
    """Two processes with LOCAL_RANK 0 and 1: cuda:0 and cuda:1 (or, on a one-GPU machine, a clear error for
    the rank that has no GPU of its own)."""
    code = ("import json, torch; from mmdd_bench.resources import resolve_device; d = resolve_device('auto'); "
            "print(json.dumps([str(d), torch.cuda.current_device()]))")
    outs = []
    for rank in (0, 1):
        env = {**os.environ, "LOCAL_RANK": str(rank), "HF_HUB_OFFLINE": "1"}
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120))
    assert json.loads(outs[0].stdout) == ["cuda:0", 0]
    if torch.cuda.device_count() >= 2:
        assert json.loads(outs[1].stdout) == ["cuda:1", 1]
    else:
        assert outs[1].returncode != 0 and "has no GPU of its own" in outs[1].stderr
