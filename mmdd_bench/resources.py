"""What a run loads once and shares across its cells: datasets, backbones and the device.

The device follows the process's place in a job: under torchrun or SLURM each local rank takes its own GPU
(``cuda:LOCAL_RANK`` / ``cuda:SLURM_LOCALID``) and makes it current, so ranks never share one device.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from .data import load_dataset
from .data.splits import Dataset
from .encoders import BackboneSpec, build_backbone, describe_backbone
from .encoders.backbone import Backbone
from .errors import UsageError
from .progress import ProgressFn

LOCAL_RANK_VARIABLES = ("LOCAL_RANK", "SLURM_LOCALID")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer; unset it or fix the launcher") from None


def local_rank() -> int | None:
    """This process's rank on its machine under torchrun (LOCAL_RANK) or SLURM (SLURM_LOCALID), else None."""
    for name in LOCAL_RANK_VARIABLES:
        value = _env_int(name)
        if value is not None:
            if value < 0:
                raise UsageError(f"environment variable {name}={value} must be >= 0")
            return value
    return None


def shard_from_environment() -> tuple[int, int]:
    """(rank, world size) under torchrun (RANK/WORLD_SIZE) or SLURM (SLURM_PROCID/SLURM_NTASKS); (0, 1) alone."""
    for rank_var, size_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_var in os.environ and size_var in os.environ:
            rank, size = _env_int(rank_var), _env_int(size_var)
            assert rank is not None and size is not None
            if size < 1 or not 0 <= rank < size:
                raise UsageError(f"{rank_var}={rank} is outside 0..{size - 1} ({size_var}={size})")
            return rank, size
    return 0, 1


def resolve_device(name: str) -> torch.device:
    """``auto``: this rank's GPU when there is one, else the CPU; ``cuda`` under torchrun/SLURM: the local
    rank's GPU. A CUDA device is made current, so libraries that use "the current device" agree."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto.")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from exc
    if device.type == "cuda":
        if device.index is None:
            rank = local_rank() or 0
            count = torch.cuda.device_count()
            if rank >= count:
                raise UsageError(f"local rank {rank} has no GPU of its own: this machine has {count}; start at most "
                                 f"{count} processes per machine (torchrun --nproc-per-node {count})")
            device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    return device


def use_deterministic_algorithms() -> None:
    """``--deterministic``: torch's deterministic kernels (an error, not a silent fallback, where an operation
    has none), cuDNN without autotuning, and the cuBLAS workspace setting deterministic GEMMs need. On a CPU
    runs are bit-identical without it; on a GPU a resumed or repeated run is bit-identical only with it."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


class Resources:
    """Datasets and backbones of one run, each loaded on first use and then shared by every cell."""

    def __init__(self, data_root: str | None, cache_dir: Path, backbone: str | None = None,
                 log: Callable[[str], None] = lambda s: None, progress: ProgressFn | None = None) -> None:
        self.data_root = data_root
        self.progress = progress  # dataset generation and backbone preparation report here
        self.cache_dir = Path(cache_dir)
        self.backbone_override = backbone
        self.log = log
        self._datasets: dict[str, Dataset] = {}
        self._backbones: dict[str, Backbone] = {}
        self._specs: dict[str, BackboneSpec] = {}

    def dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            self._datasets[name] = load_dataset(name, self.data_root, self.cache_dir, self.progress)
        return self._datasets[name]

    def backbone_name(self, dataset: Dataset) -> str:
        return self.backbone_override or dataset.default_backbone

    def backbone(self, name: str) -> Backbone:
        """The backbone itself (models loaded): only where a cell distils or evaluates."""
        if name not in self._backbones:
            self.log(f"building backbone {name!r}")
            built = build_backbone(name, self.cache_dir, progress=self.progress)
            spec = self.spec(name)
            if built.weights_id != spec.weights_id:  # one definition of identity, or records would lie
                raise RuntimeError(f"backbone {name!r} built with weights {built.weights_id}, planned as {spec.weights_id}")
            self._backbones[name] = built
        return self._backbones[name]

    def spec(self, name: str) -> BackboneSpec:
        """The backbone's identity and defaults (no model loaded): what planning needs."""
        if name not in self._specs:
            self._specs[name] = describe_backbone(name, self.cache_dir, progress=self.progress)
        return self._specs[name]

    def spec_for(self, dataset: Dataset) -> BackboneSpec:
        return self.spec(self.backbone_name(dataset))

    def backbone_for(self, dataset: Dataset) -> Backbone:
        return self.backbone(self.backbone_name(dataset))


__all__ = ["Resources", "local_rank", "resolve_device", "shard_from_environment", "use_deterministic_algorithms"]
