"""Where the grid's independent cells run: in this process (``local``) or as one Ray task per cell
(``ray``). Sharding across torchrun/SLURM processes happens inside ``Runner.run`` (RANK/WORLD_SIZE).

Workers write their records and artifacts straight into the shared results folder (absolute paths, since
a worker may start elsewhere); the per-evaluation and per-distillation locks in ``Runner.run_cell`` keep
concurrent workers from doing anything twice. A task asks Ray for a GPU when the cluster has GPUs and the
run is not pinned to the CPU, and resolves its device inside the worker, where that GPU is visible.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import UsageError
from .plan import Cell, RunConfig
from .records import RunRecord
from .runner import CellOutcome, Runner, RunSummary

EXECUTORS = ("local", "ray")


def _run_cell_in_worker(config: RunConfig, cell: Cell) -> CellOutcome:
    return Runner(config).run_cell(cell)


def run_with_ray(config: RunConfig, address: str | None, log: Callable[[str], None],
                 on_record: Callable[[RunRecord], None] = lambda r: None) -> RunSummary:
    try:
        import ray
    except ImportError as exc:
        raise UsageError("--executor ray needs Ray: pip install 'mmdd-bench[ray]' (or pip install ray)") from exc
    runner = Runner(config, log=log)
    cells = runner.plan()  # validates arguments and data before any task starts
    planned = [e.run_id for cell in cells for e in runner.responsible(runner.planner.cell_plan(cell))]
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
    missing = [run_id for run_id in planned if runner.store.record_state(run_id).state != "ok"]
    return RunSummary(records, planned, busy, refused, missing)
