"""SLURM-style workers through submitit's local executor (CPU): they claim cells (no fixed stride), a
pre-empted worker checkpoints and requeues itself, and a worker killed mid-cell leaves it to another."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from mmdd_bench.locks import read_lock  # noqa: E402
from mmdd_bench.plan import RunConfig  # noqa: E402
from mmdd_bench.records import read_records  # noqa: E402
from mmdd_bench.submit import parse_time, plan_work, submit  # noqa: E402

EVAL = {"epochs": "1", "n_students": "1"}


def config(results: Path, cache_dir: Path, **kw) -> RunConfig:
    base = dict(methods=["random", "herding"], datasets=["shapes-mini"], sizes=[4], seeds=[0, 1],
                results_dir=results, cache_dir=cache_dir, overrides={"eval": EVAL})
    base.update(kw)
    return RunConfig(**base)


def executor(folder: Path):
    ex = submitit.LocalExecutor(folder=str(folder))
    ex.update_parameters(timeout_min=15)
    return ex


def test_slurm_time_formats():
    assert [parse_time(t) for t in ("30", "1:30", "4:00:00", "1-0", "1-2:30", "0:45:10")] == [30, 2, 240, 1440, 1590, 46]


def test_workers_claim_the_next_free_cell_until_none_is_left(tmp_path, cache_dir):
    run = config(tmp_path / "res", cache_dir)
    assert plan_work([run])[0] == 4
    result = submit([run], executor(tmp_path / "jobs"), workers=2, local=True, poll_s=0.5)
    outcomes = [job.result() for job in result.cell_jobs]
    ran = [d for o in outcomes for d in o["ran"]]
    assert len(ran) == len(set(ran)) == 4  # every cell once, by whichever worker claimed it
    assert {o["pid"] for o in outcomes} and len(outcomes) == 2
    recs = read_records(tmp_path / "res")
    assert len(recs) == 4 and {r.status for r in recs} == {"ok"}
    assert not list((tmp_path / "res" / "locks").glob("*.claim"))  # claims given back
    assert plan_work([run])[0] == 0


def _wait_for(predicate, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _checkpoint_iteration(results: Path) -> int:
    for state in (results / "checkpoints").glob("*/state.json"):
        if not state.parent.name.startswith("."):
            try:
                return json.loads(state.read_text())["iteration"]
            except (ValueError, FileNotFoundError):
                return 0
    return 0


def _holder(results: Path):
    claims = list((results / "locks").glob("*.claim"))
    return read_lock(claims[0]) if claims else None


@pytest.mark.slow  # about 3 minutes on 2 loaded cores: three worker processes and an 80-iteration distillation
def test_a_preempted_worker_requeues_and_a_killed_one_leaves_its_cell_to_another(tmp_path, cache_dir):
    """USR2 (SLURM's pre-emption warning) -> submitit checkpoints the worker and the local executor requeues
    it; the requeued task is then killed with SIGKILL mid-cell, and a second job takes the cell over."""
    results = tmp_path / "res"
    run = config(results, cache_dir, methods=["covmatch"], sizes=[6], seeds=[0],
                 overrides={"eval": EVAL, "covmatch": {"iterations": "80", "reset_every": "5", "checkpoint_every": "5"}})
    (first,) = submit([run], executor(tmp_path / "jobs"), workers=1, local=True, poll_s=0.2).cell_jobs
    holder = _wait_for(lambda: _holder(results) if _checkpoint_iteration(results) >= 10 else None,
                       what="a checkpoint at iteration 10")
    os.kill(holder.pid, signal.SIGUSR2)  # what SLURM sends before pre-empting (submitit's signal)
    requeued = _wait_for(lambda: (h := _holder(results)) is not None and h.pid != holder.pid and h,
                         what="the requeued task to claim the cell again")
    before = _checkpoint_iteration(results)
    _wait_for(lambda: _checkpoint_iteration(results) > before, what="the requeued task to checkpoint")
    os.kill(requeued.pid, signal.SIGKILL)  # a node dies mid-cell: no signal, no cleanup
    _wait_for(lambda: first.done(), what="the killed job to end")
    assert "pre-empted: releasing shapes-mini covmatch N=6 seed=0 and requeueing" in (first.stdout() or "")
    assert not read_records(results) and read_lock(next((results / "locks").glob("*.claim"))).stale

    # another task: breaks the dead worker's stale claim and locks, and resumes the cell from its checkpoint
    (second,) = submit([run], executor(tmp_path / "jobs2"), workers=1, local=True, poll_s=0.2).cell_jobs
    outcome = second.result()
    assert len(outcome["ran"]) == 1
    (rec,) = read_records(results)
    assert rec.status == "ok" and rec.timings["resumed_from_iteration"] >= 15
