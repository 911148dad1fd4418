"""Where the grid's independent cells run: in this process (``local``) or as one Ray task per cell
(``ray``). Sharding across torchrun/SLURM processes happens inside ``Harness.run`` (RANK/WORLD_SIZE).

Workers write their records and artifacts straight into the shared results folder; the per-cell lock in
``Harness.run_cell`` keeps concurrent workers from doing a cell twice.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import UsageError
from .harness import Cell, Harness, RunConfig
from .records import RunRecord

EXECUTORS = ("local", "ray")


def _run_cell_in_worker(config: RunConfig, cell: Cell) -> list[RunRecord]:
    return Harness(config).run_cell(cell)


def run_with_ray(config: RunConfig, address: str | None, log: Callable[[str], None],
                 on_record: Callable[[RunRecord], None] = lambda r: None) -> list[RunRecord]:
    try:
        import ray
    except ImportError as exc:
        raise UsageError("--executor ray needs Ray: pip install 'mmdd-bench[ray]' (or pip install ray)") from exc
    harness = Harness(config, log=log)  # validates arguments and data before any task starts
    cells = harness.plan()
    gpus = 1 if harness.device.type == "cuda" else 0
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        task = ray.remote(num_cpus=1, num_gpus=gpus)(_run_cell_in_worker)
        log(f"ray: {len(cells)} cells as tasks on {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
        pending = {task.remote(config, cell): cell for cell in cells}
        records: list[RunRecord] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            for rec in ray.get(ready[0]):
                records.append(rec)
                on_record(rec)
            log(f"  done: {cell.dataset} {cell.method} N={cell.size} seed={cell.seed}")
        return records
    finally:
        if started_here:
            ray.shutdown()
