"""Where the grid's independent cells run: in this process (``local``), in several processes on this machine
(``local`` with ``workers`` > 1), or as one Ray task per cell (``ray``). Sharding across torchrun/SLURM
processes happens inside ``Runner.run`` (RANK/WORLD_SIZE).

Local workers share the machine: on a CPU each gets ``cores // workers`` torch threads (small students and
CovMatch's steps use one core far better than two: cells side by side finish sooner than one cell on all
cores), on GPUs worker k takes GPU k mod count. Every worker walks the whole grid in order, every run of an
experiment file in one walk; an evaluation another worker holds, or whose set another worker is distilling,
is skipped and, at the end, waited for, so the cells are claimed dynamically with no scheduler (the same
locks that keep concurrent runs from doing anything twice).

Workers write their records and artifacts straight into the shared results folder (absolute paths, since
a worker may start elsewhere); the per-evaluation and per-distillation locks in ``Runner.run_cell`` keep
concurrent workers from doing anything twice. A task asks Ray for a GPU when the cluster has GPUs and the
run is not pinned to the CPU, and resolves its device inside the worker, where that GPU is visible.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing import active_children, get_context

import torch

from .errors import MMDDError, UsageError
from .plan import Cell, RunConfig
from .progress import ProgressFn
from .records import RunRecord
from .runner import CellOutcome, Runner, RunSummary

EXECUTORS = ("local", "ray")


def _run_cell_in_worker(config: RunConfig, cell: Cell) -> CellOutcome:
    return Runner(config).run_cell(cell)


def _worker_device(device: str, worker: int) -> str:
    """Worker ``worker``'s device: its own GPU (round robin) when the run may use GPUs, else the CPU."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{worker % torch.cuda.device_count()}"
    return "cpu" if device == "auto" else device


def _method_references(names: list[str]) -> dict[str, str]:
    """``"module:Class"`` for each method, so a worker (a fresh interpreter) finds methods registered in this
    process too; one defined in ``__main__`` (a script or notebook cell) cannot be imported there."""
    from .method import METHODS

    refs = {}
    for name in names:
        cls = METHODS.get(name)
        if cls.__module__ in ("__main__", "__mp_main__") or "<locals>" in cls.__qualname__:
            raise UsageError(f"method {name!r} is defined in {cls.__module__} ({cls.__qualname__}), which worker "
                             "processes cannot import: move it into a module (or register it through the "
                             "'mmdd_bench.methods' entry-point group), or run without --workers")
        refs[name] = f"{cls.__module__}:{cls.__qualname__}"
    return refs


def _runners(configs: list[RunConfig], log: Callable[[str], None], progress: ProgressFn | None = None) -> list[Runner]:
    """A runner per run; runs on the same data and backbone share their loaded datasets and backbones."""
    runners, shared = [], {}
    for config in configs:
        key = (config.data_root, str(config.cache_dir), config.backbone)
        runners.append(Runner(config, log=log, progress=progress, resources=shared.get(key)))
        shared.setdefault(key, runners[-1].resources)
    return runners


def _run_worker(configs: list[RunConfig], worker: int, threads: int, log_every_s: float | None,
                methods: dict[str, str]) -> list[RunSummary]:
    """One worker over every run of a file: a first pass over all their cells, then what others held. No
    run waits for the one before it, so the last, long cell of a run does not leave the other workers idle."""
    torch.set_num_threads(threads)
    from .method import METHODS
    from .progress import PlainProgress

    for name, reference in methods.items():
        METHODS.add_lazy(name, reference)  # built-ins and entry points are there already: kept as they are

    def log(line: str) -> None:  # stderr, like the single-process run's log: stdout carries the results
        print(f"[worker {worker}] {line}", file=sys.stderr, flush=True)

    runners = _runners(configs, log, PlainProgress(log, log_every_s) if log_every_s else None)
    first = []
    for k, runner in enumerate(runners):
        if len(runners) > 1:
            log(f"run {k + 1}/{len(runners)} of the file")
        first.append(runner.first_pass())
    return [runner.finish(done) for runner, done in zip(runners, first, strict=True)]


def run_with_processes(configs: list[RunConfig], workers: int, log: Callable[[str], None],
                       log_every_s: float | None = 30.0) -> list[RunSummary]:
    """The grid of every run in ``configs`` (the runs of one experiment file) in ``workers`` processes on this
    machine (see the module docstring), one summary per run; progress arrives as plain lines, one prefixed
    with its worker, every ``log_every_s`` seconds per loop (None: none). The first worker that raises (bad
    data or weights: what stops a one-process run) stops the others, and its error is raised here; what they
    recorded stays, and a rerun resumes."""
    from .resources import shard_from_environment

    if shard_from_environment()[1] > 1:
        raise UsageError("--workers > 1 splits the grid on this machine; under torchrun/SLURM each rank already "
                         "takes its share: drop --workers, or start more ranks")
    runners = _runners(configs, log)
    plans = [runner.plan() for runner in runners]  # every check, and the datasets generated once, before any worker starts
    cells = [cell for plan in plans for cell in plan]
    methods = _method_references(list(dict.fromkeys(cell.method for cell in cells)))
    for runner, plan in zip(runners, plans, strict=True):
        for name in dict.fromkeys(cell.dataset for cell in plan):
            runner.resources.dataset(name)
    planned = [runner.planned_run_ids(plan) for runner, plan in zip(runners, plans, strict=True)]
    workers = max(1, min(workers, len(cells)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    devices = [_worker_device(configs[0].device, k) for k in range(workers)]
    runs = f" of {len(configs)} runs" if len(configs) > 1 else ""
    log(f"{len(cells)} cells{runs} in {workers} worker processes ({', '.join(devices)}; {threads} torch thread(s) each)")
    others = set(active_children())
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_run_worker, [replace(config, device=devices[k]) for config in configs], k, threads,
                               log_every_s, methods) for k in range(workers)]
        spawned = set(active_children()) - others
        try:
            per_worker = [f.result() for f in as_completed(futures)]  # re-raises the first worker error
        except BrokenProcessPool as exc:
            for process in spawned:
                process.terminate()
            raise MMDDError("a worker process died (killed, or out of memory: see the system log); what the "
                            "workers recorded stays, and rerunning the same command resumes") from exc
        except BaseException:  # a worker's error, a killed worker (BrokenProcessPool) or Ctrl-C: stop the rest
            for process in spawned:  # their locks are flocks, released with them; records are atomic
                process.terminate()
            raise
    out = []
    for k, runner in enumerate(runners):
        summaries = [worker_summaries[k] for worker_summaries in per_worker]
        order = {run_id: i for i, run_id in enumerate(planned[k])}
        records = sorted({r.run_id: r for s in summaries for r in s.records}.values(),
                         key=lambda r: order.get(r.run_id, len(order)))
        out.append(RunSummary(records, planned[k], [b for s in summaries for b in s.busy],
                              [r for s in summaries for r in s.refused], runner.missing(planned[k])))
    return out


def run_with_ray(config: RunConfig, address: str | None, log: Callable[[str], None],
                 on_record: Callable[[RunRecord], None] = lambda r: None) -> RunSummary:
    try:
        import ray
    except ImportError as exc:
        raise UsageError("--executor ray needs Ray: pip install 'mmdd-bench[ray]' (or pip install ray)") from exc
    runner = Runner(config, log=log)
    cells = runner.plan()  # validates arguments and data before any task starts
    planned = runner.planned_run_ids(cells)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        gpus = 1 if config.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus)(_run_cell_in_worker)
        log(f"ray: {len(cells)} cells as tasks on {ray.cluster_resources().get('CPU', 0):.0f} CPUs"
            + (f" and {ray.cluster_resources().get('GPU', 0):.0f} GPUs" if gpus else ""))
        pending = {task.remote(config, cell): cell for cell in cells}
        records, busy, refused = [], [], []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            outcome = ray.get(ready[0])
            for rec in outcome.records:
                records.append(rec)
                on_record(rec)
            busy += outcome.busy
            refused += outcome.refused
            log(f"  done: {cell.dataset} {cell.method} N={cell.size} seed={cell.seed}")
    finally:
        if started_here:
            ray.shutdown()
    missing = runner.missing(planned)
    return RunSummary(records, planned, busy, refused, missing)
