"""The results folder: where records, distilled sets, checkpoints and locks live, and the only code that
names paths inside it.

Every path is built from a hexadecimal id, so nothing read from a record or an artifact can steer a
write outside the folder. Records that cannot be read (corrupt, foreign, written by a newer version) are
never overwritten. Temporary files left by a killed process are removed on the next run, once they are
old enough that no live writer can own them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .errors import UsageError
from .locks import DEFAULT_EXPIRY_S, HeartbeatLock, LockInfo, PairedLock, held_locks
from .records import RecordError, RunRecord, load_record

HEX_ID = re.compile(r"^[0-9a-f]{16}$")
ORPHAN_AGE_S = 3600.0  # a temporary file this old belongs to no live writer (writes take seconds)


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not HEX_ID.match(value):
        raise ValueError(f"{what} {value!r} is not a 16-digit hexadecimal id")
    return value


@dataclass
class RecordState:
    """What ``runs/<id>.json`` holds: ``missing``, ``ok``, ``failed``, ``unreadable`` or ``newer``."""

    state: str
    record: RunRecord | None = None
    problem: str | None = None

    @property
    def writable(self) -> bool:
        """Whether a new record may replace this one (never one we cannot read)."""
        return self.state in ("missing", "ok", "failed")


class ResultsStore:
    def __init__(self, results_dir: Path) -> None:
        self.root = Path(results_dir).expanduser().absolute()
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--results {self.root} is a file, not a folder; pass a folder (it is created if missing)")

    def check_writable(self) -> None:
        """Before any work: the folder exists (or can be made) and takes files."""
        try:
            self.runs.mkdir(parents=True, exist_ok=True)
            probe = self.runs / f".write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"cannot write to the results folder {self.root} ({exc.strerror or exc}); pass a writable "
                             "--results folder") from None

    # ---- paths -------------------------------------------------------------------------------------
    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def record_path(self, run_id: str) -> Path:
        return self.runs / f"{check_id(run_id, 'run id')}.json"

    def artifact_path(self, distill_id: str) -> Path:
        return self.root / "artifacts" / check_id(distill_id, "distillation id")

    def artifact_relpath(self, distill_id: str) -> str:
        return str(self.artifact_path(distill_id).relative_to(self.root))

    def checkpoint_dir(self, distill_id: str) -> Path:
        return self.root / "checkpoints" / check_id(distill_id, "distillation id")

    def lock(self, key: str, kind: str, what: str = "", expiry_s: float = DEFAULT_EXPIRY_S) -> PairedLock:
        """``kind`` is ``eval`` (one evaluation) or ``distill`` (one distilled set): an flock on
        ``locks/<id>.<kind>.lock`` and, beside it, the heartbeat file ``<id>.<kind>.held`` that says who
        holds it and keeps the lock exclusive across the hosts of a shared filesystem (``locks.py``)."""
        folder = self.root / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{check_id(key)}.{kind}"
        return PairedLock(FileLock(str(folder / f"{name}.lock")),
                          HeartbeatLock(folder / f"{name}.held", what=what, expiry_s=expiry_s))

    def claim(self, key: str, what: str = "", expiry_s: float = DEFAULT_EXPIRY_S) -> HeartbeatLock:
        """A worker's claim on a cell (``mmdd-bench submit``): heartbeat only, so it holds across hosts."""
        folder = self.root / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        return HeartbeatLock(folder / f"{check_id(key)}.claim", what=what, expiry_s=expiry_s)

    def held(self) -> list[LockInfo]:
        """Every held lock and claim in the folder (stale ones marked): who runs what, for ``status``."""
        folder = self.root / "locks"
        return [*held_locks(folder, "*.held"), *held_locks(folder, "*.claim")] if folder.is_dir() else []

    # ---- records -----------------------------------------------------------------------------------
    def record_state(self, run_id: str) -> RecordState:
        path = self.record_path(run_id)
        if not path.is_file():
            return RecordState("missing")
        try:
            rec = load_record(path)
        except RecordError as exc:
            return RecordState("newer" if exc.newer else "unreadable", problem=str(exc))
        except OSError as exc:
            return RecordState("unreadable", problem=f"{path}: {exc}")
        return RecordState(rec.status, rec)

    def write_record(self, record: RunRecord) -> Path:
        state = self.record_state(record.run_id)
        if not state.writable:
            raise UsageError(f"not overwriting {self.record_path(record.run_id)}: {state.problem}. Move it away to rerun "
                             "this evaluation.")
        return record.save(self.root)

    # ---- checkpoints and leftovers -----------------------------------------------------------------
    def clear_checkpoint(self, distill_id: str) -> None:
        shutil.rmtree(self.checkpoint_dir(distill_id), ignore_errors=True)

    def move_aside(self, path: Path, reason: str) -> Path:
        """Keep a bad file for inspection, out of the way of the run that replaces it."""
        target = path.with_name(f"{path.name}.bad-{int(time.time())}")
        os.replace(path, target)
        warnings.warn(f"{path}: {reason}; moved it to {target.name} and recomputing", stacklevel=2)
        return target

    def remove_orphans(self, max_age_s: float = ORPHAN_AGE_S) -> list[Path]:
        """Temporary files of writers that died (kill -9, power loss): records (``runs/.X.json.*.tmp``) and
        artifacts (``artifacts/X.*.tmpPID``), once old enough that no live writer owns them; and checkpoint
        swap leftovers (``checkpoints/.X.*``) once ``X`` itself is complete (before that they are what
        ``load_checkpoint`` recovers from)."""
        from .checkpoint import is_complete

        now = time.time()
        removed = []
        stale = [*self.runs.glob(".*.tmp"), *(self.root / "artifacts").glob("*.tmp*")]
        for path in stale:
            try:
                if now - path.stat().st_mtime >= max_age_s:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue
        for path in (self.root / "checkpoints").glob(".*"):
            owner = path.parent / path.name[1:].split(".", 1)[0]
            if is_complete(owner) and now - path.stat().st_mtime >= max_age_s:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed


__all__ = ["HEX_ID", "RecordState", "ResultsStore", "check_id"]
