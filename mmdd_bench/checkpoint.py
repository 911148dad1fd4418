"""Checkpoints inside a cell: tensors as safetensors + small JSON state, written atomically (a folder
renamed into place), never pickle. A long distillation saves every K iterations and resumes from the
last one; an uninterrupted run and a killed-and-resumed run give the same result for the same seed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write into a fresh hidden folder (tensors, then ``state.json`` last: a folder with a state is
    complete), then swap it in. A kill at any point leaves at least one complete checkpoint, which
    ``load_checkpoint`` finds again."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new.", dir=folder.parent))
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


def _complete(folder: Path) -> dict | None:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and (folder / "tensors.safetensors").is_file() else None


def is_complete(folder: Path) -> bool:
    return _complete(folder) is not None


def _recover(folder: Path) -> None:
    """After a kill inside the swap there is no ``folder`` but a complete old and/or new hidden one: put the
    most advanced complete one back in place."""
    candidates = [p for p in folder.parent.glob(f".{folder.name}.*") if p.is_dir() and _complete(p) is not None]
    if candidates:
        best = max(candidates, key=lambda p: _complete(p).get("iteration", -1))
        os.replace(best, folder)


def load_checkpoint(folder: Path | None) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The last complete checkpoint, or None. One that cannot be read is moved aside (``.bad-<time>``) with
    a warning naming it, and the distillation starts over, instead of failing on every retry."""
    if folder is None:
        return None
    if _complete(folder) is None:
        _recover(folder)
    state = _complete(folder)
    if state is None:
        return None
    try:
        return load_file(str(folder / "tensors.safetensors")), state
    except (SafetensorError, OSError) as exc:
        bad = folder.with_name(f".{folder.name}.bad-{int(time.time())}")
        os.replace(folder, bad)
        warnings.warn(f"checkpoint {folder} is unreadable ({exc}); moved it to {bad.name}, starting over", stacklevel=2)
        return None


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
    """``{"momentum.NAME": buffer}`` for each named (optimizer, parameter): what an SGD resume needs. SGD
    without momentum keeps no buffer, and then there is nothing to save."""
    out = {}
    for name, (opt, param) in buffers.items():
        buffer = opt.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            out[f"momentum.{name}"] = buffer
    return out


def restore_momentum(tensors: dict[str, torch.Tensor], buffers: dict[str, tuple[torch.optim.Optimizer, torch.Tensor]],
                     device: torch.device) -> None:
    for name, (opt, param) in buffers.items():
        if f"momentum.{name}" in tensors:
            opt.state[param]["momentum_buffer"] = tensors[f"momentum.{name}"].to(device)


Buffers = dict[str, tuple[torch.optim.Optimizer, torch.Tensor]]


def save_loop_state(folder: Path, learned: dict[str, torch.Tensor], momentum: Buffers, generator: torch.Generator,
                    rng, device: torch.device, iteration: int, losses: list[float]) -> None:
    """What a distillation loop needs to resume exactly: its learned tensors, their momentum buffers, both
    random generators, the iteration and the loss log (the methods' shared checkpoint layout)."""
    save_checkpoint(folder, {**learned, **momentum_tensors(momentum), **rng_tensors(generator, device)},
                    {"iteration": iteration, "losses": losses, "numpy_rng": rng.bit_generator.state})


def resume_loop_state(folder: Path | None, learned: dict[str, torch.Tensor], momentum: Buffers,
                      generator: torch.Generator, rng, device: torch.device) -> tuple[int, list[float]]:
    """Restore what ``save_loop_state`` wrote, in place; (first iteration, loss log), or (0, []) without one."""
    resumed = load_checkpoint(folder)
    if resumed is None:
        return 0, []
    tensors, state = resumed
    with torch.no_grad():
        for name, t in learned.items():
            t.copy_(tensors[name].to(device))
    restore_momentum(tensors, momentum, device)
    restore_rng(tensors, generator, device)
    rng.bit_generator.state = state["numpy_rng"]
    return state["iteration"], state["losses"]
