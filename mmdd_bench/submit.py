"""``mmdd-bench submit``: the grid as a SLURM job array through submitit, or as local jobs (``--local``).

- **Claims, not strides.** Every array task runs the same ``CellWorker``: it walks the plan and takes the
  next cell nobody holds (a ``HeartbeatLock`` claim on the cell's distillation id, ``locks/<id>.claim``), runs
  it, and goes on until no cell is left; a fast task takes more cells, none idles while work remains. When the
  only cells left are held by live workers it waits for them (or for their claims to go stale: a killed
  worker's cell is taken over and resumes from its checkpoint). A worker tries each cell once; cells whose
  record says failed are retried only under ``--retry-failed``.
- **Pre-emption.** SLURM sends USR2 before the time limit or on pre-emption (``--signal``, submitit's
  default); submitit then calls ``CellWorker.checkpoint``, which gives the claim back, and requeues the task.
  The requeued task plans again and continues the cell from the method's last checkpoint on disk (the
  results folder is the state; nothing else needs saving).
- **Experts first.** Cells of trajectory methods (a method with ``experts``, e.g. ``mtt-vl``) read expert
  trajectories; these train in a first stage of ``ExpertWorker`` jobs (up to ``--array-throttle`` per store,
  which share its experts through their per-expert locks), and the cell array depends on it (``afterok``). Locally the first
  stage is waited for before the cells start.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .locks import DEFAULT_EXPIRY_S, HOST, LockTimeout
from .plan import RunConfig


def _submitit():
    try:
        import submitit
    except ImportError as exc:
        raise UsageError("mmdd-bench submit needs submitit: pip install 'mmdd-bench[slurm]' (or pip install "
                         "submitit)") from exc
    return submitit


def parse_time(text: str) -> int:
    """SLURM's time formats -> whole minutes (rounded up): ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if not m:
        raise UsageError(f"--time {text!r}: expected MINUTES, HH:MM:SS or D-HH:MM:SS (SLURM's formats)")
    days = int(m.group(1)) if m.group(1) else None
    parts = [int(x) for x in m.group(2).split(":")]
    if days is None:
        h, mi, sec = [(0, parts[0], 0), (0, *parts), tuple(parts)][len(parts) - 1]  # M, M:S, H:M:S
    else:
        h, mi, sec = (parts + [0, 0])[:3]
    minutes = (days or 0) * 1440 + h * 60 + mi + (1 if sec else 0)
    if minutes < 1:
        raise UsageError(f"--time {text!r} is shorter than a minute")
    return minutes


def _needs_work(runner, plan) -> bool:
    states = [runner.store.record_state(ev.run_id).state for ev in plan.evals]
    if runner.config.retry_failed:
        return "failed" in states
    if runner.config.force:
        return True
    return any(s == "missing" for s in states)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} {HOST} pid {os.getpid()}] {text}", flush=True)


class _Checkpointable:
    """submitit's checkpointing protocol (``helpers.Checkpointable``), resolved lazily so that importing this
    module needs no submitit."""

    def checkpoint(self, *args: Any, **kwargs: Any):
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass
class CellWorker(_Checkpointable):
    """One array task: claims free cells one at a time until the plan is done."""

    runs: list[RunConfig]
    lock_expiry_s: float = DEFAULT_EXPIRY_S
    poll_s: float = 5.0
    log_every_s: float = 30.0
    _claim: Any = field(default=None, repr=False)

    def __call__(self) -> dict:
        from .progress import PlainProgress
        from .runner import Runner, describe

        runners = [Runner(run, log=_say, progress=PlainProgress(_say, self.log_every_s)) for run in self.runs]
        cells = [(runner, cell, runner.planner.cell_plan(cell)) for runner in runners for cell in runner.plan()]
        tried: set[int] = set()
        ran: list[str] = []
        while True:
            pending = [(i, *c) for i, c in enumerate(cells) if i not in tried and _needs_work(c[0], c[2])]
            if not pending:
                break
            took = False
            for i, runner, cell, plan in pending:
                claim = runner.store.claim(plan.distill_id, what=describe(cell), expiry_s=self.lock_expiry_s)
                try:
                    claim.acquire(timeout=0)
                except LockTimeout:
                    continue
                self._claim = claim
                try:
                    tried.add(i)
                    if _needs_work(runner, plan):  # another worker may have finished it meanwhile
                        _say(f"claimed {describe(cell)}")
                        runner.run_cell(cell, plan, wait=True)
                        ran.append(plan.distill_id)
                finally:
                    self._claim = None
                    claim.release()
                took = True
                break
            if not took:  # what is left is held by live workers: wait for them to finish, or to die
                time.sleep(self.poll_s)
        _say(f"nothing left to claim; ran {len(ran)} cells")
        return {"host": HOST, "pid": os.getpid(), "ran": ran}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Pre-empted: give the claim back at once (the requeued task, or another, takes the cell and resumes
        from its checkpoint) and requeue this worker as it is; its state is the results folder."""
        claim, self._claim = self._claim, None
        if claim is not None:
            _say(f"pre-empted: releasing {claim.what} and requeueing")
            claim.release()
        else:
            _say("pre-empted between cells: requeueing")
        return super().checkpoint(*args, **kwargs)


@dataclass
class ExpertWorker(_Checkpointable):
    """First stage: trains (or extends) one expert store; interrupted experts resume from their last epoch."""

    dataset: str
    method: str
    size: int
    overrides: dict[str, Any]
    cache_dir: Path
    data_root: str | None
    backbone: str | None
    device: str = "auto"
    num_experts: int = 1  # how many experts the store holds: at most this many jobs share its training

    def __call__(self) -> dict:
        from . import api
        from .progress import PlainProgress

        return api.train_experts(self.dataset, cache_dir=self.cache_dir, data_root=self.data_root,
                                 backbone=self.backbone, method=self.method, overrides=self.overrides,
                                 device=self.device, progress=PlainProgress(_say, 30.0), log=_say, size=self.size)


def plan_work(runs: list[RunConfig], log: Callable[[str], None] = lambda s: None) -> tuple[int, list[ExpertWorker]]:
    """How many cells need work, and the expert stores their trajectory methods read (one worker each)."""
    from .runner import Runner

    todo, experts = 0, {}
    for run in runs:
        runner = Runner(run, log=log)
        for cell in runner.plan():
            plan = runner.planner.cell_plan(cell)
            if not _needs_work(runner, plan):
                continue
            todo += 1
            method = runner.planner.methods[cell.method]
            saved = runner.store.artifact_path(plan.distill_id).with_suffix(".json").is_file()
            if hasattr(method, "experts") and not saved:
                settings = getattr(plan.params, "expert_settings", lambda: None)()
                key = (cell.dataset, cell.method, run.backbone, repr(settings))
                experts.setdefault(key, ExpertWorker(cell.dataset, cell.method, cell.size,
                                                     run.overrides_for(cell.method, cell.dataset, cell.size),
                                                     run.cache_dir, run.data_root, run.backbone, run.device,
                                                     int(getattr(plan.params, "num_experts", 1) or 1)))
    return todo, list(experts.values())


@dataclass
class Submission:
    expert_jobs: list[Any]
    cell_jobs: list[Any]
    folder: Path


def submit(runs: list[RunConfig], executor: Any, *, workers: int | None = None, local: bool = False,
           lock_expiry_s: float = DEFAULT_EXPIRY_S, poll_s: float = 5.0, expert_tasks: int = 1,
           log_every_s: float = 30.0, log: Callable[[str], None] = lambda s: None) -> Submission:
    """Submit the experts stage and the cell array to ``executor`` (a submitit ``SlurmExecutor`` or
    ``LocalExecutor``). ``workers``: array tasks (default: one per cell to do; SLURM's array throttle caps
    how many run at once)."""
    todo, expert_workers = plan_work(runs, log)
    expert_jobs = []
    if expert_workers:
        stage = [w for w in expert_workers for _ in range(max(1, min(expert_tasks, w.num_experts)))]
        expert_jobs = executor.submit_array(stage) if hasattr(executor, "submit_array") else \
            [executor.submit(w) for w in stage]
        log(f"stage 1: {len(stage)} expert jobs for {len(expert_workers)} expert stores")
        if local:
            for job in expert_jobs:
                job.result()  # local jobs have no dependencies: the cells start once experts exist
        else:
            executor.update_parameters(dependency="afterok:" + ":".join(str(j.job_id) for j in expert_jobs))
    n = workers or max(1, todo)
    worker = CellWorker(runs, lock_expiry_s=lock_expiry_s, poll_s=poll_s, log_every_s=log_every_s)
    cell_jobs = executor.submit_array([worker] * n) if hasattr(executor, "submit_array") else \
        [executor.submit(worker) for _ in range(n)]
    log(f"stage 2: {n} cell workers for {todo} cells to do" + (" (after the experts)" if expert_jobs else ""))
    return Submission(expert_jobs, cell_jobs, Path(executor.folder))


def slurm_executor(folder: Path, *, partition: str | None, gpus_per_task: int, cpus_per_task: int | None,
                   mem_gb: float | None, time_limit: str, array_throttle: int | None, account: str | None,
                   qos: str | None) -> Any:
    submitit = _submitit()
    executor = submitit.SlurmExecutor(folder=str(folder))
    params: dict[str, Any] = {"time": parse_time(time_limit), "ntasks_per_node": 1, "nodes": 1,
                              "job_name": "mmdd-bench", "signal_delay_s": 120}
    optional = {"partition": partition, "gpus_per_task": gpus_per_task or None, "cpus_per_task": cpus_per_task,
                "mem": f"{int(mem_gb)}G" if mem_gb else None, "array_parallelism": array_throttle,
                "account": account, "qos": qos}
    params.update({k: v for k, v in optional.items() if v is not None})
    executor.update_parameters(**params)
    return executor


def local_executor(folder: Path, *, time_limit: str, gpus_per_task: int) -> Any:
    submitit = _submitit()
    executor = submitit.LocalExecutor(folder=str(folder))
    executor.update_parameters(timeout_min=parse_time(time_limit), gpus_per_node=gpus_per_task)
    return executor


__all__ = ["CellWorker", "ExpertWorker", "Submission", "local_executor", "parse_time", "plan_work",
           "slurm_executor", "submit"]
