"""Where a result came from, as lm-evaluation-harness records it: package versions, the device and its
numerics flags, the code's git state and the exact command line.

Package versions come from ``importlib.metadata`` (the installed distributions, not ``__version__``
strings), device facts from ``torch.utils.collect_env`` and torch's own queries. The static part is
gathered once per process.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

# Distributions whose versions can change a number (or the way it was computed).
PACKAGES = ("mmdd-bench", "torch", "torchvision", "timm", "transformers", "open_clip_torch", "numpy", "scipy",
            "safetensors", "pillow", "pandas", "tokenizers")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def versions() -> dict:
    """Installed versions of the packages that make a result, Python, the platform and the git state."""
    import torch

    out: dict = {}
    for name in PACKAGES:
        try:
            out[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name.replace("-", "_")] = None
    out["torch"] = torch.__version__  # includes the build (+cpu, +cu128), which metadata may not
    out["python"] = sys.version.split()[0]
    out["platform"] = platform.platform()
    sha = _git("rev-parse", "HEAD")
    out["git_sha"] = sha.strip() if sha else None
    # Dirty means the *code* differs from the commit: the committed results folder (records being regenerated)
    # is data, not code, so changes there do not count.
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)results") if sha else None
    out["git_dirty"] = None if status is None else bool(status.strip())
    return out


@functools.lru_cache(maxsize=1)
def _cuda_facts() -> dict:
    from torch.utils import collect_env

    run = collect_env.run
    return {"cuda_runtime": collect_env.get_running_cuda_version(run),
            "nvidia_driver": collect_env.get_nvidia_driver_version(run),
            "cudnn": collect_env.get_cudnn_version(run)}


def _cpu_model() -> str:
    """The CPU's name as the OS reports it (``platform.processor`` is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    """The device a result ran on and the flags that change its numerics (TF32, determinism)."""
    import torch

    env: dict = {"device": str(device), "torch_threads": torch.get_num_threads(),
                 "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                 "cudnn_deterministic": torch.backends.cudnn.deterministic,
                 "cudnn_benchmark": torch.backends.cudnn.benchmark,
                 "cuda_compiled": torch.version.cuda, "cpu": platform.processor() or platform.machine(),
                 # Which kernels torch's CPU ops dispatch to (AVX2, AVX512, ...) and the CPU they ran on: the same
                 # seed on two CPUs can give different floats, and chaotic loops (trajectory matching) amplify them.
                 "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_model": _cpu_model()}
    if torch.cuda.is_available():
        index = torch.device(device).index if torch.device(device).type == "cuda" else None
        env.update({"gpu": torch.cuda.get_device_name(index if index is not None else torch.cuda.current_device()),
                    "gpu_count": torch.cuda.device_count(),
                    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                    "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                    "cudnn_version": torch.backends.cudnn.version(), **_cuda_facts()})
    else:
        env["gpu_count"] = 0
    return env


def command() -> list[str]:
    """The exact command line of this process."""
    return list(sys.argv)


__all__ = ["command", "environment", "versions"]
