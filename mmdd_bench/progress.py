"""How long loops report progress: ``(what, done, total)`` callbacks, shared by every layer.

Lower layers (data, encoders, methods, protocols, experts) call a ``ProgressFn``; only the command line
decides how it is shown (a live bar on a terminal, ``PlainProgress`` lines in a log file), so nothing below
it imports a user interface.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

ProgressFn = Callable[[str, int, int], None]  # (what, done, total)


def format_duration(seconds: float) -> str:
    """``3h05m``, ``4m10s``, ``12s``: short enough for one log line."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


@dataclass
class _Loop:
    started: float
    last_line: float
    first_done: int


@dataclass
class PlainProgress:
    """Progress for logs without a terminal (``nohup``, CI, SLURM): one plain line when a loop starts, then
    at most one every ``every_s`` seconds per loop, and one when it ends, each with what, done/total, the
    rate and the time left, e.g. ``covmatch N=100 seed=0: 120/10000 (1%), 3.41/s, ETA 48m16s``."""

    write: Callable[[str], None]
    every_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _loops: dict[str, _Loop] = field(default_factory=dict)

    def __call__(self, what: str, done: int, total: int) -> None:
        now = self.clock()
        loop = self._loops.get(what)
        if loop is None:
            self._loops[what] = _Loop(now, now, done)
            self.write(f"{what}: started, {total} steps")
            if done < total:
                return
            loop = self._loops[what]
        finished = total > 0 and done >= total
        if not finished and now - loop.last_line < self.every_s:
            return
        loop.last_line = now
        elapsed = now - loop.started
        steps = done - loop.first_done
        rate = steps / elapsed if elapsed > 0 and steps > 0 else None
        pct = f" ({100 * done / total:.0f}%)" if total > 0 else ""
        if finished:
            self._loops.pop(what)
            self.write(f"{what}: done, {done}/{total} in {format_duration(elapsed)}"
                       + (f", {rate:.3g}/s" if rate else ""))
            return
        eta = f", ETA {format_duration((total - done) / rate)}" if rate else ""
        self.write(f"{what}: {done}/{total}{pct}" + (f", {rate:.3g}/s" if rate else "") + eta)


__all__ = ["PlainProgress", "ProgressFn", "format_duration"]
