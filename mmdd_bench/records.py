"""Run records: one JSON file per (distilled set, protocol) evaluation, written atomically.

Identity is a hash of the canonical spec (what was asked for), so a rerun finds its own record and
skips it, and two identical requests on different machines land on the same file name.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

SCHEMA_VERSION = 1


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


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    import torch

    from . import __version__

    return {"mmdd_bench": __version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "git_sha": _git_sha()}


@dataclass
class RunRecord:
    run_id: str
    distill_id: str
    status: str  # "ok" | "failed"
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
    variant: str = ""  # the user's --set overrides of the method's published defaults, e.g. "lam=0.0"
    eval_variant: str = ""  # the user's --set eval.* overrides, e.g. "epochs=2"
    n_pairs: int | None = None
    storage_bytes: int | None = None
    eval_seeds: list[int] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # {"mean": {...}, "std": {...}, "per_student": [...]}
    selected_epochs: list[int] = field(default_factory=list)
    eval_lrs: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # distill_s, eval_s, distill_iterations, s_per_iteration
    peak_memory_mb: dict = field(default_factory=dict)
    device: str = ""
    artifact: str | None = None
    versions: dict = field(default_factory=dict)
    started_utc: str = ""
    finished_utc: str = ""
    error: str | None = None
    debug: bool = False  # ran under the harness's debugging limits: kept out of leaderboards
    schema_version: int = SCHEMA_VERSION

    def save(self, results_dir: Path) -> Path:
        path = record_path(results_dir, self.run_id)
        atomic_write_text(path, json.dumps(asdict(self), indent=1, sort_keys=False))
        return path


def record_path(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / "runs" / f"{run_id}.json"


def load_record(path: Path) -> RunRecord:
    data = json.loads(Path(path).read_text())
    return RunRecord(**data)


def read_records(results_dir: Path) -> list[RunRecord]:
    """Every readable record; corrupt or foreign files are skipped with a warning naming them."""
    out = []
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        try:
            out.append(load_record(path))
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError, OSError) as exc:
            warnings.warn(f"skipping unreadable run record {path}: {exc}", stacklevel=2)
    return out
