"""Per-iteration wall time of a method's loop, with the first (warm-up) iteration kept apart.

On CUDA each tick synchronises, so a time belongs to the iteration that spent it. Cost comparisons
(``benchmarks/``) read ``s_per_iteration_steady``.

``part(name)`` additionally times named stretches of an iteration (say ``data`` and ``model``), so a
benchmark can tell the model's own compute from what the harness adds around it: whatever no part
covers is the loop's bookkeeping (checkpoints, progress, logging).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class IterationTimer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self.part_times: list[dict[str, float]] = []
        self._current: dict[str, float] = {}
        self._last = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._current[name] = self._current.get(name, 0.0) + time.perf_counter() - start

    def tick(self) -> None:
        self._sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self.part_times.append(self._current)
        self._current = {}
        self._last = now

    def summary(self) -> dict:
        if not self.times:
            return {"iterations_timed": 0}
        steady = self.times[1:] or self.times
        out: dict = {"iterations_timed": len(self.times), "s_per_iteration": round(sum(self.times) / len(self.times), 4),
                     "s_first_iteration": round(self.times[0], 4),
                     "s_per_iteration_steady": round(sum(steady) / len(steady), 4)}
        steady_parts = self.part_times[1:] or self.part_times
        names = sorted({name for parts in steady_parts for name in parts})
        if names:
            per_part = {name: sum(p.get(name, 0.0) for p in steady_parts) / len(steady_parts) for name in names}
            out["s_per_iteration_steady_parts"] = {
                **{name: round(v, 5) for name, v in per_part.items()},
                "other": round(max(sum(steady) / len(steady) - sum(per_part.values()), 0.0), 5),
            }
        return out
