"""Run records: one JSON file per (distilled set, protocol) evaluation, written atomically.

Identity is a hash of the canonical spec (what was asked for, with every default resolved), so a rerun
finds its own record and skips it, and two identical requests on different machines land on the same file.

Records are untrusted input when they are read back (results folders are shared): each one is validated
against the schema (pydantic, unknown fields ignored, non-finite metrics refused), older schemas are
migrated, and a record of a newer schema is never read as if it were ours nor overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic
from typing_extensions import TypedDict

# The newest schema this version reads. 3 added ``distilled_backbone``/``distilled_backbone_weights`` (a transfer
# evaluation: a set scored with another backbone than the one that distilled it). A record is written with the
# oldest schema that holds it (``schema_for``): an older mmdd-bench ignores unknown fields, so it would read a
# transfer record as the evaluating backbone's own and merge it into that row; at schema 3 it skips the record
# (with its "upgrade" warning) and still reads every other record as before.
SCHEMA_VERSION = 3
MAX_RECORD_BYTES = 16 * 2**20  # a record is a few KiB; anything this large is not one of ours


def canonical_id(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


Finite = pydantic.FiniteFloat


class Metrics(TypedDict, total=False):
    mean: dict[str, Finite]
    std: dict[str, Finite | None]  # None: one student, no spread to report
    per_student: list[dict[str, Finite]]


@dataclass
class RecordSpec:
    """Everything a record says about *what* was evaluated; the planner (harness cells) and the ``eval``
    command both produce one, and ``build_record`` turns it into a record, ok or failed."""

    run_id: str
    distill_id: str
    dataset: str
    dataset_fingerprints: dict[str, str]
    method: str
    method_version: str
    method_params: dict
    size: int
    seed: int
    backbone: str
    backbone_weights: str
    protocol: str
    protocol_version: str
    protocol_params: dict
    variant: str = ""
    eval_variant: str = ""
    eval_seeds: list[int] = field(default_factory=list)
    debug: bool = False
    deterministic: bool = False
    source: str = "run"  # "run": a harness cell; "eval": ``mmdd-bench eval`` on a saved set
    artifact: str | None = None
    experiment: dict = field(default_factory=dict)  # the cell's experiment, as ``mmdd-bench rerun`` replans it
    # A transfer evaluation's source: the backbone (and its weights) that distilled the set, when ``backbone``
    # is another one; None when the set was scored with its own backbone.
    distilled_backbone: str | None = None
    distilled_backbone_weights: str | None = None


@dataclass
class RunRecord:
    __pydantic_config__ = pydantic.ConfigDict(extra="ignore", allow_inf_nan=False)

    run_id: str
    distill_id: str
    status: Literal["ok", "failed"]
    dataset: str
    dataset_fingerprints: dict[str, str]
    method: str
    method_version: str
    method_params: dict[str, Any]
    size: int
    seed: int
    backbone: str
    backbone_weights: str
    protocol: str
    protocol_version: str
    protocol_params: dict[str, Any]
    variant: str = ""  # how the method's parameters differ from its defaults, e.g. "lam=0.0"
    eval_variant: str = ""  # how the protocol's parameters differ from its defaults, e.g. "epochs=2"
    n_pairs: int | None = None
    budget_pairs: int | None = None  # the pair budget the set counts against (LoRS: n_pairs + 1)
    storage_bytes: int | None = None
    eval_seeds: list[int] = field(default_factory=list)
    metrics: Metrics = field(default_factory=dict)  # type: ignore[assignment]
    selected_epochs: list[int] = field(default_factory=list)
    eval_lrs: dict[str, Finite] = field(default_factory=dict)
    # The aids the students were handed (learned_lrs, val_tuned_lrs, learned_similarity, teacher_similarity:
    # protocols/aids.py); None in records made before aids were named, [] when there were none.
    eval_aids: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)  # distill_s, eval_s, s_per_iteration, ...
    peak_memory_mb: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    artifact: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)  # package versions, python, git sha and dirty flag
    environment: dict[str, Any] = field(default_factory=dict)  # device name, CUDA/cuDNN, TF32, determinism
    command: list[str] = field(default_factory=list)  # sys.argv of the process that made it
    started_utc: str = ""
    finished_utc: str = ""
    error: str | None = None
    debug: bool = False  # ran under the harness's debugging limits: kept out of leaderboards
    deterministic: bool = False  # the method ignores the seed: its seeds share one set
    source: str = "run"
    experiment: dict[str, Any] = field(default_factory=dict)  # what was asked for this cell (``rerun`` reads it)
    distilled_backbone: str | None = None  # a transfer evaluation: the backbone that distilled the set
    distilled_backbone_weights: str | None = None
    schema_version: int = SCHEMA_VERSION

    def save(self, results_dir: Path) -> Path:
        path = record_path(results_dir, self.run_id)
        atomic_write_text(path, json.dumps(asdict(self), indent=1, sort_keys=False, allow_nan=False))
        return path


_ADAPTER = pydantic.TypeAdapter(RunRecord)


def build_record(spec: RecordSpec, *, status: str, started: str, device: str, result: Any = None,
                 error: BaseException | None = None, distilled: Any = None, timings: dict | None = None,
                 memory: dict | None = None, notes: list[str] | None = None) -> RunRecord:
    """The one way a record is made, for harness cells, failed cells and ``eval`` alike."""
    import traceback

    from .provenance import command, environment, versions

    fields = asdict(spec)
    rec = RunRecord(**fields, status=status, device=device, started_utc=started, finished_utc=utc_now(),
                    versions=versions(), environment=environment(device), command=command(),
                    timings=dict(timings or {}), peak_memory_mb=dict(memory or {}), notes=list(notes or []),
                    schema_version=schema_for(spec))
    if distilled is not None:
        rec.notes += [str(n) for n in distilled.meta.get("notes", []) if isinstance(n, str)]  # the method's own
        rec.n_pairs = len(distilled)
        rec.budget_pairs = distilled.budget_pairs
        # A reference set (full-data) stores no pairs of its own: its bytes are the dataset's, not measured here.
        rec.storage_bytes = None if distilled.reference is not None else distilled.storage_bytes()
    if result is not None:
        rec.metrics = {"mean": result.mean, "std": result.std, "per_student": result.per_student}
        rec.selected_epochs = list(result.selected_epochs)
        rec.eval_lrs = dict(result.lrs)
        rec.eval_aids = list(result.aids)
        rec.notes += list(result.notes)
        rec.timings["eval_s"] = round(result.seconds, 3)
    if error is not None:
        rec.error = f"{type(error).__name__}: {error}\n{''.join(traceback.format_exception(error)[-6:])}"
    return rec


def schema_for(spec: RecordSpec | RunRecord) -> int:
    """The oldest schema that holds a record (see ``SCHEMA_VERSION``): 3 for a transfer evaluation, else 2."""
    return 3 if spec.distilled_backbone else 2


def record_path(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / "runs" / f"{run_id}.json"


class RecordError(ValueError):
    """A file in ``runs/`` that is not a record we can use; ``newer`` when a later version wrote it."""

    def __init__(self, message: str, newer: bool = False) -> None:
        super().__init__(message)
        self.newer = newer


def _migrate(data: dict) -> dict:
    """Bring an older record to the current schema (in memory; the file is left as it is)."""
    version = data.get("schema_version", 1)
    if version == 1:
        data = dict(data)
        metrics = data.get("metrics") or {}
        if isinstance(metrics, dict) and isinstance(metrics.get("per_student"), list) and len(metrics["per_student"]) < 2 \
                and isinstance(metrics.get("std"), dict):
            metrics = {**metrics, "std": {k: None for k in metrics["std"]}}  # v1 wrote 0.0 for one student
            data["metrics"] = metrics
        data["notes"] = [*data.get("notes", []), "migrated from record schema 1"] \
            if isinstance(data.get("notes", []), list) else data.get("notes")
        data["schema_version"] = SCHEMA_VERSION
    return data


def parse_record(text: str, source: str) -> RunRecord:
    """Validate one record's JSON text; RecordError says what is wrong with it, naming ``source``."""
    if len(text) > MAX_RECORD_BYTES:
        raise RecordError(f"{source}: {len(text)} bytes, far larger than any run record; not read")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise RecordError(f"{source}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise RecordError(f"{source}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise RecordError(f"{source}: schema_version must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise RecordError(f"{source}: written by a newer mmdd-bench (record schema {version}, this one reads up to "
                          f"{SCHEMA_VERSION}); upgrade mmdd-bench to read it", newer=True)
    try:
        return _ADAPTER.validate_python(_migrate(data))
    except (pydantic.ValidationError, RecursionError) as exc:
        first = exc.errors()[0] if isinstance(exc, pydantic.ValidationError) else {"loc": (), "msg": "nested too deeply"}
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise RecordError(f"{source}: field {where}: {first['msg']}") from None


def load_record(path: Path) -> RunRecord:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not UTF-8 text") from None
    return parse_record(text, str(path))


def read_records(results_dir: Path) -> list[RunRecord]:
    """Every valid record; the others are skipped with a warning that names the file and the problem."""
    out = []
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        try:
            out.append(load_record(path))
        except (RecordError, OSError) as exc:
            warnings.warn(f"skipping run record: {exc}", stacklevel=2)
    return out


__all__ = ["SCHEMA_VERSION", "RecordError", "RecordSpec", "RunRecord", "atomic_write_text", "build_record",
           "canonical_id", "load_record", "parse_record", "read_records", "record_path", "schema_for", "utc_now"]
