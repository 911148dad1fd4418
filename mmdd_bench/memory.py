"""Peak memory of a block of work: CUDA allocator peak on GPUs, sampled resident set size on CPUs."""

from __future__ import annotations

import os
import resource
import threading

import torch


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.result()`` in MiB."""

    def __init__(self, device: torch.device, interval_s: float = 0.05) -> None:
        self.device = device
        self.interval_s = interval_s
        self._peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        self._base = _rss_bytes()
        self._peak = self._base
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())

    def result(self) -> dict[str, float]:
        out = {"rss_peak": self._peak / 2**20, "rss_growth": (self._peak - self._base) / 2**20}
        if self.device.type == "cuda":
            out["cuda_peak"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return {k: round(v, 1) for k, v in out.items()}
