"""Per-iteration wall time of a method's loop, with the first (warm-up) iteration kept apart.

On CUDA each tick synchronises, so a time belongs to the iteration that spent it. Cost comparisons
(``benchmarks/``) read ``s_per_iteration_steady``.
"""

from __future__ import annotations

import time

import torch


class IterationTimer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self._last = time.perf_counter()

    def tick(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now

    def summary(self) -> dict[str, float | int]:
        if not self.times:
            return {"iterations_timed": 0}
        steady = self.times[1:] or self.times
        return {"iterations_timed": len(self.times), "s_per_iteration": round(sum(self.times) / len(self.times), 4),
                "s_first_iteration": round(self.times[0], 4),
                "s_per_iteration_steady": round(sum(steady) / len(steady), 4)}
