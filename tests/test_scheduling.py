"""How processes share a grid without a scheduler: a cell's evaluations are claimed one at a time, a set
another process is distilling is left for later instead of waited on, ``--force`` never redoes what this
invocation already redid, and the runs of one file share one pool of workers."""

from __future__ import annotations

import threading
import time

from filelock import Timeout

from mmdd_bench import api
from mmdd_bench import runner as runner_module
from mmdd_bench.plan import RunConfig
from mmdd_bench.runner import Runner


def _config(results, cache_dir, **kw) -> RunConfig:
    base = dict(methods=["random"], datasets=["shapes-mini"], sizes=[4], seeds=[0], results_dir=results,
                cache_dir=cache_dir, device="cpu", protocols=["frozen-text", "frozen-encoders"],
                overrides={"eval": {"epochs": "1", "n_students": "1"}})
    base.update(kw)
    return RunConfig(**base)


def _held(store, run_id: str) -> bool:
    try:
        store.lock(run_id, "eval").acquire(timeout=0).release()
    except Timeout:  # filelock's, which the heartbeat's LockTimeout is too: someone holds it
        return True
    return False


def test_a_cells_evaluations_are_claimed_one_at_a_time(tmp_path, cache_dir, monkeypatch):
    """While one protocol scores the set, the cell's other evaluation stays free for another process."""
    runner = Runner(_config(tmp_path, cache_dir))
    [cell] = runner.plan()
    ids = [e.run_id for e in runner.planner.cell_plan(cell).evals]
    assert len(ids) == 2
    held_during = []
    real = runner_module.get_protocol

    def spying(name):
        protocol = real(name)
        evaluate = protocol.evaluate

        def checked(*args, **kwargs):
            held_during.append([_held(runner.store, run_id) for run_id in ids])
            return evaluate(*args, **kwargs)

        protocol.evaluate = checked
        return protocol

    monkeypatch.setattr(runner_module, "get_protocol", spying)
    summary = runner.run()
    assert summary.complete
    assert held_during == [[True, False], [False, True]]


def test_a_set_another_process_distils_is_left_for_after_the_other_cells(tmp_path, cache_dir):
    config = _config(tmp_path, cache_dir, seeds=[0, 1], protocols=["frozen-encoders"], lock_timeout_s=0.5)
    lines: list[str] = []
    runner = Runner(config, log=lines.append)
    first, second = runner.plan()
    other = runner.store.lock(runner.planner.cell_plan(first).distill_id, "distill").acquire(timeout=0)
    try:
        summary = runner.run()
    finally:
        other.release()
    deferred = next(i for i, line in enumerate(lines) if "back to it after the other cells" in line)
    second_cell = next(i for i, line in enumerate(lines) if line.startswith("[2/2]"))
    waited = next(i for i, line in enumerate(lines) if line.startswith("waiting for"))
    assert deferred < second_cell < waited  # not waited on in the first pass
    assert [r.seed for r in summary.records] == [1]
    assert summary.missing == [e.run_id for e in runner.planner.cell_plan(first).evals]


def test_force_does_not_redo_what_this_invocation_already_redid(tmp_path, cache_dir):
    """Another worker of the same ``--force`` run (here: a second runner with the same start time) takes the
    records written since the invocation started; it does not score the set again."""
    api.run(_config(tmp_path, cache_dir))
    forced = _config(tmp_path, cache_dir, force=True)
    Runner(forced).run()
    records = sorted((tmp_path / "runs").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in records}
    lines: list[str] = []
    summary = Runner(forced, log=lines.append).run()
    assert summary.complete
    assert {p: p.stat().st_mtime_ns for p in records} == before
    assert sum("done already" in line for line in lines) == 2


def test_the_runs_of_a_file_share_one_pool_of_workers(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    lines: list[str] = []
    runs = [_config(tmp_path, cache_dir, protocols=["frozen-encoders"], seeds=[0, 1]),
            _config(tmp_path, cache_dir, methods=["herding"], protocols=["frozen-encoders"])]
    summaries = api.run_all(runs, workers=2, log=lines.append, log_every_s=None)
    assert [s.complete for s in summaries] == [True, True]
    assert [len(s.records) for s in summaries] == [2, 1]
    assert [{r.method for r in s.records} for s in summaries] == [{"random"}, {"herding"}]
    assert any("3 cells of 2 runs in 2 worker processes" in line for line in lines)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 3


def test_a_failed_distillation_is_recorded_for_each_evaluation_and_tried_once(tmp_path, cache_dir, monkeypatch):
    calls = []

    def failing(self, plan):
        calls.append(plan.distill_id)
        raise RuntimeError("plugin broke")

    monkeypatch.setattr(Runner, "_distill", failing)
    summary = Runner(_config(tmp_path, cache_dir)).run()
    assert len(calls) == 1
    assert [r.status for r in summary.records] == ["failed", "failed"]
    assert all("plugin broke" in r.error for r in summary.records)
    assert {r.protocol for r in summary.records} == {"frozen-text", "frozen-encoders"}


def test_a_set_held_only_briefly_is_waited_for_not_deferred(tmp_path, cache_dir):
    """Two workers that start the same cell at once race for its set's lock; a set that takes a second (full-data's
    reference, a random subset) is waited for (``HELD_SET_GRACE_S``), so the loser never defers the cell's other
    evaluations (the trainable-text ceiling once ran last, alone, for this)."""
    config = _config(tmp_path, cache_dir, protocols=["frozen-encoders"], lock_timeout_s=60.0)
    lines: list[str] = []
    runner = Runner(config, log=lines.append)
    [cell] = runner.plan()
    runner.resources.backbone_for(runner.resources.dataset(cell.dataset))  # built before the race, as a warm worker's
    held = threading.Event()

    def other_worker():  # holds the set's lock for two seconds (locks are released by the thread that took them)
        lock = runner.store.lock(runner.planner.cell_plan(cell).distill_id, "distill").acquire(timeout=0)
        held.set()
        time.sleep(2.0)
        lock.release()

    assert runner_module.HELD_SET_GRACE_S > 2.0
    thread = threading.Thread(target=other_worker)
    thread.start()
    held.wait()
    first = runner.first_pass()
    thread.join()
    assert not any("back to it after the other cells" in line for line in lines)
    assert not first.waiting and [r.status for r in first.records] == ["ok"]
