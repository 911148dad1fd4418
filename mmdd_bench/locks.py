"""Locks that work on shared filesystems (NFS): a lock file created atomically, holding who holds it and a
heartbeat that a thread refreshes; a lock whose heartbeat is older than its expiry is stale and may be broken.

Why not ``fcntl``/``flock`` alone: on NFS those go through the lock daemon, which many clusters run badly
or not at all, and a lock of a node that died is never released. Here:

- **Taking** a lock creates ``path`` with ``O_CREAT | O_EXCL``, which NFSv3 and later perform atomically on
  the server, and writes JSON into it: ``host``, ``pid``, a random ``token``, what is held (``what``), the
  start time and ``heartbeat`` (a Unix time).
- **Holding** it: a daemon thread rewrites ``heartbeat`` every ``heartbeat_s`` seconds, after checking that
  the file still carries its token (if another process broke the lock, the thread stops and ``lost`` says so).
- **Breaking** a stale lock (heartbeat older than ``expiry_s``, or on this very host a holder whose process
  is gone) happens under a short-lived guard file (``path.break``, itself taken with ``O_EXCL``), and only
  if the file still holds the stale token that was read: two processes that both find a lock stale never
  both take it.
- **Clocks**: staleness compares the holder's heartbeat with the reader's clock, so the hosts' clocks must
  agree to well within ``expiry_s`` (NTP does); the defaults leave minutes of slack.

``release`` removes the file. A process killed with ``kill -9`` leaves its file behind: on the same host
(and PID namespace) it is broken at once, elsewhere after ``expiry_s``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import Timeout

DEFAULT_EXPIRY_S = 300.0  # a holder that has not beaten for 5 minutes is gone
HEARTBEAT_FRACTION = 0.2  # beat five times per expiry: a few missed beats never make a live lock stale
GUARD_EXPIRY_S = 30.0  # the break guard is held for milliseconds; one this old belongs to a dead breaker


class LockTimeout(Timeout):
    """A lock could not be taken in time (a ``filelock.Timeout``, so callers catch one type for every lock)."""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


HOST = socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclass
class LockInfo:
    """What a lock file says about its holder, and whether it is stale by the reader's clock."""

    path: Path
    host: str
    pid: int
    token: str
    what: str
    started: float
    heartbeat: float
    expiry_s: float
    pid_namespace: str = ""

    @property
    def age_s(self) -> float:
        """Seconds since the last heartbeat."""
        return max(0.0, time.time() - self.heartbeat)

    @property
    def local(self) -> bool:
        return self.host == HOST and self.pid_namespace == _pid_namespace()

    @property
    def stale(self) -> bool:
        if self.age_s > self.expiry_s:
            return True
        return self.local and self.pid > 0 and not _alive(self.pid)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "host": self.host, "pid": self.pid, "what": self.what,
                "started": self.started, "heartbeat_age_s": round(self.age_s, 1), "expiry_s": self.expiry_s,
                "stale": self.stale}


def read_lock(path: Path) -> LockInfo | None:
    """The holder of ``path``, or None when it is free. A file whose content cannot be read yet (being
    written) counts as held, with its modification time as the heartbeat."""
    path = Path(path)
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        data = json.loads(text)
        return LockInfo(path, str(data["host"]), int(data["pid"]), str(data["token"]), str(data.get("what", "")),
                        float(data["started"]), float(data["heartbeat"]), float(data["expiry_s"]),
                        str(data.get("pid_namespace", "")))
    except (ValueError, KeyError, TypeError):
        return LockInfo(path, "?", 0, "", "", mtime, mtime, DEFAULT_EXPIRY_S)


def _create_exclusive(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return True


class HeartbeatLock:
    """An exclusive lock on ``path`` for one process; not reentrant. ``acquire(timeout=0)`` tries once,
    ``timeout=-1`` waits for ever; it raises ``LockTimeout`` otherwise. Use as a context manager or pair
    ``acquire``/``release``."""

    def __init__(self, path: Path, *, what: str = "", expiry_s: float = DEFAULT_EXPIRY_S,
                 heartbeat_s: float | None = None, poll_s: float = 0.2) -> None:
        if expiry_s <= 0:
            raise ValueError(f"expiry_s must be > 0, got {expiry_s}")
        self.path = Path(path)
        self.what = what
        self.expiry_s = float(expiry_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s else self.expiry_s * HEARTBEAT_FRACTION
        self.poll_s = poll_s
        self.token = ""
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- taking and giving back ----------------------------------------------------------------------
    @property
    def is_locked(self) -> bool:
        return bool(self.token)

    def acquire(self, timeout: float = -1, poll_interval: float | None = None) -> HeartbeatLock:
        if self.token:
            raise RuntimeError(f"{self.path} is already held by this lock object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while True:
            if self._try_once():
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(str(self.path))
            time.sleep(poll_interval or self.poll_s)

    def release(self) -> None:
        if not self.token:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = read_lock(self.path)
        if held is not None and held.token == self.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.token = ""
        self._thread = None

    def __enter__(self) -> HeartbeatLock:
        if not self.token:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- internals -------------------------------------------------------------------------------------
    def _content(self, token: str, started: float) -> str:
        return json.dumps({"host": HOST, "pid": os.getpid(), "pid_namespace": _pid_namespace(), "token": token,
                           "what": self.what, "started": started, "heartbeat": time.time(),
                           "expiry_s": self.expiry_s})

    def _try_once(self) -> bool:
        token = secrets.token_hex(8)
        started = time.time()
        if not _create_exclusive(self.path, self._content(token, started)):
            held = read_lock(self.path)
            if held is None or not held.stale or not self._break(held):
                return False
            if not _create_exclusive(self.path, self._content(token, started)):
                return False  # another process took it between the break and our create
        self.token, self.lost = token, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(token, started), daemon=True,
                                        name=f"heartbeat {self.path.name}")
        self._thread.start()
        return True

    def _break(self, stale: LockInfo) -> bool:
        """Remove a stale lock file, under a guard, if it still holds the stale token that was read."""
        guard = self.path.with_name(self.path.name + ".break")
        if not _create_exclusive(guard, str(os.getpid())):
            try:
                if time.time() - guard.stat().st_mtime > GUARD_EXPIRY_S:
                    guard.unlink()  # its breaker died; the next attempt takes the guard
            except FileNotFoundError:
                pass
            return False
        try:
            again = read_lock(self.path)
            if again is None:
                return True
            if again.token != stale.token or again.heartbeat != stale.heartbeat or not again.stale:
                return False
            self.path.unlink()
            return True
        except FileNotFoundError:
            return True
        finally:
            guard.unlink(missing_ok=True)

    def _beat(self, token: str, started: float) -> None:
        while not self._stop.wait(self.heartbeat_s):
            held = read_lock(self.path)
            if held is None or held.token != token:
                self.lost = True  # broken by another process (we were too slow to beat): stop claiming it
                return
            try:
                with open(self.path, "r+") as fh:
                    fh.write(self._content(token, started))
                    fh.truncate()
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError:
                continue  # a transient filesystem error: try again at the next beat


class PairedLock:
    """The results folder's lock: an ``flock`` (``filelock.FileLock``, released by the kernel when its process
    dies, exact on a local disk) taken first, then a ``HeartbeatLock`` beside it (correct across the hosts of
    a shared filesystem, and the record of who holds it for ``mmdd-bench status``). Both or neither are held."""

    def __init__(self, local, shared: HeartbeatLock) -> None:
        self.local = local
        self.shared = shared

    @property
    def is_locked(self) -> bool:
        return self.shared.is_locked

    def acquire(self, timeout: float = -1) -> PairedLock:
        start = time.monotonic()
        self.local.acquire(timeout=timeout)
        try:
            left = timeout if timeout is None or timeout < 0 else max(0.0, timeout - (time.monotonic() - start))
            self.shared.acquire(timeout=left)
        except BaseException:
            self.local.release()
            raise
        return self

    def release(self) -> None:
        try:
            self.shared.release()
        finally:
            self.local.release()

    def __enter__(self) -> PairedLock:
        if not self.is_locked:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def held_locks(folder: Path, pattern: str = "*") -> list[LockInfo]:
    """Every lock file under ``folder`` matching ``pattern`` that is held (stale ones included, marked)."""
    out = []
    for path in sorted(Path(folder).glob(pattern)):
        info = read_lock(path)
        if info is not None:
            out.append(info)
    return out


__all__ = ["DEFAULT_EXPIRY_S", "HOST", "HeartbeatLock", "LockInfo", "LockTimeout", "PairedLock", "held_locks",
           "read_lock"]
