"""The runner: distils and evaluates the planned cells under locks, and writes one record per evaluation.

Concurrency: each *evaluation* holds its own lock, so two runs with different protocol lists on one
results folder each do their own evaluations, and a cell's evaluations are claimed one at a time, so two
processes can score one set under two protocols at once; the *distillation* a cell needs is done by
whichever process takes its lock first, and the others do their other cells first, then wait for it (up to
``RunConfig.lock_timeout_s``) and reuse the saved set. An evaluation another process holds is skipped and
counted; ``RunSummary.missing`` lists every planned evaluation that has no ok record at the end, so a
caller can tell a complete run from a partial one.

Resume: an evaluation with an ok record is skipped, a saved set is re-evaluated rather than distilled
again (after checking that its metadata is this cell's), and a killed distillation continues from its last
checkpoint (``--force`` clears the checkpoint and the saved set first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import Timeout

from .data.splits import SplitAccessError
from .distilled import DistilledSet, check_budget
from .errors import DataError, MMDDError
from .memory import PeakMemory
from .method import DistillContext
from .plan import Cell, CellPlan, EvalPlan, Planner, RunConfig
from .progress import ProgressFn
from .protocols import get_protocol
from .records import RunRecord, build_record, utc_now
from .resources import Resources, resolve_device, shard_from_environment, use_deterministic_algorithms
from .store import ResultsStore


@dataclass
class CellOutcome:
    records: list[RunRecord] = field(default_factory=list)  # written or found ok, one per evaluation handled
    busy: list[str] = field(default_factory=list)  # run ids another process holds (or whose set it holds)
    refused: list[str] = field(default_factory=list)  # run ids whose record file cannot be replaced


# A cell's set as the runner hands it to evaluations: the set, its distillation timings, its peak memory.
LoadedSet = tuple[DistilledSet, dict, dict]


@dataclass
class FirstPass:
    """What a runner's first pass over its cells did, and the cells it left to ``Runner.finish``."""

    records: list[RunRecord] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    waiting: list[tuple[Cell, CellPlan]] = field(default_factory=list)


@dataclass
class RunSummary:
    records: list[RunRecord]
    planned: list[str]  # the run ids this process was responsible for
    busy: list[str]
    refused: list[str]
    missing: list[str]  # planned run ids without an ok record at the end

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status != "ok"]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.failed


# In the first pass a set another process holds is waited for this long before its cell is left for later. Sets
# that take a second (full-data's reference, a random subset) are held only briefly, but two workers that start
# the same cell at once race for them: without the grace the loser deferred the trainable-text ceiling, the
# grid's longest evaluation, to the very end of a scenes run, where it ran alone while the other worker idled.
# A real distillation (minutes) still defers after this short wait.
HELD_SET_GRACE_S = 5.0


def describe(cell: Cell) -> str:
    return f"{cell.dataset} {cell.method} N={cell.size} seed={cell.seed}"


class Runner:
    def __init__(self, config: RunConfig, log: Callable[[str], None] = lambda s: None,
                 progress: ProgressFn | None = None, resources: Resources | None = None) -> None:
        self.config = config
        self.log = log
        self.progress = progress
        if config.deterministic:
            use_deterministic_algorithms()
        self.device = resolve_device(config.device)
        self.store = ResultsStore(config.results_dir)
        # Runs on the same data and backbone may share one ``Resources`` (the worker of a multi-run file).
        self.resources = resources or Resources(config.data_root, config.cache_dir, config.backbone, log, progress)
        self.planner = Planner(config, self.resources)

    def plan(self) -> list[Cell]:
        return self.planner.plan()

    def shard(self, cells: list[Cell]) -> list[Cell]:
        rank, world = shard_from_environment()
        if world > 1:  # every process plans the same grid and takes every world-th cell
            cells = cells[rank::world]
            self.log(f"shard {rank}/{world}: {len(cells)} cells")
        return cells

    def run(self, on_record: Callable[[RunRecord], None] = lambda r: None) -> RunSummary:
        return self.finish(self.first_pass(on_record), on_record)

    def first_pass(self, on_record: Callable[[RunRecord], None] = lambda r: None) -> FirstPass:
        """Every cell once, in the plan's order, doing what no other process holds: an evaluation another
        process holds, or one whose set another process is distilling, is left for ``finish``."""
        cells = self.shard(self.plan())
        self.store.check_writable()
        self.store.remove_orphans()
        done = FirstPass()
        for i, cell in enumerate(cells, 1):
            self.log(f"[{i}/{len(cells)}] {cell.dataset} {cell.method} N={cell.size} seed={cell.seed}")
            plan = self.planner.cell_plan(cell)
            done.planned += [e.run_id for e in self.responsible(plan)]
            outcome = self.run_cell(cell, plan, defer_held_sets=True)
            done.records += outcome.records
            done.refused += outcome.refused
            if outcome.busy:
                done.waiting.append((cell, plan))
            for rec in outcome.records:
                on_record(rec)
        return done

    def finish(self, first: FirstPass, on_record: Callable[[RunRecord], None] = lambda r: None) -> RunSummary:
        """Second pass: what other processes held. Wait for them (up to the lock timeout), take the records
        they wrote, and do what a process that died left undone."""
        records, busy = list(first.records), []
        for cell, plan in first.waiting:
            self.log(f"waiting for {cell.dataset} {cell.method} N={cell.size} seed={cell.seed}, held by another process")
            outcome = self.run_cell(cell, plan, wait=True)
            records += outcome.records
            busy += outcome.busy
            for rec in outcome.records:
                on_record(rec)
        missing = self.missing(first.planned)
        unique = list({r.run_id: r for r in records}.values())  # the second pass sees first-pass records again
        return RunSummary(unique, first.planned, busy, first.refused, missing)

    def planned_run_ids(self, cells: list[Cell]) -> list[str]:
        """The run ids of every evaluation this run answers for, in the plan's order."""
        return [e.run_id for cell in cells for e in self.responsible(self.planner.cell_plan(cell))]

    def missing(self, planned: list[str]) -> list[str]:
        """The planned run ids without an ok record now (whichever process wrote it)."""
        return [run_id for run_id in planned if self.store.record_state(run_id).state != "ok"]

    def responsible(self, plan: CellPlan) -> list[EvalPlan]:
        """The evaluations this run answers for: all of them, or under --retry-failed those that failed."""
        if not self.config.retry_failed:
            return plan.evals
        return [e for e in plan.evals if self.store.record_state(e.run_id).state == "failed"]

    # ---- one cell ----------------------------------------------------------------------------------
    def run_cell(self, cell: Cell, plan: CellPlan | None = None, wait: bool = False,
                 defer_held_sets: bool = False) -> CellOutcome:
        """Do the cell's evaluations that need doing, claiming them one at a time, so that another process
        can take the cell's other evaluations meanwhile. An evaluation another process holds is skipped
        (``wait=False``) or waited for up to the lock timeout (``wait=True``), then done here if still needed.
        The cell's set, when another process is distilling it, is waited for, or with ``defer_held_sets``
        (the first pass) left for later, so the process does other cells first instead of idling."""
        plan = plan or self.planner.cell_plan(cell)
        outcome = CellOutcome()
        todo = []
        for ev in self.responsible(plan):
            state = self.store.record_state(ev.run_id)
            if not state.writable:
                self.log(f"  {ev.protocol}: {state.problem}; left as it is")
                outcome.refused.append(ev.run_id)
            elif state.state == "ok" and (not self.config.force or self._written_since_force(ev.run_id)):
                self.log(f"  {ev.protocol}: done already ({ev.run_id}.json), skipping")
                outcome.records.append(state.record)
            else:
                todo.append(ev)
        loaded = None  # the cell's set, once this process has it
        for ev in todo:
            lock = self.store.lock(ev.run_id, "eval", what=f"{describe(cell)} {ev.protocol}")
            try:
                lock.acquire(timeout=self.config.lock_timeout_s if wait else 0)
            except Timeout:
                self.log(f"  {ev.protocol}: another process is evaluating this; "
                         + ("gave up waiting" if wait else "leaving it to that process for now"))
                outcome.busy.append(ev.run_id)
                continue
            try:
                state = self.store.record_state(ev.run_id)  # the holder may have finished it meanwhile
                if state.state == "ok" and (wait or not self.config.force or self._written_since_force(ev.run_id)):
                    outcome.records.append(state.record)
                    continue
                loaded = self._distill_and_evaluate(plan, ev, outcome, loaded,
                                                    wait_for_set=wait or not defer_held_sets)
            finally:
                lock.release()
        return outcome

    def _written_since_force(self, run_id: str) -> bool:
        """Whether ``--force`` already redid this evaluation in this invocation (another worker's, or this
        one's in an earlier run of the file): it is not redone twice."""
        return self._saved_since_force(self.store.record_path(run_id))

    def _distill_and_evaluate(self, plan: CellPlan, ev: EvalPlan, outcome: CellOutcome,
                              loaded: LoadedSet | Exception | None = None,
                              wait_for_set: bool = True) -> LoadedSet | Exception | None:
        """Evaluate ``ev`` on the cell's set (``loaded``, else the saved one, else distilled here). Returns what
        the cell's next evaluation needs: the set, the error its distillation raised (recorded again for each
        evaluation, never distilled again), or None when another process holds the set."""
        cell = plan.cell
        ds = self.resources.dataset(cell.dataset)
        bb = self.resources.backbone_for(ds)
        started = utc_now()
        failure = loaded if isinstance(loaded, Exception) else None
        if failure is None:
            try:
                loaded = loaded or self._distilled_set(plan, wait_for_set)
            except Timeout:
                if wait_for_set:
                    self.log(f"  timed out after {self.config.lock_timeout_s:.0f} s waiting for another process's distillation")
                else:
                    self.log("  another process is distilling this set; back to it after the other cells")
                outcome.busy.append(ev.run_id)
                return None
            except MMDDError:
                raise  # bad data, weights or arguments: every cell would fail alike; stop with the message
            except Exception as exc:  # a failing plugin is recorded, the grid goes on
                self.log(f"  FAILED: {type(exc).__name__}: {exc}")
                failure = exc
        if failure is not None:
            rec = build_record(ev.spec, status="failed", started=started, device=str(self.device), error=failure)
            self.store.write_record(rec)
            outcome.records.append(rec)
            return failure
        distilled, timings, memory = loaded
        try:
            with PeakMemory(self.device) as pm:
                result = get_protocol(ev.protocol).evaluate(distilled, ds, bb, ev.params, cell.seed, self.device,
                                                            self.config.cache_dir, self.progress)
        except MMDDError:
            raise
        except Exception as exc:
            self.log(f"  {ev.protocol} FAILED: {type(exc).__name__}: {exc}")
            rec = build_record(ev.spec, status="failed", started=started, device=str(self.device), error=exc,
                               distilled=distilled, timings=timings, memory=memory)
        else:
            rec = build_record(ev.spec, status="ok", started=started, device=str(self.device), result=result,
                               distilled=distilled, timings=timings,
                               memory={**memory, **{f"eval_{k}": v for k, v in pm.result().items()}})
        self.store.write_record(rec)
        outcome.records.append(rec)
        return loaded

    def _distilled_set(self, plan: CellPlan, wait: bool = True) -> LoadedSet:
        """The cell's set: the saved one when it is this cell's, else distilled here under the cell's
        distillation lock (others wait for it; ``wait=False``: ``Timeout`` when another still holds it after
        ``HELD_SET_GRACE_S``)."""
        path = self.store.artifact_path(plan.distill_id)
        timeout = self.config.lock_timeout_s if wait else min(self.config.lock_timeout_s, HELD_SET_GRACE_S)
        with self.store.lock(plan.distill_id, "distill", what=f"{describe(plan.cell)} distillation").acquire(
                timeout=timeout):
            if path.with_suffix(".json").is_file() and (not self.config.force or self._saved_since_force(path)):
                distilled = self._saved_set(plan)
                if distilled is not None:
                    self.log(f"  reusing distilled set {path.name}")
                    return (distilled, dict(distilled.meta.get("timings", {})),
                            dict(distilled.meta.get("peak_memory_mb", {})))
            if self.config.force:
                self.store.clear_checkpoint(plan.distill_id)  # --force redoes the work, not its stale half
            return self._distill(plan)

    def _saved_since_force(self, path: Path) -> bool:
        """Whether ``--force`` already redid this set in this invocation (a set two runs of a file score)."""
        since = self.config.force_since
        return since is not None and path.with_suffix(".json").stat().st_mtime >= since

    def _saved_set(self, plan: CellPlan) -> DistilledSet | None:
        """A saved set, if it loads and its own metadata says it is this cell's; otherwise it is moved aside."""
        path = self.store.artifact_path(plan.distill_id)
        try:
            distilled = DistilledSet.load(path)
        except DataError as exc:
            self.store.move_aside(path.with_suffix(".json"), f"unreadable distilled set ({exc})")
            return None
        expected = {"method": plan.cell.method, "dataset": plan.cell.dataset, "size": plan.cell.size,
                    "seed": plan.cell.seed, "backbone": plan.distill_spec["backbone"],
                    "backbone_weights": plan.distill_spec["backbone_weights"],
                    "method_params": plan.distill_spec["method_params"]}
        found = {k: distilled.meta.get(k) for k in expected}
        if found != expected:
            wrong = ", ".join(f"{k}={found[k]!r} (expected {v!r})" for k, v in expected.items() if found[k] != v)
            self.store.move_aside(path.with_suffix(".json"), f"its metadata is not this cell's: {wrong}")
            return None
        return distilled

    def _distill(self, plan: CellPlan) -> LoadedSet:
        cell = plan.cell
        ds = self.resources.dataset(cell.dataset)
        bb = self.resources.backbone_for(ds)
        method = self.planner.methods[cell.method]
        ctx = DistillContext(ds.train_view(), bb.to(self.device), cell.size, cell.seed, self.device,
                             self.config.cache_dir, self.progress, checkpoint_dir=self.store.checkpoint_dir(plan.distill_id))
        torch.manual_seed(cell.seed)
        t0 = time.perf_counter()
        try:
            with PeakMemory(self.device) as pm:
                distilled = method.distill(ctx, plan.params)
        except SplitAccessError as exc:
            raise RuntimeError(f"method {method.name!r} broke the plugin contract: {exc}") from exc
        timings = {"distill_s": round(time.perf_counter() - t0, 3), **distilled.meta.pop("timings", {})}
        memory = {f"distill_{k}": v for k, v in pm.result().items()}
        if not isinstance(distilled, DistilledSet):
            raise TypeError(f"method {method.name!r} returned {type(distilled).__name__}, not a DistilledSet")
        check_budget(distilled, cell.size, method.name)
        kind = method.text_kind(plan.params)
        if distilled.text_kind != kind:
            raise RuntimeError(f"method {method.name!r} declared {kind} text but returned {distilled.text_kind}")
        distilled.meta.update({"method": method.name, "method_version": method.version, "dataset": cell.dataset,
                               "size": cell.size, "seed": cell.seed, "backbone": bb.name,
                               "backbone_weights": bb.weights_id, "method_params": plan.distill_spec["method_params"],
                               "deterministic": method.deterministic, "timings": timings, "peak_memory_mb": memory,
                               "image_mean": list(bb.mean), "image_std": list(bb.std)})
        path = self.store.artifact_path(plan.distill_id)
        distilled.save(path)
        self.store.clear_checkpoint(plan.distill_id)  # the set supersedes it
        return distilled, timings, memory


__all__ = ["CellOutcome", "RunSummary", "Runner", "describe"]
