"""Nothing lost: checkpoints and resume after kill -9, per-cell locks, concurrent runs, sharding, Ray,
failure isolation and --retry-failed, cache management."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from mmdd_bench.cli import main
from mmdd_bench.distilled import DistilledSet
from mmdd_bench.harness import Harness, RunConfig
from mmdd_bench.records import canonical_id, read_records

QUICK = ["--datasets", "shapes-mini", "--set", "eval.epochs=1", "--set", "eval.n_students=1"]


def cli(results: Path, cache_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mmdd_bench.cli", "run", "--results", str(results), "--cache-dir", str(cache_dir),
            *QUICK, *args]


def env(**extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def metrics_by_run(results: Path) -> dict[str, dict]:
    return {r.run_id: r.metrics for r in read_records(results)}


COVMATCH = ["--methods", "covmatch", "--sizes", "6", "--set", "covmatch.iterations=60", "--set",
            "covmatch.reset_every=5", "--set", "covmatch.checkpoint_every=5", "--quiet"]


def _run_until_checkpoint(args: list[str], checkpoints: Path, at_least: int) -> subprocess.Popen:
    proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        # Only a finished checkpoint folder; hidden ones are a checkpoint being written or replaced.
        states = [p for p in checkpoints.glob("*/state.json") if not p.parent.name.startswith(".")]
        try:
            if states and json.loads(states[0].read_text())["iteration"] >= at_least:
                return proc
        except (json.JSONDecodeError, FileNotFoundError):
            pass  # replaced while we read it
        time.sleep(0.05)
    raise AssertionError("the run ended before reaching the checkpoint it should be interrupted at")


def test_ctrl_c_then_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path, cache_dir):
    killed = tmp_path / "killed"
    args = cli(killed, cache_dir, *COVMATCH)
    proc = _run_until_checkpoint(args, killed / "checkpoints", 10)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: clean stop, exit 130, the checkpoint stays
    assert proc.wait(timeout=120) == 130
    assert list((killed / "checkpoints").glob("*/state.json"))
    proc = _run_until_checkpoint(args, killed / "checkpoints", 20)  # resumes, then dies hard
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((killed / "runs").glob("*.json"))
    assert subprocess.run(args, env=env(), timeout=300).returncode == 0
    straight = tmp_path / "straight"
    assert subprocess.run(cli(straight, cache_dir, *COVMATCH), env=env(), timeout=300).returncode == 0
    a = DistilledSet.load(next((killed / "artifacts").glob("*.json")))
    b = DistilledSet.load(next((straight / "artifacts").glob("*.json")))
    assert a.meta["timings"]["resumed_from_iteration"] >= 20 and b.meta["timings"]["resumed_from_iteration"] == 0
    assert torch.equal(a.images, b.images) and torch.equal(a.text_embeddings, b.text_embeddings)
    assert metrics_by_run(killed) == metrics_by_run(straight)
    assert not list((killed / "checkpoints").glob("*/state.json"))  # removed once the set is saved


def config(results: Path, cache_dir: Path, **kw) -> RunConfig:
    base = dict(methods=["random"], datasets=["shapes-mini"], sizes=[4], seeds=[0], results_dir=results,
                cache_dir=cache_dir, overrides={"eval": {"epochs": "1", "n_students": "1"}})
    base.update(kw)
    return RunConfig(**base)


def test_a_locked_cell_is_left_to_its_owner(tmp_path, cache_dir):
    harness = Harness(config(tmp_path, cache_dir))
    cell = harness.plan()[0]
    distill_id = canonical_id(harness.specs(cell)[0])
    (tmp_path / "locks").mkdir()
    with FileLock(str(tmp_path / "locks" / f"{distill_id}.lock")):
        assert harness.run_cell(cell) == []
    assert not (tmp_path / "runs").exists()
    assert [r.status for r in harness.run_cell(cell)] == ["ok"]


def test_two_concurrent_processes_share_one_results_folder(tmp_path, cache_dir):
    args = ["--methods", "random,herding", "--sizes", "4,6", "--seeds", "0,1", "--quiet"]
    procs = [subprocess.Popen(cli(tmp_path, cache_dir, *args), env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    files = list((tmp_path / "runs").glob("*.json"))
    assert len(files) == 8 and not list((tmp_path / "runs").glob(".*"))  # no temp files left
    assert all(json.loads(f.read_text())["status"] == "ok" for f in files)
    assert main(["report", "--results", str(tmp_path)]) == 0


def test_torchrun_style_shards_equal_a_local_run(tmp_path, cache_dir):
    args = ["--methods", "random,herding", "--sizes", "4", "--seeds", "0,1", "--quiet"]
    shards = [subprocess.Popen(cli(tmp_path / "sharded", cache_dir, *args), env=env(RANK=str(r), WORLD_SIZE="2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in range(2)]
    assert all(p.wait(timeout=600) == 0 for p in shards)
    assert main(["run", "--results", str(tmp_path / "local"), "--cache-dir", str(cache_dir), *QUICK, *args]) == 0
    sharded, local = metrics_by_run(tmp_path / "sharded"), metrics_by_run(tmp_path / "local")
    assert len(local) == 4 and sharded == local


def test_ray_tasks_equal_a_local_run(tmp_path, cache_dir):
    pytest.importorskip("ray")
    args = ["--methods", "random,herding", "--sizes", "4", "--seeds", "0", "--quiet"]
    assert main(["run", "--results", str(tmp_path / "ray"), "--cache-dir", str(cache_dir), *QUICK, *args,
                 "--executor", "ray"]) == 0
    assert main(["run", "--results", str(tmp_path / "local"), "--cache-dir", str(cache_dir), *QUICK, *args]) == 0
    ray_m, local_m = metrics_by_run(tmp_path / "ray"), metrics_by_run(tmp_path / "local")
    assert len(local_m) == 2 and ray_m == local_m


def test_nan_loss_is_recorded_as_failed(tmp_path, cache_dir):
    base = ["run", "--results", str(tmp_path), "--cache-dir", str(cache_dir), *QUICK, "--quiet", "--sizes", "4"]
    assert main([*base, "--methods", "covmatch", "--set", "covmatch.iterations=3", "--set", "covmatch.lr_images=1e38"]) == 1
    (rec,) = read_records(tmp_path)
    assert rec.status == "failed" and "FloatingPointError" in rec.error and "lr_images" in rec.error


def test_retry_failed_reruns_only_failed_cells(tmp_path, cache_dir, monkeypatch):
    from mmdd_bench.methods.random_subset import RandomSubset

    base = ["run", "--results", str(tmp_path), "--cache-dir", str(cache_dir), *QUICK, "--quiet", "--sizes", "4",
            "--methods", "random,herding"]
    original = RandomSubset.distill
    monkeypatch.setattr(RandomSubset, "distill", lambda self, ctx, params: 1 / 0)
    assert main(base) == 1
    status = {r.method: r.status for r in read_records(tmp_path)}
    assert status == {"random": "failed", "herding": "ok"}
    herding_file = next(f for f in (tmp_path / "runs").glob("*.json") if json.loads(f.read_text())["method"] == "herding")
    herding_before = herding_file.read_text()
    monkeypatch.setattr(RandomSubset, "distill", original)
    assert main([*base, "--retry-failed"]) == 0
    assert {r.method: r.status for r in read_records(tmp_path)} == {"random": "ok", "herding": "ok"}
    assert herding_file.read_text() == herding_before  # untouched


def test_cache_du_and_clear(tmp_path, capsys):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "x.safetensors").write_bytes(b"0" * 2048)
    assert main(["cache", "du", "--cache-dir", str(tmp_path)]) == 0
    assert "features" in capsys.readouterr().out
    assert main(["cache", "clear", "features", "--cache-dir", str(tmp_path)]) == 0
    assert not (tmp_path / "features").exists()
    (tmp_path / "trajectories" / "k" / "expert_000").mkdir(parents=True)
    (tmp_path / "trajectories" / "k" / "expert_000" / "epoch_000.safetensors").write_bytes(b"0" * 4096)
    assert main(["cache", "du", "trajectories", "--cache-dir", str(tmp_path)]) == 0
    assert "trajectories" in capsys.readouterr().out
    assert main(["cache", "clear", "trajectories", "--cache-dir", str(tmp_path)]) == 0
    assert not (tmp_path / "trajectories").exists()
