"""Per-iteration wall time of a method's loop, with the first (warm-up) iteration kept apart.

``part(name)`` additionally times named stretches of an iteration (say ``data`` and ``model``), so a
benchmark can tell the model's own compute from what the harness adds around it: whatever no part covers
is the loop's bookkeeping (checkpoints, progress, logging).

On CUDA nothing here synchronises the device inside the loop: every boundary records a CUDA event, and
``summary()`` synchronises once and reads the elapsed times between events. So timing costs the hot loop
no stalls (it used to synchronise at every part boundary, 7 times per CovMatch iteration), and a time
still belongs to the iteration that spent it. On the CPU the clock is read directly. Cost comparisons
(``benchmarks/``) read ``s_per_iteration_steady``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class IterationTimer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        # One mark per iteration boundary; per iteration, (name, start mark, end mark) for each part.
        self._marks: list = [self._mark()]
        self._parts: list[list[tuple[str, object, object]]] = []
        self._current: list[tuple[str, object, object]] = []

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _elapsed(self, start, end) -> float:
        return start.elapsed_time(end) / 1000.0 if self.cuda else end - start

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = self._mark()
        try:
            yield
        finally:
            self._current.append((name, start, self._mark()))

    def tick(self) -> None:
        self._marks.append(self._mark())
        self._parts.append(self._current)
        self._current = []

    @property
    def times(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return [self._elapsed(a, b) for a, b in zip(self._marks, self._marks[1:], strict=False)]

    def summary(self) -> dict:
        times = self.times  # synchronises once on CUDA
        if not times:
            return {"iterations_timed": 0}
        steady = times[1:] or times
        out: dict = {"iterations_timed": len(times), "s_per_iteration": round(sum(times) / len(times), 4),
                     "s_first_iteration": round(times[0], 4),
                     "s_per_iteration_steady": round(sum(steady) / len(steady), 4)}
        parts = [{} for _ in self._parts]
        for per_iteration, spans in zip(parts, self._parts, strict=True):
            for name, start, end in spans:
                per_iteration[name] = per_iteration.get(name, 0.0) + self._elapsed(start, end)
        steady_parts = parts[1:] or parts
        names = sorted({name for p in steady_parts for name in p})
        if names:
            per_part = {name: sum(p.get(name, 0.0) for p in steady_parts) / len(steady_parts) for name in names}
            out["s_per_iteration_steady_parts"] = {
                **{name: round(v, 5) for name, v in per_part.items()},
                "other": round(max(sum(steady) / len(steady) - sum(per_part.values()), 0.0), 5),
            }
        return out


class FiniteCheck:
    """Checks that a loss stays finite without a device synchronisation per iteration: the flag is
    accumulated on the device and read every ``every`` iterations (and at the end), so a blow-up is caught
    within ``every`` iterations and named by the window it happened in."""

    def __init__(self, device: torch.device, every: int = 25) -> None:
        self.every = every if device.type == "cuda" else 1  # on the CPU a check costs no stall: check each time
        self._bad: torch.Tensor | None = None
        self._since = 0

    def update(self, loss: torch.Tensor, iteration: int, message: str) -> None:
        flag = ~torch.isfinite(loss.detach())
        self._bad = flag if self._bad is None else self._bad | flag
        if (iteration + 1) % self.every == 0:
            self.check(iteration, message)

    def check(self, iteration: int, message: str) -> None:
        if self._bad is not None and bool(self._bad):
            raise FloatingPointError(f"{message} (the loss became non-finite in iterations {self._since}..{iteration})")
        self._bad = None
        self._since = iteration + 1


__all__ = ["FiniteCheck", "IterationTimer"]
