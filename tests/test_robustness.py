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
from mmdd_bench.plan import RunConfig
from mmdd_bench.records import read_records
from mmdd_bench.runner import Runner

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


def _default_sigint() -> None:
    """A shell without job control starts background jobs with SIGINT ignored (POSIX), and a child inherits that:
    under `.ci/run &` or nohup, Ctrl-C would then be a no-op and the run would finish with 0. Restore the default,
    so the child's Python installs its KeyboardInterrupt handler as in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_until_checkpoint(args: list[str], checkpoints: Path, at_least: int) -> subprocess.Popen:
    proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=_default_sigint)
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


def test_a_locked_evaluation_is_left_to_its_owner(tmp_path, cache_dir):
    runner = Runner(config(tmp_path, cache_dir))
    cell = runner.plan()[0]
    (run_id,) = [e.run_id for e in runner.planner.cell_plan(cell).evals]
    (tmp_path / "locks").mkdir()
    with FileLock(str(tmp_path / "locks" / f"{run_id}.eval.lock")):
        outcome = runner.run_cell(cell)
        assert outcome.records == [] and outcome.busy == [run_id]
    assert not (tmp_path / "runs").exists()
    assert [r.status for r in runner.run_cell(cell).records] == ["ok"]


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


def test_two_runs_with_different_protocol_lists_both_get_their_records(tmp_path, cache_dir):
    """The lock is per evaluation: a run that finds a set being made waits for it, then does its own evaluations."""
    a = ["--methods", "random", "--sizes", "4,6", "--seeds", "0,1", "--quiet", "--protocol", "trainable-text"]
    b = ["--methods", "random", "--sizes", "4,6", "--seeds", "0,1", "--quiet", "--protocol", "frozen-text,trainable-text"]
    procs = [subprocess.Popen(cli(tmp_path, cache_dir, *args), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for args in (a, b)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    recs = read_records(tmp_path)
    assert sorted(r.protocol for r in recs) == ["frozen-text"] * 4 + ["trainable-text"] * 4
    assert len({r.distill_id for r in recs}) == 4 and len(list((tmp_path / "artifacts").glob("*.json"))) == 4


def test_an_evaluation_held_elsewhere_is_counted_and_the_exit_code_says_so(tmp_path, cache_dir, capsys):
    base = ["run", "--results", str(tmp_path), "--cache-dir", str(cache_dir), *QUICK, "--quiet", "--sizes", "4",
            "--methods", "random", "--seeds", "0,1", "--lock-timeout", "0.5"]
    runner = Runner(config(tmp_path, cache_dir, seeds=[0, 1]))
    held = runner.planner.cell_plan(runner.plan()[1]).evals[0].run_id
    (tmp_path / "locks").mkdir()
    with FileLock(str(tmp_path / "locks" / f"{held}.eval.lock")):
        assert main(base) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "1 of 2 planned evaluations have no ok record: 1 held by another process" in err
    assert {r.run_id for r in read_records(tmp_path)} == {runner.planner.cell_plan(runner.plan()[0]).evals[0].run_id}
    assert main(base) == 0 and len(read_records(tmp_path)) == 2  # once released, a rerun completes the grid


def test_a_distillation_held_elsewhere_is_waited_for(tmp_path, cache_dir, capsys):
    runner = Runner(config(tmp_path, cache_dir))
    plan = runner.planner.cell_plan(runner.plan()[0])
    with runner.store.lock(plan.distill_id, "distill"):
        outcome = Runner(config(tmp_path, cache_dir, lock_timeout_s=0.3)).run_cell(plan.cell)
    assert outcome.busy == [plan.evals[0].run_id] and not outcome.records
    assert [r.status for r in runner.run_cell(plan.cell).records] == ["ok"]


def test_force_clears_a_stale_checkpoint(tmp_path, cache_dir, monkeypatch):
    """--force redistils from scratch: a checkpoint left by an earlier (failed) attempt is not resumed."""
    import mmdd_bench.methods.covmatch as covmatch
    from mmdd_bench.checkpoint import load_checkpoint, save_checkpoint

    args = ["--methods", "covmatch", "--sizes", "4", "--set", "covmatch.iterations=10", "--set", "covmatch.reset_every=5",
            "--set", "covmatch.real_batch=16",
            "--set", "covmatch.checkpoint_every=5", "--set", "covmatch.momentum_syn=0", "--quiet"]
    run = ["run", "--cache-dir", str(cache_dir), *QUICK, *args]
    calls = {"n": 0}
    original = covmatch.covmatch_loss

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("power cut")
        return original(*a, **k)

    monkeypatch.setattr(covmatch, "covmatch_loss", failing)
    assert main([*run, "--results", str(tmp_path / "a")]) == 1  # failed after its checkpoint at iteration 5
    monkeypatch.setattr(covmatch, "covmatch_loss", original)
    (folder,) = [p for p in (tmp_path / "a" / "checkpoints").iterdir() if not p.name.startswith(".")]
    tensors, state = load_checkpoint(folder)
    assert state["iteration"] == 5 and not any(k.startswith("momentum.") for k in tensors)  # SGD without momentum
    save_checkpoint(folder, {**tensors, "syn_images": tensors["syn_images"] + 1.0}, state)  # make it stale
    assert main([*run, "--results", str(tmp_path / "a"), "--force"]) == 0
    assert main([*run, "--results", str(tmp_path / "b")]) == 0
    a = DistilledSet.load(next((tmp_path / "a" / "artifacts").glob("*.json")))
    b = DistilledSet.load(next((tmp_path / "b" / "artifacts").glob("*.json")))
    assert a.meta["timings"]["resumed_from_iteration"] == 0 and torch.equal(a.images, b.images)


def test_only_rank_0_writes_leaderboards(tmp_path, cache_dir, monkeypatch):
    base = ["run", "--cache-dir", str(cache_dir), *QUICK, "--quiet", "--sizes", "4", "--methods", "random", "--seeds", "0,1"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main([*base, "--results", str(tmp_path)]) == 0
    assert not (tmp_path / "leaderboard").exists() and len(read_records(tmp_path)) == 1
    monkeypatch.setenv("RANK", "0")
    assert main([*base, "--results", str(tmp_path)]) == 0
    assert (tmp_path / "leaderboard" / "leaderboard.csv").is_file() and len(read_records(tmp_path)) == 2


@pytest.mark.parametrize("env_var,value,message", [("RANK", "abc", "RANK='abc' is not an integer"),
                                                   ("RANK", "5", "RANK=5 is outside 0..1")])
def test_malformed_launcher_variables_are_a_clear_error(tmp_path, cache_dir, monkeypatch, capsys, env_var, value,
                                                        message):
    monkeypatch.setenv(env_var, value)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", "--cache-dir", str(cache_dir), *QUICK, "--quiet", "--sizes", "4", "--methods", "random",
                 "--results", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err and not (tmp_path / "runs").exists()
