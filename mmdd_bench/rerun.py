"""``mmdd-bench rerun RECORD.json``: plan and run again exactly the evaluation a record describes, in a
fresh results folder, and say whether it reproduced (same run id, same metrics).

The record's ``experiment`` (written by every run since experiment files exist) is the cell's experiment as
it was asked for: grid narrowed to the cell, the overrides that applied to it, the debug and determinism
switches. Older records have none; their own resolved parameters (``method_params``, ``protocol_params``)
are used as overrides instead, which plans the same identity. The record's ``command`` is shown for reference.
Same code, weights, data and machine give the same numbers; elsewhere the run id still matches when the
weights and data do, and the metrics differ by float arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import build_experiment, parse_experiment
from .errors import UsageError
from .progress import ProgressFn
from .records import RecordError, RunRecord, load_record


def experiment_of(record: RunRecord) -> dict[str, Any]:
    """The experiment (as an experiment file's keys) that plans this record's evaluation."""
    if record.source != "run":
        raise UsageError(f"record {record.run_id} was made by `mmdd-bench eval` on {record.artifact}; score that "
                         "artifact again with mmdd-bench eval instead")
    if record.experiment:
        return dict(record.experiment)
    sets = {scope: values for scope, values in ((record.method, record.method_params),
                                                ("eval", record.protocol_params)) if values}
    return {"methods": [record.method], "datasets": [record.dataset], "sizes": [record.size],
            "seeds": [record.seed], "backbone": record.backbone, "protocols": [record.protocol], "set": sets,
            "debug": record.debug}


@dataclass
class RerunOutcome:
    original: RunRecord
    new: RunRecord | None
    planned_id: str
    command: list[str] = field(default_factory=list)

    @property
    def same_id(self) -> bool:
        return self.planned_id == self.original.run_id

    @property
    def same_metrics(self) -> bool:
        return self.new is not None and self.new.metrics.get("mean") == self.original.metrics.get("mean")

    @property
    def reproduced(self) -> bool:
        return self.same_id and self.new is not None and self.new.status == "ok"

    def as_dict(self) -> dict:
        diff = {}
        if self.new is not None:
            old, new = self.original.metrics.get("mean", {}), self.new.metrics.get("mean", {})
            diff = {k: new.get(k, 0.0) - old.get(k, 0.0) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        return {"run_id": self.original.run_id, "rerun_id": self.planned_id, "same_run_id": self.same_id,
                "status": self.new.status if self.new else None, "same_metrics": self.same_metrics,
                "metric_differences": diff, "original_command": self.original.command,
                "record": str(self.new_path) if self.new is not None else None}

    new_path: Path | None = None


def rerun_record(path: Path, *, results_dir: Path, cache_dir: Path, data_root: str | None = None,
                 device: str | None = None, log: Callable[[str], None] = lambda s: None,
                 progress: ProgressFn | None = None) -> RerunOutcome:
    from . import api
    from .runner import Runner

    try:
        original = load_record(path)
    except (RecordError, OSError) as exc:
        raise UsageError(f"cannot read the record {path}: {exc}") from None
    data = experiment_of(original)
    experiment = build_experiment(parse_experiment(data, f"the experiment stored in {path}"),
                                  {"results": str(results_dir), "data_root": data_root, "device": device},
                                  source=str(path), cache_dir=cache_dir)
    (run,) = experiment.runs
    runner = Runner(run, log=log, progress=progress)
    (cell,) = runner.plan()
    planned = {e.protocol: e.run_id for e in runner.planner.cell_plan(cell).evals}
    planned_id = planned[original.protocol]
    log(f"rerunning {original.run_id} ({original.dataset} {original.method} N={original.size} seed={original.seed} "
        f"{original.protocol}); it was made by: {' '.join(original.command) or '(no command recorded)'}")
    if planned_id != original.run_id:
        log(f"the plan gives run id {planned_id}, not {original.run_id}: the code version, the weights or the data "
            "differ from the record's")
    summary = api.run(run, log=log, progress=progress)
    new = next((r for r in summary.records if r.run_id == planned_id), None)
    out = RerunOutcome(original, new, planned_id, original.command)
    out.new_path = Path(results_dir) / "runs" / f"{planned_id}.json" if new is not None else None
    return out


__all__ = ["RerunOutcome", "experiment_of", "rerun_record"]
