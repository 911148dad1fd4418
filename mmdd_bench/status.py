"""``mmdd-bench status``: the grid's state from the results folder alone (records and held locks), and, given
a plan (``--config`` or the flags of ``run``), which planned evaluations are done, failed, running or missing.

Running means a live lock or claim: the heartbeat files of ``locks.py`` say which host and process hold it,
and one whose heartbeat stopped (its process died) is shown as stale.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .dryrun import GridPlan
from .locks import LockInfo
from .records import RecordError, load_record
from .store import ResultsStore


@dataclass
class Row:
    state: str  # done | failed | running | missing | unknown | unreadable
    dataset: str = ""
    method: str = ""
    size: int | None = None
    seed: int | None = None
    protocol: str = ""
    run_id: str | None = None
    variant: str = ""
    detail: str = ""  # the error's first line, or who holds it


@dataclass
class Status:
    results: Path
    rows: list[Row]
    locks: list[LockInfo] = field(default_factory=list)
    planned: bool = False

    def counts(self) -> dict[str, int]:
        return dict(Counter(r.state for r in self.rows))

    def as_dict(self) -> dict:
        return {"results": str(self.results), "planned": self.planned, "counts": self.counts(),
                "rows": [asdict(r) for r in self.rows], "locks": [lock.as_dict() for lock in self.locks]}


def _first_line(error: str | None) -> str:
    return (error or "").strip().splitlines()[0] if (error or "").strip() else ""


def _holder(lock: LockInfo) -> str:
    state = "stale: its holder stopped beating" if lock.stale else "held"
    return f"{state} by {lock.host} pid {lock.pid} ({lock.age_s:.0f} s since its heartbeat)"


def _lock_key(lock: LockInfo) -> str:
    return lock.path.name.split(".", 1)[0]


def folder_status(results: Path) -> Status:
    """What the records and locks say, without a plan: every record (ok or failed) and every held lock."""
    store = ResultsStore(results)
    rows = []
    paths = sorted(store.runs.glob("*.json")) if store.runs.is_dir() else []
    for path in paths:
        try:
            rec = load_record(path)
        except (RecordError, OSError) as exc:
            rows.append(Row("unreadable", run_id=path.stem, detail=str(exc)))
            continue
        rows.append(Row("done" if rec.status == "ok" else "failed", rec.dataset, rec.method, rec.size, rec.seed,
                        rec.protocol, rec.run_id, rec.variant, _first_line(rec.error)))
    locks = store.held()
    for lock in locks:
        rows.append(Row("running" if not lock.stale else "stale", detail=f"{lock.what}: {_holder(lock)}",
                        run_id=_lock_key(lock)))
    return Status(store.root, rows, locks)


def planned_status(grid: GridPlan) -> Status:
    """Every planned evaluation: done, failed (its error's first line), running (a live lock or claim on it or
    its distillation, with host and pid), missing, or unknown (its run id needs data or weights absent here)."""
    results = grid.experiment.runs[0].results_dir
    store = ResultsStore(results)
    locks = store.held()
    by_key = {}
    for lock in locks:
        by_key.setdefault(_lock_key(lock), lock)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for state in grid.cells:
            c = state.cell
            for ev, planned in zip(state.evals, state.plan.evals, strict=True):
                row = Row("unknown", c.dataset, c.method, c.size, c.seed, ev.protocol, ev.run_id, planned.spec.variant)
                if ev.run_id is None:
                    row.detail = "run id unknown here: " + "; ".join(grid.unknown)
                    rows.append(row)
                    continue
                holder = by_key.get(ev.run_id) or by_key.get(state.plan.distill_id)
                record = store.record_state(ev.run_id)
                if record.state == "ok":
                    row.state = "done"
                elif holder is not None and not holder.stale:
                    row.state, row.detail = "running", f"{holder.what}: {_holder(holder)}"
                elif record.state == "failed":
                    row.state, row.detail = "failed", _first_line(record.record.error if record.record else "")
                elif record.state in ("unreadable", "newer"):
                    row.state, row.detail = "unreadable", record.problem or ""
                else:
                    row.state = "missing"
                    if holder is not None:
                        row.detail = f"{holder.what}: {_holder(holder)}"
                rows.append(row)
    return Status(store.root, rows, locks, planned=True)


__all__ = ["Row", "Status", "folder_status", "planned_status"]
