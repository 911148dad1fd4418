"""Plans the grid (dataset x method x size x seed, each evaluated under one or more protocols), runs each
cell, writes one record per evaluation, and resumes: finished records are skipped, saved distilled sets
are re-evaluated rather than distilled again."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from .data import load_dataset
from .data.augment import RealAugment
from .data.splits import Dataset
from .distilled import DistilledSet
from .encoders import build_backbone
from .encoders.backbone import Backbone
from .errors import MMDDError, UsageError
from .memory import PeakMemory
from .method import DistillContext, Method, get_method
from .params import apply_overrides, identity_dict
from .protocols import PROTOCOLS, get_protocol
from .records import RunRecord, canonical_id, load_record, record_path, utc_now, versions

EVAL_SCOPE = "eval"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from exc


@dataclass
class RunConfig:
    methods: list[str]
    datasets: list[str]
    sizes: list[int]
    seeds: list[int]
    results_dir: Path
    cache_dir: Path
    backbone: str | None = None
    protocols: list[str] = field(default_factory=lambda: ["auto"])
    data_root: str | None = None
    device: str = "auto"
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    force: bool = False
    retry_failed: bool = False  # run only cells whose last record failed
    debug: bool = False  # smoke run under DEBUG_LIMITS: recorded, but never in a leaderboard


# A debugging run: a few iterations, one expert, one short student. Applied to whichever of these fields a
# method's (or the protocol's) parameters have; the records say ``debug`` and leaderboards leave them out.
DEBUG_LIMITS = {"iterations": 3, "num_experts": 1, "epochs": 2, "n_students": 1}


def apply_debug_limits(params):
    limited = {name: min(getattr(params, name), cap) for name, cap in DEBUG_LIMITS.items() if hasattr(params, name)}
    return dataclasses.replace(params, **limited)


def shard_from_environment() -> tuple[int, int]:
    """(rank, world size) under torchrun (RANK/WORLD_SIZE) or SLURM (SLURM_PROCID/SLURM_NTASKS); (0, 1) alone."""
    for rank_var, size_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_var in os.environ and size_var in os.environ:
            rank, size = int(os.environ[rank_var]), int(os.environ[size_var])
            if not 0 <= rank < size:
                raise UsageError(f"{rank_var}={rank} is outside 0..{size - 1} ({size_var}={size})")
            return rank, size
    return 0, 1


@dataclass
class Cell:
    dataset: str
    method: str
    size: int
    seed: int
    protocols: list[str]


class Harness:
    def __init__(self, config: RunConfig, log: Callable[[str], None] = lambda s: None,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.config = config
        self.log = log
        self.progress = progress
        self.device = resolve_device(config.device)
        self._datasets: dict[str, Dataset] = {}
        self._backbones: dict[str, Backbone] = {}
        self._methods: dict[str, Method] = {m: get_method(m) for m in config.methods}
        self._check_overrides()

    # ---- validation, before any work ----------------------------------------------------------------
    def _check_overrides(self) -> None:
        for scope in self.config.overrides:
            if scope != EVAL_SCOPE and scope not in self._methods:
                raise UsageError(f"--set {scope}.*: {scope!r} is neither a method in this run "
                                 f"({', '.join(self._methods)}) nor 'eval'.")
        for name in self.config.protocols:
            if name != "auto":
                PROTOCOLS.get(name)
        for method in self._methods.values():  # type-check method overrides now, not mid-grid
            self.method_params(method, self.config.sizes[0], "shapes")
        self.eval_params(get_protocol("frozen-text"), "shapes")

    def dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            self._datasets[name] = load_dataset(name, self.config.data_root, self.config.cache_dir)
        return self._datasets[name]

    def backbone_name(self, dataset: Dataset) -> str:
        return self.config.backbone or dataset.default_backbone

    def backbone(self, name: str) -> Backbone:
        if name not in self._backbones:
            self.log(f"building backbone {name!r}")
            self._backbones[name] = build_backbone(name, self.config.cache_dir)
        return self._backbones[name]

    def method_params(self, method: Method, size: int, dataset: str):
        params = apply_overrides(method.default_params(size, dataset), self.config.overrides.get(method.name, {}),
                                 scope=method.name)
        return apply_debug_limits(params) if self.config.debug else params

    def eval_params(self, protocol, dataset: str):
        params = apply_overrides(protocol.default_params(dataset), self.config.overrides.get(EVAL_SCOPE, {}),
                                 scope=EVAL_SCOPE)
        return apply_debug_limits(params) if self.config.debug else params

    def variant(self, scope: str, params) -> str:
        """The overridden parameters with their typed values: rows of different variants never merge."""
        aliases = getattr(type(params), "ALIASES", {})
        names = sorted(aliases.get(n, n) for n in self.config.overrides.get(scope, {}))
        identity = identity_dict(params)
        return ",".join(f"{n}={getattr(params, n)}" for n in names if n in identity)

    def plan(self) -> list[Cell]:
        cells = []
        for ds_name in self.config.datasets:
            ds = self.dataset(ds_name)
            n_images = len(ds.train.image_paths)
            for size in self.config.sizes:
                if size < 1 or size > n_images:
                    raise UsageError(f"size {size} is outside 1..{n_images}, the number of train images of {ds_name}.")
            for method_name in self.config.methods:
                method = self._methods[method_name]
                for size in self.config.sizes:
                    own = method.protocol_for(self.method_params(method, size, ds_name))
                    protocols = [own if p == "auto" else p for p in self.config.protocols]
                    for seed in self.config.seeds:
                        cells.append(Cell(ds_name, method_name, size, seed, list(dict.fromkeys(protocols))))
        return cells

    # ---- running ------------------------------------------------------------------------------------
    def specs(self, cell: Cell) -> tuple[dict, dict[str, dict]]:
        ds = self.dataset(cell.dataset)
        bb = self.backbone(self.backbone_name(ds))
        method = self._methods[cell.method]
        distill_spec = {
            "dataset": cell.dataset, "train": ds.train.fingerprint, "method": method.name,
            "method_version": method.version,
            "method_params": identity_dict(self.method_params(method, cell.size, cell.dataset)),
            "size": cell.size, "seed": cell.seed, "backbone": bb.name, "backbone_weights": bb.weights_id,
        }
        augment = RealAugment(ds, bb.image_size).identity
        if augment is not None:  # real-data runs: the augmentation's version is part of the result
            distill_spec["augment"] = augment
        if self.config.debug:  # never the same identity as a full run
            distill_spec["debug"] = True
        run_specs = {}
        for name in cell.protocols:
            protocol = get_protocol(name)
            run_specs[name] = {**distill_spec, "test": ds.test.fingerprint, "protocol": name,
                               "protocol_version": protocol.version,
                               "protocol_params": dataclasses.asdict(self.eval_params(protocol, cell.dataset))}
        return distill_spec, run_specs

    def checkpoint_dir(self, distill_id: str) -> Path:
        return self.config.results_dir / "checkpoints" / distill_id

    def artifact_path(self, distill_id: str) -> Path:
        return self.config.results_dir / "artifacts" / distill_id

    def run(self, on_record: Callable[[RunRecord], None] = lambda r: None) -> list[RunRecord]:
        records = []
        cells = self.plan()
        rank, world = shard_from_environment()
        if world > 1:  # every process plans the same grid and takes every world-th cell
            cells = cells[rank::world]
            self.log(f"shard {rank}/{world}: {len(cells)} cells")
        for i, cell in enumerate(cells, 1):
            self.log(f"[{i}/{len(cells)}] {cell.dataset} {cell.method} N={cell.size} seed={cell.seed}")
            for rec in self.run_cell(cell):
                records.append(rec)
                on_record(rec)
        return records

    def run_cell(self, cell: Cell) -> list[RunRecord]:
        """Runs one cell under a per-cell lock: concurrent runs on one results folder (processes, shards,
        Ray workers) never do a cell twice; the one that finds it locked moves on."""
        distill_id = canonical_id(self.specs(cell)[0])
        lock = FileLock(str(self.config.results_dir / "locks" / f"{distill_id}.lock"))
        (self.config.results_dir / "locks").mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self.log("  another process is running this cell; skipping it here")
            return []
        try:
            return self._run_cell(cell)
        finally:
            lock.release()

    def _run_cell(self, cell: Cell) -> list[RunRecord]:
        distill_spec, run_specs = self.specs(cell)
        distill_id = canonical_id(distill_spec)
        todo, done = {}, []
        for name, spec in run_specs.items():
            run_id = canonical_id(spec)
            path = record_path(self.config.results_dir, run_id)
            previous = None
            if path.is_file():
                try:
                    previous = load_record(path)
                except (ValueError, TypeError):
                    previous = None
            if not self.config.force and previous is not None and previous.status == "ok":
                self.log(f"  {name}: done already ({path.name}), skipping")
                done.append(previous)
                continue
            if self.config.retry_failed and (previous is None or previous.status == "ok"):
                continue  # --retry-failed: only cells whose record says failed
            todo[name] = (run_id, spec)
        if not todo:
            return done
        ds = self.dataset(cell.dataset)
        bb = self.backbone(self.backbone_name(ds))
        method = self._methods[cell.method]
        params = self.method_params(method, cell.size, cell.dataset)
        started = utc_now()
        artifact = self.artifact_path(distill_id)
        timings: dict = {}
        memory: dict = {}
        try:
            if artifact.with_suffix(".json").is_file() and not self.config.force:
                self.log(f"  reusing distilled set {artifact.name}")
                distilled = DistilledSet.load(artifact)
                timings = dict(distilled.meta.get("timings", {}))
                memory = dict(distilled.meta.get("peak_memory_mb", {}))
            else:
                ctx = DistillContext(ds, bb.to(self.device), cell.size, cell.seed, self.device,
                                     self.config.cache_dir, self.progress, checkpoint_dir=self.checkpoint_dir(distill_id))
                torch.manual_seed(cell.seed)
                t0 = time.perf_counter()
                with PeakMemory(self.device) as pm:
                    distilled = method.distill(ctx, params)
                timings = {"distill_s": round(time.perf_counter() - t0, 3), **distilled.meta.pop("timings", {})}
                memory = {f"distill_{k}": v for k, v in pm.result().items()}
                if len(distilled) != cell.size:
                    raise RuntimeError(f"method {method.name!r} returned {len(distilled)} pairs, asked for {cell.size}")
                distilled.meta.update({"method": method.name, "method_version": method.version,
                                       "dataset": cell.dataset, "size": cell.size, "seed": cell.seed,
                                       "backbone": bb.name, "backbone_weights": bb.weights_id,
                                       "method_params": distill_spec["method_params"],
                                       "timings": timings, "peak_memory_mb": memory,
                                       "image_mean": list(bb.mean), "image_std": list(bb.std)})
                distilled.save(artifact)
                shutil.rmtree(self.checkpoint_dir(distill_id), ignore_errors=True)  # the set supersedes it
        except MMDDError:
            raise  # bad data, weights or arguments: every cell would fail alike; stop with the message
        except Exception as exc:  # a failing plugin is recorded, the grid goes on
            return done + [self._failed(cell, run_id, spec, distill_id, bb, started, exc)
                           for run_id, spec in todo.values()]
        for name, (run_id, spec) in todo.items():
            protocol = get_protocol(name)
            eval_params = self.eval_params(protocol, cell.dataset)
            try:
                with PeakMemory(self.device) as pm:
                    result = protocol.evaluate(distilled, ds, bb, eval_params, cell.seed, self.device,
                                               self.config.cache_dir, self.progress)
            except MMDDError:
                raise
            except Exception as exc:
                done.append(self._failed(cell, run_id, spec, distill_id, bb, started, exc))
                continue
            rec = RunRecord(
                run_id=run_id, distill_id=distill_id, status="ok", dataset=cell.dataset,
                variant=self.variant(method.name, params), eval_variant=self.variant(EVAL_SCOPE, eval_params),
                dataset_fingerprints={"train": ds.train.fingerprint, "val": ds.val.fingerprint,
                                      "test": ds.test.fingerprint},
                method=method.name, method_version=method.version, method_params=spec["method_params"],
                size=cell.size, seed=cell.seed, backbone=bb.name, backbone_weights=bb.weights_id,
                protocol=name, protocol_version=protocol.version, protocol_params=spec["protocol_params"],
                n_pairs=len(distilled), storage_bytes=distilled.storage_bytes(),
                eval_seeds=[cell.seed * 1000 + k for k in range(eval_params.n_students)],
                metrics={"mean": result.mean, "std": result.std, "per_student": result.per_student},
                selected_epochs=result.selected_epochs, eval_lrs=result.lrs, notes=result.notes,
                timings={**timings, "eval_s": round(result.seconds, 3)},
                peak_memory_mb={**memory, **{f"eval_{k}": v for k, v in pm.result().items()}},
                device=str(self.device), artifact=str(artifact.relative_to(self.config.results_dir)),
                versions=versions(), started_utc=started, finished_utc=utc_now(), debug=self.config.debug,
            )
            rec.save(self.config.results_dir)
            done.append(rec)
        return done

    def _failed(self, cell: Cell, run_id: str, spec: dict, distill_id: str, bb: Backbone, started: str,
                exc: BaseException) -> RunRecord:
        self.log(f"  FAILED: {type(exc).__name__}: {exc}")
        rec = RunRecord(
            run_id=run_id, distill_id=distill_id, status="failed", dataset=cell.dataset,
            variant=",".join(f"{k}={v}" for k, v in sorted(self.config.overrides.get(cell.method, {}).items())),
            dataset_fingerprints={"train": spec["train"], "test": spec["test"]}, method=cell.method,
            method_version=spec["method_version"], method_params=spec["method_params"], size=cell.size,
            seed=cell.seed, backbone=bb.name, backbone_weights=bb.weights_id, protocol=spec["protocol"],
            protocol_version=spec["protocol_version"], protocol_params=spec["protocol_params"],
            device=str(self.device), versions=versions(), started_utc=started, finished_utc=utc_now(),
            debug=self.config.debug, error=f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc)[-6:])}",
        )
        rec.save(self.config.results_dir)
        return rec


def evaluate_artifact(path: Path, distilled: DistilledSet, dataset: Dataset, backbone: Backbone, protocol_name: str,
                      params, seed: int, device: torch.device, cache_dir: Path, results_dir: Path,
                      progress: Callable[[str, int, int], None] | None = None) -> RunRecord:
    """Score a saved set (possibly distilled elsewhere) and record it like any harness cell, so it can
    sit in the same leaderboard. Its identity is the content hash of its tensors plus the protocol spec."""
    import hashlib

    protocol = get_protocol(protocol_name)
    meta = distilled.meta
    distill_id = hashlib.sha256(Path(path).with_suffix(".safetensors").read_bytes()).hexdigest()[:16]
    spec = {"artifact_sha": distill_id, "dataset": dataset.name, "test": dataset.test.fingerprint,
            "backbone_weights": backbone.weights_id, "protocol": protocol_name, "protocol_version": protocol.version,
            "protocol_params": dataclasses.asdict(params), "seed": seed}
    started = utc_now()
    with PeakMemory(device) as pm:
        result = protocol.evaluate(distilled, dataset, backbone, params, seed, device, cache_dir, progress)
    rec = RunRecord(
        run_id=canonical_id(spec), distill_id=distill_id, status="ok", dataset=dataset.name,
        dataset_fingerprints={"train": dataset.train.fingerprint, "val": dataset.val.fingerprint,
                              "test": dataset.test.fingerprint},
        method=meta.get("method", "external"), method_version=str(meta.get("method_version", "unknown")),
        method_params=meta.get("method_params", {}), size=len(distilled), seed=int(meta.get("seed", seed)),
        backbone=backbone.name, backbone_weights=backbone.weights_id, protocol=protocol_name,
        protocol_version=protocol.version, protocol_params=spec["protocol_params"], n_pairs=len(distilled),
        storage_bytes=distilled.storage_bytes(), eval_seeds=[seed * 1000 + k for k in range(params.n_students)],
        metrics={"mean": result.mean, "std": result.std, "per_student": result.per_student},
        selected_epochs=result.selected_epochs, eval_lrs=result.lrs, notes=result.notes + [f"evaluated from {path}"],
        timings={**meta.get("timings", {}), "eval_s": round(result.seconds, 3)},
        peak_memory_mb={f"eval_{k}": v for k, v in pm.result().items()}, device=str(device), artifact=str(path),
        versions=versions(), started_utc=started, finished_utc=utc_now(),
    )
    rec.save(results_dir)
    return rec
