"""Cost estimates for a dry run, from measured figures only, never guessed:

- **distillation** = seconds per iteration x the cell's iterations, where seconds per iteration come from
  the run records of earlier cells with the same backbone, method and size (their ``distill_s`` over their
  iterations; the median), else from the end-to-end benchmark (``benchmarks/results/*.json``: the steady
  per-iteration time of a case with the same backbone and image size, at the nearest size). Methods without
  iterations (coresets) take their records' median ``distill_s``.
- **evaluation** = seconds per student x students, from the records of earlier evaluations with the same
  backbone, protocol and dataset and the same work per student (epochs x ceil(N/batch)), else the nearest
  such record scaled by the work; without records, the benchmark kernel
  ``test_one_student_epoch_trainable_text_tiny`` (tiny, trainable-text only) x epochs x batches x students,
  which leaves out building the student and scoring the test split.
- **experts** (trajectory methods): the benchmark's training seconds per expert epoch for the backbone, once
  per dataset and settings, and nothing when they are already in the cache (not checked here).

Figures measured on another machine transfer only roughly; the output names each figure's source.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import read_records

BENCHMARK_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
STUDENT_EPOCH_KERNEL = "test_one_student_epoch_trainable_text_tiny"  # one epoch on 100 pairs, one batch


@dataclass
class Estimate:
    seconds: float | None  # None: nothing measured matches
    source: str

    def __add__(self, other: Estimate) -> Estimate:
        if self.seconds is None or other.seconds is None:
            return Estimate(None, "; ".join(s for s in (self.source, other.source) if s))
        return Estimate(self.seconds + other.seconds, "; ".join(s for s in (self.source, other.source) if s))


@dataclass
class Figures:
    """Measured figures, keyed by what they depend on."""

    per_iteration: dict[tuple, list[float]] = field(default_factory=dict)  # (backbone, method, size)
    distill: dict[tuple, list[float]] = field(default_factory=dict)  # (backbone, method, size) -> distill_s
    per_student: dict[tuple, list[tuple[int, float]]] = field(default_factory=dict)  # (bb, protocol, dataset)
    # -> (student-epoch batches of one student, seconds of one student)
    bench_iteration: dict[tuple, dict[int, tuple[float, str]]] = field(default_factory=dict)  # (bb, px, method)
    bench_expert_epoch: dict[tuple, tuple[float, str]] = field(default_factory=dict)  # (bb, px)
    bench_batch: tuple[float, str] | None = None
    sources: list[str] = field(default_factory=list)


def load_figures(results_dir: Path, benchmark_dir: Path = BENCHMARK_DIR) -> Figures:
    figures = Figures()
    if Path(results_dir).is_dir():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable records are the report's business, not the estimate's
            records = [r for r in read_records(results_dir) if r.status == "ok" and not r.debug]
        for r in records:
            key = (r.backbone, r.method, r.size)
            distill_s = r.timings.get("distill_s")
            iterations = r.method_params.get("iterations")
            if isinstance(distill_s, int | float) and distill_s > 0:
                figures.distill.setdefault(key, []).append(float(distill_s))
                if isinstance(iterations, int) and iterations > 0:
                    figures.per_iteration.setdefault(key, []).append(distill_s / iterations)
            eval_s = r.timings.get("eval_s")
            p = r.protocol_params
            if isinstance(eval_s, int | float) and all(isinstance(p.get(k), int) for k in ("epochs", "n_students")):
                batches = math.ceil((r.n_pairs or r.size) / max(1, int(p.get("batch_size", 128))))
                figures.per_student.setdefault((r.backbone, r.protocol, r.dataset), []).append(
                    (p["epochs"] * batches, eval_s / p["n_students"]))
        if records:
            figures.sources.append(f"{len(records)} ok records in {Path(results_dir) / 'runs'}")
    for path in sorted(Path(benchmark_dir).glob("*.json")):
        try:
            bench = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(bench, dict) or "machine" not in bench:
            continue  # not a timing report (a calibration, a study, pytest-benchmark's raw file)
        machine = bench["machine"]
        where = (f"{path.name} ({machine.get('cpus', '?')} CPUs, cuda {machine.get('cuda')}, "
                 f"git {machine.get('git_sha', '?')})")
        figures.sources.append(f"benchmark {where}")
        for case in bench.get("cases", {}).values():
            info = case.get("case", {})
            bb, px, size = info.get("backbone"), info.get("image_size"), info.get("size")
            for method, figs in case.items():
                if isinstance(figs, dict) and "s_per_iteration_steady" in figs:
                    figures.bench_iteration.setdefault((bb, px, method), {})[size] = (
                        float(figs["s_per_iteration_steady"]), f"{path.name} case {info.get('name')}")
                    experts = figs.get("experts")
                    if isinstance(experts, dict) and experts.get("train_s"):
                        epochs = sum(experts.get("epochs", [])) or 1
                        figures.bench_expert_epoch[(bb, px)] = (experts["train_s"] / epochs,
                                                                f"{path.name} case {info.get('name')}")
        kernel = bench.get("kernels", {}).get(STUDENT_EPOCH_KERNEL)
        if isinstance(kernel, dict) and kernel.get("mean_s"):
            figures.bench_batch = (float(kernel["mean_s"]), f"{path.name} kernel {STUDENT_EPOCH_KERNEL}")
    return figures


def _fmt(seconds: float) -> str:
    return f"{seconds:.3g} s"


def distill_estimate(figures: Figures, backbone: str, image_size: int, method: str, size: int,
                     params: Any) -> Estimate:
    iterations = getattr(params, "iterations", None)
    key = (backbone, method, size)
    if isinstance(iterations, int) and key in figures.per_iteration:
        per = statistics.median(figures.per_iteration[key])
        return Estimate(per * iterations, f"distil {iterations} it x {_fmt(per)}/it (records)")
    if iterations is None and key in figures.distill:
        return Estimate(statistics.median(figures.distill[key]), "distil (median of records)")
    bench = figures.bench_iteration.get((backbone, image_size, method))
    if isinstance(iterations, int) and bench:
        nearest = min(bench, key=lambda s: abs(s - size))
        per, source = bench[nearest]
        note = "" if nearest == size else f", measured at N={nearest}"
        return Estimate(per * iterations, f"distil {iterations} it x {_fmt(per)}/it ({source}{note})")
    return Estimate(None, f"distil: nothing measured for {method} on {backbone} at {image_size} px")


def experts_estimate(figures: Figures, backbone: str, image_size: int, params: Any) -> Estimate:
    epochs = getattr(params, "expert_train_epochs", None)
    n = getattr(params, "num_experts", None)
    if not (isinstance(epochs, int) and isinstance(n, int)):
        return Estimate(0.0, "")
    found = figures.bench_expert_epoch.get((backbone, image_size))
    if found is None:
        return Estimate(None, f"experts: nothing measured for {backbone} at {image_size} px")
    per, source = found
    return Estimate(per * n * epochs, f"experts {n} x {epochs} epochs x {_fmt(per)} ({source}; once, 0 if cached)")


def eval_estimate(figures: Figures, backbone: str, protocol: str, dataset: str, size: int, params: Any) -> Estimate:
    batches = math.ceil(size / max(1, params.batch_size))
    per_student = params.epochs * batches
    work = params.n_students * per_student
    key = (backbone, protocol, dataset)
    if key in figures.per_student:
        # Records of the same work per student (epochs x batches) time it best, building and scoring included;
        # otherwise the nearest one, scaled by the work (its fixed costs scale too: an overestimate upwards).
        nearest = min({w for w, _ in figures.per_student[key]}, key=lambda w: abs(w - per_student))
        secs = statistics.median(s for w, s in figures.per_student[key] if w == nearest)
        scale = per_student / nearest
        how = "" if nearest == per_student else f", scaled from {nearest} epoch-batches"
        return Estimate(secs * scale * params.n_students,
                        f"{protocol}: {params.n_students} students x {_fmt(secs * scale)} (records{how})")
    if figures.bench_batch and backbone == "tiny" and protocol == "trainable-text":
        per, source = figures.bench_batch
        return Estimate(per * work, f"{protocol}: {work} student-epoch batches x {_fmt(per)} ({source})")
    return Estimate(None, f"{protocol}: nothing measured for {backbone} on {dataset}")


__all__ = ["BENCHMARK_DIR", "Estimate", "Figures", "distill_estimate", "eval_estimate", "experts_estimate",
           "load_figures"]
