"""Expert trajectories for trajectory matching (MTT-VL): models trained on real data, snapshotted per epoch.

An expert is the frozen-text model (image encoder and text projection trainable, text encoder frozen) trained
with plain SGD on the real training pairs. After every epoch its *trainable* parameters are saved, and
nothing else: no frozen text encoder, no buffers, no optimiser state (SGD without momentum has none),
optionally in half precision. That is all that matching reads.

On real datasets the experts see the papers' train augmentation (``data.real_batches.RealBatches``: crops
of the originals, flip, RandomAugment(2, 5)), drawn from each expert's own seeded generator, with the next
batches prepared while one trains; the embedded datasets are never augmented.

Trajectories are content-addressed: the folder name hashes the training split, the backbone and its
weights, the image size, the expert settings, the seed, ``EXPERTS_CODE_VERSION`` and, on real datasets,
the augmentation's version. A trajectory is a
prefix: snapshot ``e`` does not depend on how many epochs follow it, so the epoch count is not in the key,
a run that needs 3 epochs reuses experts trained for 10, and an expert trained for 3 can be extended.

Layout under ``<cache>/trajectories/<key>/``::

    settings.json                      what the key hashes (for people and ``cache du``)
    expert_003/epoch_002.safetensors   the trainable parameters after epoch 2 (epoch_000 = the start)
    expert_003/resume_002.safetensors  RNG state after epoch 2 (and fp32 parameters if snapshots are half
                                       precision): one per epoch until the next state.json is written
    expert_003/state.json              {"epochs_done": 2, ...}: written last, so a kill never lies
    expert_003.lock                    one process trains an expert; others train the next one

Several processes (or machines sharing the cache) can train one set of experts together: each takes the
experts nobody holds and then waits for the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file, save_file

from .checkpoint import restore_rng, rng_tensors
from .data.augment import augment_identity
from .data.images import ImageStore
from .data.real_batches import RealBatches
from .data.splits import Dataset, TrainSplit
from .encoders.backbone import Backbone
from .encoders.heads import DualEncoder, contrastive_loss
from .errors import UsageError
from .features import train_features

EXPERTS_CODE_VERSION = "1"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOWERS = ("image_encoder", "text_head")  # the parts of the frozen-text model that train


@dataclass(frozen=True)
class ExpertSettings:
    """How experts train (published: SGD lr 0.1, no momentum, batch 128) and how they are stored."""

    lr: float = 0.1
    batch_size: int = 128
    momentum: float = 0.0
    weight_decay: float = 0.0
    storage_dtype: str = "float32"
    seed: int = 0

    def validate(self) -> None:
        if self.storage_dtype not in STORAGE_DTYPES:
            raise UsageError(f"expert storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {self.storage_dtype!r}")
        if self.lr <= 0 or self.batch_size < 1:
            raise UsageError(f"expert lr must be > 0 and batch size >= 1, got {self.lr} and {self.batch_size}")
        if self.momentum:  # a momentum buffer would need saving too; the published experts use none
            raise UsageError("expert momentum must be 0: resumable experts keep no optimiser state (published: 0)")

    def expert_seed(self, index: int) -> int:
        return self.seed * 100_003 + index


def trainable_parameters(model: DualEncoder) -> dict[str, torch.Tensor]:
    """Named trainable parameters of the frozen-text model, keyed ``<tower>.<name>``."""
    out = {}
    for tower in TOWERS:
        for name, p in getattr(model, tower).named_parameters():
            if p.requires_grad:
                out[f"{tower}.{name}"] = p
    return out


def split_towers(params: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_encoder.x": t}`` -> ``{"image_encoder": {"x": t}, "text_head": {...}}``."""
    towers: dict[str, dict[str, torch.Tensor]] = {t: {} for t in TOWERS}
    for key, value in params.items():
        tower, _, name = key.partition(".")
        towers[tower][name] = value
    return towers


# Called after every real batch's forward pass, before the step: (pair indices, projected image features,
# projected text features), the features detached.
BatchCallback = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def train_real_epoch(model: DualEncoder, opt: torch.optim.Optimizer, text: torch.Tensor, train: TrainSplit,
                     real_images: RealBatches, batch_size: int, gen: torch.Generator, device: torch.device,
                     what: str, on_batch: BatchCallback | None = None,
                     progress: Callable[[int, int], None] | None = None) -> None:
    """One epoch of the frozen-text model on the real pairs (shuffled by ``gen``, the last batch kept), with
    the experts' loss and augmentation: the recipe experts and ``forgetting``'s statistics share. ``text``
    holds the frozen encoder's features of every pair; the epoch's real batches are prepared ahead."""
    model.train()
    model.text_encoder.eval()
    batches = torch.randperm(train.n_pairs, generator=gen).split(batch_size)
    steps = len(batches)
    reals = real_images.stream([idx.numpy() for idx in batches], gen)
    for step, (idx, real) in enumerate(zip(batches, reals, strict=True), 1):
        _, g_img = model.image_features(real)
        g_txt = model.text_head(text[idx.to(device)])
        loss = contrastive_loss(g_img, g_txt)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{what}: loss became {loss.item()}; lower the lr")
        if on_batch is not None:
            on_batch(idx, g_img.detach(), g_txt.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step % 20 == 0 or step == steps):
            progress(step, steps)


class ExpertStore:
    """The trajectories of one (training split, backbone, settings): read snapshots, train missing ones."""

    def __init__(self, cache_dir: Path, dataset: Dataset, backbone: Backbone, settings: ExpertSettings) -> None:
        settings.validate()
        self.settings = settings
        self.identity = {"train": dataset.train.fingerprint, "dataset": dataset.name,
                         "backbone": backbone.text_encoder_id, "image_size": backbone.image_size,
                         "settings": asdict(settings), "code_version": EXPERTS_CODE_VERSION}
        augment = augment_identity(dataset)
        if augment is not None:  # only when it augments, so un-augmented caches keep their keys
            self.identity["augment"] = augment
        key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.cache_dir = Path(cache_dir)
        self.root = self.cache_dir / "trajectories" / key

    # ---- reading ------------------------------------------------------------------------------------
    def expert_dir(self, index: int) -> Path:
        return self.root / f"expert_{index:03d}"

    def epochs_done(self, index: int) -> int:
        """Completed epochs of expert ``index`` (-1: not even the starting point saved)."""
        state = self.expert_dir(index) / "state.json"
        return json.loads(state.read_text())["epochs_done"] if state.is_file() else -1

    def snapshot(self, index: int, epoch: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The trainable parameters of expert ``index`` after ``epoch`` epochs, as float32."""
        path = self.expert_dir(index) / f"epoch_{epoch:03d}.safetensors"
        return {k: v.to(device=device, dtype=torch.float32) for k, v in load_file(str(path)).items()}

    def bytes_per_expert(self, index: int) -> int:
        return sum(p.stat().st_size for p in self.expert_dir(index).glob("epoch_*.safetensors"))

    def summary(self, num_experts: int) -> dict:
        sizes = [self.bytes_per_expert(i) for i in range(num_experts)]
        return {"path": str(self.root), "num_experts": num_experts,
                "epochs": [self.epochs_done(i) for i in range(num_experts)],
                "storage_dtype": self.settings.storage_dtype,
                "bytes_per_expert": int(np.mean(sizes)) if sizes else 0, "bytes_total": int(sum(sizes))}

    # ---- training -----------------------------------------------------------------------------------
    def ensure(self, num_experts: int, epochs: int, dataset: Dataset, backbone: Backbone, images: ImageStore,
               device: torch.device, progress: Callable[[str, int, int], None] | None = None,
               log: Callable[[str], None] = lambda s: None) -> dict:
        """Make experts 0..num_experts-1 reach ``epochs`` epochs, training only what is missing.

        Experts another process holds are skipped on a first pass and waited for on a second one.
        Returns ``summary`` plus the seconds spent training here.
        """
        if num_experts < 1 or epochs < 1:
            raise UsageError(f"need at least 1 expert and 1 epoch, got {num_experts} experts x {epochs} epochs")
        self.root.mkdir(parents=True, exist_ok=True)
        settings_file = self.root / "settings.json"
        if not settings_file.is_file():
            tmp = settings_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.identity, indent=1))
            os.replace(tmp, settings_file)
        trained_s = 0.0
        waiting = []
        for index in range(num_experts):
            if self.epochs_done(index) >= epochs:
                continue
            lock = FileLock(str(self.root / f"expert_{index:03d}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                waiting.append(index)
                continue
            try:
                trained_s += self._train(index, epochs, dataset, backbone, images, device, progress, log)
            finally:
                lock.release()
        for index in waiting:
            log(f"  waiting for expert {index}, which another process is training")
            with FileLock(str(self.root / f"expert_{index:03d}.lock")):
                if self.epochs_done(index) < epochs:
                    trained_s += self._train(index, epochs, dataset, backbone, images, device, progress, log)
        return {**self.summary(num_experts), "train_s": round(trained_s, 3)}

    def _train(self, index: int, epochs: int, dataset: Dataset, backbone: Backbone, images: ImageStore,
               device: torch.device, progress: Callable[[str, int, int], None] | None,
               log: Callable[[str], None]) -> float:
        s = self.settings
        folder = self.expert_dir(index)
        folder.mkdir(parents=True, exist_ok=True)
        seed = s.expert_seed(index)
        done = self.epochs_done(index)
        log(f"  expert {index}: epochs {max(done, 0)} -> {epochs}" + (" (resuming)" if done > 0 else ""))
        _, text = train_features(dataset.train, images, backbone, device, self.cache_dir)
        text = text.to(device)
        train = dataset.train
        # Real images, augmented on real datasets with draws from `gen` (see mmdd_bench.data.real_batches).
        real_images = RealBatches(dataset, self.cache_dir, device, backbone.image_size, backbone.mean, backbone.std)
        model = backbone.dual_encoder(text_trainable=False, image_head=False, seed=seed, device=device)
        params = trainable_parameters(model)
        gen = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)  # dropout
            if done >= 0:
                self._restore(index, done, params, gen, device)
            else:
                self._save_epoch(index, 0, params, gen, device)
                done = 0
            opt = torch.optim.SGD(list(params.values()), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
            for epoch in range(done + 1, epochs + 1):
                train_real_epoch(model, opt, text, train, real_images, s.batch_size, gen, device,
                                 f"expert {index} (epoch {epoch})",
                                 progress=(lambda d, t, e=epoch: progress(f"expert {index} epoch {e}/{epochs}", d, t))
                                 if progress else None)
                self._save_epoch(index, epoch, params, gen, device)
        real_images.close()
        return time.perf_counter() - start

    def _save_epoch(self, index: int, epoch: int, params: dict[str, torch.Tensor], gen: torch.Generator,
                    device: torch.device) -> None:
        """The snapshot, then this epoch's resume state (its own file), then ``state.json``, then the previous
        epoch's resume state is dropped: a kill anywhere leaves a state whose resume file is its own epoch's,
        so a resumed expert is the uninterrupted one."""
        folder = self.expert_dir(index)
        dtype = STORAGE_DTYPES[self.settings.storage_dtype]
        _atomic_save({k: v.detach().to("cpu", dtype) for k, v in params.items()}, folder / f"epoch_{epoch:03d}.safetensors")
        resume = rng_tensors(gen, device)
        if dtype != torch.float32:  # resuming from a rounded snapshot would not equal an uninterrupted run
            resume.update({f"param.{k}": v.detach().cpu() for k, v in params.items()})
        _atomic_save(resume, self._resume_path(index, epoch))
        state = folder / "state.json"
        tmp = state.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"epochs_done": epoch, "seed": self.settings.expert_seed(index)}))
        os.replace(tmp, state)
        for old in folder.glob("resume*.safetensors"):
            if old != self._resume_path(index, epoch):
                old.unlink(missing_ok=True)

    def _resume_path(self, index: int, epoch: int) -> Path:
        return self.expert_dir(index) / f"resume_{epoch:03d}.safetensors"

    def _restore(self, index: int, epoch: int, params: dict[str, torch.Tensor], gen: torch.Generator,
                 device: torch.device) -> None:
        path = self._resume_path(index, epoch)
        if not path.is_file():  # written by the layout before per-epoch resume files
            path = self.expert_dir(index) / "resume.safetensors"
        resume = load_file(str(path))
        saved = ({k.removeprefix("param."): v for k, v in resume.items() if k.startswith("param.")}
                 or self.snapshot(index, epoch))
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k].to(device))
        restore_rng(resume, gen, device)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


__all__ = ["EXPERTS_CODE_VERSION", "BatchCallback", "ExpertSettings", "ExpertStore", "split_towers",
           "train_real_epoch", "trainable_parameters"]
