"""Checkpoints inside a cell: tensors as safetensors + small JSON state, written atomically (a folder
renamed into place), never pickle. A long distillation saves every K iterations and resumes from the
last one; an uninterrupted run and a killed-and-resumed run give the same result for the same seed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], state: dict) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state))
        old = folder.with_name(f".{folder.name}.old{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(folder: Path | None) -> tuple[dict[str, torch.Tensor], dict] | None:
    if folder is None or not (folder / "state.json").is_file():
        return None
    return load_file(str(folder / "tensors.safetensors")), json.loads((folder / "state.json").read_text())


def rng_tensors(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    out = {"rng.generator": generator.get_state(), "rng.torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng.torch_cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(tensors: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if device.type == "cuda" and "rng.torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"], device)


def momentum_tensors(buffers: dict[str, tuple[torch.optim.Optimizer, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{"momentum.NAME": buffer}`` for each named (optimizer, parameter): what an SGD resume needs."""
    return {f"momentum.{name}": opt.state[param]["momentum_buffer"] for name, (opt, param) in buffers.items()}


def restore_momentum(tensors: dict[str, torch.Tensor], buffers: dict[str, tuple[torch.optim.Optimizer, torch.Tensor]],
                     device: torch.device) -> None:
    for name, (opt, param) in buffers.items():
        opt.state[param]["momentum_buffer"] = tensors[f"momentum.{name}"].to(device)
