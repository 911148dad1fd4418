"""Cost of a distillation iteration, CovMatch against MTT-VL at equal settings, with the data pipeline and the
kernels beside it. Writes ``benchmarks/results/<preset>.json`` and regenerates ``BENCHMARKS.md``.

    python benchmarks/end_to_end.py --preset cpu     # tiny + paper architecture at 64 px (< 15 min, 2 cores)
    python benchmarks/end_to_end.py --preset cpu-resolution --no-kernels   # paper architecture at 32/48/64 px
    python benchmarks/end_to_end.py --preset gpu     # paper architecture at 224 px on Flickr-like JPEGs, N=100/500 (one GPU)
    python benchmarks/end_to_end.py --preset smoke   # seconds: what the test suite runs

Equal settings: same backbone, resolution, N and synthetic batch (all of S up to 200 pairs, else 256), real
batch 128 for CovMatch, one expert x 2 epochs for MTT-VL (its published syn_steps 8, max_start_epoch 2).
The ``paper`` architecture runs with random weights (no download; cost does not depend on the weights).
Each (case, method) runs in a fresh process, so peak memory is that method's alone. The first iteration is
warm-up and is reported apart; ``s/iter`` is the mean of the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Case:
    name: str
    backbone: str  # tiny | paper (random weights)
    image_size: int
    dataset: str
    size: int
    iterations: int  # including the warm-up iteration
    # CovMatch speed switches timed against its plain run, each "name=value[,name=value]".
    covmatch_variants: tuple[str, ...] = ()

    @property
    def syn_batch(self) -> int:
        return self.size if self.size <= 200 else 256


PRESETS = {
    "smoke": [Case("tiny-smoke", "tiny", 32, "flickr-like:24", 8, 2, ("channels_last=true",))],
    "cpu": [Case("tiny-N100", "tiny", 32, "shapes", 100, 6,
                 ("amp=bf16", "channels_last=true", "compile=true")),
            Case("paper-64px-N50", "paper", 64, "shapes-mini", 50, 3)],
    # Issue 18's resolution series: where MTT-VL / CovMatch heads as images grow, measured in one run (64 px
    # is the largest that fits: MTT-VL's RSS peak there was 20.5 GB of this machine's 24 GiB).
    "cpu-resolution": [Case(f"paper-{px}px-N50", "paper", px, "shapes-mini", 50, 3) for px in (32, 48, 64)],
    "gpu": [Case("paper-224px-N100", "paper", 224, "flickr-like:2000", 100, 8,
                 ("amp=bf16", "channels_last=true", "amp=bf16,channels_last=true",
                  "amp=bf16,channels_last=true,compile=true")),
            Case("paper-224px-N500", "paper", 224, "flickr-like:2000", 500, 5)],
}


FLICKR_LIKE = "flickr-like:"


def bench_dataset(name: str, cache: Path):
    """A dataset by name, or ``flickr-like:N``: a Flickr30K-format folder of N photo-like JPEGs at Flickr's sizes
    (five captions each; ``mmdd_bench.data.photos``), loaded by the real Flickr30K loader with the papers'
    augmentation, so the real-data path (decode, originals store, augmentation) is what gets measured."""
    from mmdd_bench.data import load_dataset
    from mmdd_bench.data.photos import write_flickr_like

    if name.startswith(FLICKR_LIKE):
        n = int(name.removeprefix(FLICKR_LIKE))
        folder = write_flickr_like(cache / "bench-data" / f"flickr-like-{n}", n, max(8, n // 20), max(8, n // 10))
        return load_dataset("flickr30k", folder.parent, cache)
    return load_dataset(name, None, cache)


def _context(case: Case, cache: Path, device: torch.device):
    from mmdd_bench.encoders import build_backbone
    from mmdd_bench.method import DistillContext

    ds = bench_dataset(case.dataset, cache)
    pretrained = case.backbone == "tiny"
    bb = build_backbone(case.backbone, cache, pretrained=pretrained, image_size=case.image_size).to(device)
    return DistillContext(ds, bb, case.size, 0, device, cache)


def parse_variant(variant: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in variant.split(",")) if variant else {}


def _method_params(case: Case, method: str, variant: str = ""):
    from mmdd_bench.method import get_method
    from mmdd_bench.params import apply_overrides

    m = get_method(method)
    params = m.default_params(case.size, "flickr30k")  # the published settings, then equal batches
    if method == "covmatch":
        params = dataclasses.replace(params, iterations=case.iterations, checkpoint_every=0, lr_images=1.0,
                                     lr_text=0.1, syn_batch=case.syn_batch)
        return apply_overrides(params, parse_variant(variant), "covmatch")
    return dataclasses.replace(params, iterations=case.iterations, checkpoint_every=0, num_experts=1,
                               mini_batch=case.syn_batch, lr_images=10.0, lr_text=0.3, lr_lr=0.001)


def run_one(case: Case, method: str, cache: Path, device: torch.device, variant: str = "") -> dict:
    """One method on one case, in this process: per-iteration time and peak memory of the distillation."""
    from mmdd_bench.memory import PeakMemory
    from mmdd_bench.method import get_method

    ctx = _context(case, cache, device)
    name = method.removesuffix("-experts")  # "mtt-vl-experts": only train MTT-VL's experts
    params = _method_params(case, name, variant)
    m = get_method(name)
    if method == "mtt-vl-experts":  # in a process of their own, so MTT-VL's memory below is its own
        t0 = time.perf_counter()
        _, summary = m.experts(ctx, params)
        return {**summary, "wall_s": round(time.perf_counter() - t0, 2)}
    if method == "mtt-vl":
        from mmdd_bench.features import train_features

        train_features(ctx.dataset.train, ctx.train_images, ctx.backbone, device, cache)
    ctx.train_images  # noqa: B018 - build the image cache outside the measured block
    out: dict = {}
    with PeakMemory(device) as pm:
        distilled = m.distill(ctx, params)
    out.update(distilled.meta["timings"])
    out["peak_memory_mb"] = pm.result()
    return out


def per_image_torchvision(size: int):
    """The paper augmentation as torchvision transforms applied image by image: what BatchAugment replaced."""
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandAugment(num_ops=2, magnitude=5),
    ])


def data_pipeline(case: Case, cache: Path, s_per_iteration: float) -> dict:
    """Real images per second from the uint8 cache (normalised, batched) with and without the paper's
    augmentation, against what CovMatch consumes (128 real images per iteration)."""
    from mmdd_bench.data.augment import BatchAugment

    ctx = _context(case, cache, torch.device("cpu"))
    store, rng = ctx.train_images, np.random.default_rng(0)
    augment = BatchAugment(case.image_size)

    def rate(fn, rounds: int = 3) -> float:
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn(rng.choice(len(store), 128, replace=len(store) < 128))  # small fixtures draw with replacement
        return round(128 * rounds / (time.perf_counter() - t0), 1)

    plain = rate(store.batch)
    augmented = rate(lambda idx: store.normalize(augment(store.uint8(idx))))
    per_image = per_image_torchvision(case.image_size)  # the 'before': torchvision, one call per image
    augmented_per_image = rate(lambda idx: store.normalize(torch.stack([per_image(img) for img in store.uint8(idx)])))
    consumed = round(128 / s_per_iteration, 1) if s_per_iteration else None
    return {"images_per_s_cached": plain, "images_per_s_cached_paper_augment": augmented,
            "images_per_s_cached_paper_augment_per_image": augmented_per_image,
            "images_per_s_consumed_by_covmatch": consumed,
            "data_share_of_covmatch_iteration": round(128 / plain / s_per_iteration, 4) if s_per_iteration else None,
            "data_share_with_paper_augment": round(128 / augmented / s_per_iteration, 4) if s_per_iteration else None}


def machine() -> dict:
    info = {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        info["git_sha"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True, timeout=5).stdout.strip() or None
    except OSError:
        info["git_sha"] = None
    return info


def run_kernels(out: Path) -> dict | None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", str(HERE / "test_kernels.py"), "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={out}"]
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise SystemExit("kernel benchmarks failed (is pytest-benchmark installed? pip install -e '.[bench]')")
    data = json.loads(out.read_text())
    return {b["name"]: {"mean_s": round(b["stats"]["mean"], 5), "min_s": round(b["stats"]["min"], 5),
                        "rounds": b["stats"]["rounds"]} for b in data["benchmarks"]}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def harness_share(timings: dict) -> dict | None:
    """What the harness adds to a CovMatch iteration: its data path (sampling, cache read, augmentation,
    transfer, token slicing) plus the loop's bookkeeping, over the model's own work (forward, backward,
    optimiser steps, and the online model's rebuild every 50 iterations)."""
    parts = timings.get("s_per_iteration_steady_parts")
    if not parts:
        return None
    model = parts.get("model", 0.0) + parts.get("reset", 0.0)
    added = parts.get("data", 0.0) + parts.get("other", 0.0)
    return {**parts, "harness_over_model": round(added / model, 4) if model else None}


def _run_subprocess(case: Case, method: str, cache: Path, device: str, variant: str = "") -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps(dataclasses.asdict(case)), method,
           "--cache-dir", str(cache), "--device", device, "--variant", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    label = f"{method}[{variant}]" if variant else method
    if proc.returncode != 0:
        raise SystemExit(f"{case.name} / {label} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "s_per_iteration_steady" in result:
        print(f"{case.name:18s} {label:40s} {result['s_per_iteration_steady']:.3f} s/iter  "
              f"first {result['s_first_iteration']:.2f} s  peak {result['peak_memory_mb']}", file=sys.stderr)
    else:
        print(f"{case.name:18s} {label:40s} trained in {result['wall_s']:.1f} s", file=sys.stderr)
    return result


def run_preset(preset: str, cache: Path, device: str) -> dict:
    report = {"preset": preset, "machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": {}}
    for case in PRESETS[preset]:
        row: dict = {"case": dataclasses.asdict(case)}
        row["covmatch"] = _run_subprocess(case, "covmatch", cache, device)
        # Experts train afresh into a scratch cache (the rest of the cache linked in), so their cost is
        # measured and never read from earlier runs; then MTT-VL distils from them in another process.
        scratch = Path(tempfile.mkdtemp(prefix="mmdd-bench-experts-"))
        try:
            cache.mkdir(parents=True, exist_ok=True)
            for entry in cache.iterdir():
                if entry.name != "trajectories":
                    (scratch / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
            experts = _run_subprocess(case, "mtt-vl-experts", scratch, device)
            row["mtt-vl"] = {**_run_subprocess(case, "mtt-vl", scratch, device), "experts": experts}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        cov, mtt = row["covmatch"], row["mtt-vl"]
        mem_key = "cuda_peak" if "cuda_peak" in cov["peak_memory_mb"] else "rss_growth"
        row["ratios"] = {"time_mtt_over_covmatch": ratio(mtt["s_per_iteration_steady"], cov["s_per_iteration_steady"]),
                         f"memory_mtt_over_covmatch ({mem_key})": ratio(mtt["peak_memory_mb"][mem_key],
                                                                        cov["peak_memory_mb"][mem_key])}
        row["harness"] = harness_share(cov)
        row["covmatch_variants"] = {}
        for variant in case.covmatch_variants:
            r = _run_subprocess(case, "covmatch", cache, device, variant)
            r["speedup_over_plain"] = ratio(cov["s_per_iteration_steady"], r["s_per_iteration_steady"])
            r["memory_over_plain"] = ratio(r["peak_memory_mb"][mem_key], cov["peak_memory_mb"][mem_key])
            row["covmatch_variants"][variant] = r
        row["data_pipeline"] = data_pipeline(case, cache, cov["s_per_iteration_steady"])
        report["cases"][case.name] = row
    return report


def _fmt_mem(peak: dict) -> str:
    """'growth (peak)': the method's own allocation, and the process's peak beside it."""
    if "cuda_peak" in peak:
        return f"{peak['cuda_peak']:.0f} (CUDA peak)"
    return f"{peak['rss_growth']:.0f} (RSS peak {peak['rss_peak']:.0f})"


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _other_sections(out: Path) -> list[str]:
    """The sections of ``out`` another script writes (``## Efficiency``: ``efficiency.py``), kept verbatim."""
    if not out.exists():
        return []
    parts = re.split(r"(?m)^(?=## )", out.read_text())
    return [part for part in parts[1:] if not part.startswith("## Preset `")]


def write_markdown(results: Path, out: Path) -> None:
    """BENCHMARKS.md's preset sections from every ``benchmarks/results/<preset>.json`` of a preset this script
    has (smoke runs excluded; the folder also holds other scripts' JSON), other sections kept as they are."""
    lines = ["# Benchmarks", "", "Regenerated by `python benchmarks/end_to_end.py --preset PRESET` from "
             "`benchmarks/results/*.json`; every table names the machine and command that produced it.", ""]
    kept = _other_sections(out)
    for path in sorted(results.glob("*.json")):
        if path.stem not in PRESETS or path.stem == "smoke":
            continue
        rep = json.loads(path.read_text())
        m = rep["machine"]
        lines += [f"## Preset `{rep['preset']}`", "",
                  f"- machine: {m['platform']}, {m['cpus']} CPUs ({m['torch_threads']} torch threads), "
                  f"GPU: {m['cuda'] or 'none'}", f"- torch {m['torch']}, Python {m['python']}, git {m['git_sha']}",
                  f"- command: `{rep['command']}` (started {rep['started']})", "",
                  "| case | method | s/iter (steady) | first iter s | memory MiB: RSS growth (RSS peak) | experts: MiB per expert, train s |",
                  "|---|---|---|---|---|---|"]
        for name, row in rep["cases"].items():
            for method in ("covmatch", "mtt-vl"):
                r = row[method]
                exp = r.get("experts")
                exp_txt = f"{exp['bytes_per_expert'] / 2**20:.1f}, {exp['train_s']:.0f}" if exp else ""
                lines.append(f"| {name} | {method} | {r['s_per_iteration_steady']:.3f} | {r['s_first_iteration']:.3f} | "
                             f"{_fmt_mem(r['peak_memory_mb'])} | {exp_txt} |")
        lines += ["", "| case | MTT-VL / CovMatch time | MTT-VL / CovMatch memory | real img/s (cache) | "
                  "img/s with paper aug, batched (per image before) | img/s CovMatch consumes | "
                  "data share of a CovMatch iteration (plain / paper aug) |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in rep["cases"].items():
            (t_key, t), (m_key, mem) = row["ratios"].items()
            d = row["data_pipeline"]
            lines.append(f"| {name} | {_fmt(t)}x | {_fmt(mem)}x ({m_key.split('(')[1].rstrip(')')}) | "
                         f"{d['images_per_s_cached']} | {d['images_per_s_cached_paper_augment']} "
                         f"({d.get('images_per_s_cached_paper_augment_per_image', 'not measured')}) | "
                         f"{d['images_per_s_consumed_by_covmatch']} | {d['data_share_of_covmatch_iteration']:.1%} / "
                         f"{d['data_share_with_paper_augment']:.1%} |")
        harness_rows = [(name, row["harness"]) for name, row in rep["cases"].items() if row.get("harness")]
        if harness_rows:
            lines += ["", "What the harness adds to a CovMatch iteration (steady s per iteration; `other` is the loop's "
                      "bookkeeping; harness / model = (data + other) / (model + reset)):", "",
                      "| case | model s | online-model reset s | data s | other s | harness / model |",
                      "|---|---|---|---|---|---|"]
            for name, h in harness_rows:
                lines.append(f"| {name} | {h.get('model', 0):.4f} | {h.get('reset', 0):.4f} | {h.get('data', 0):.4f} | "
                             f"{h.get('other', 0):.4f} | {_fmt(h['harness_over_model'] * 100 if h['harness_over_model'] is not None else None)}% |")
        variant_rows = [(name, v, r) for name, row in rep["cases"].items()
                        for v, r in row.get("covmatch_variants", {}).items()]
        if variant_rows:
            lines += ["", "CovMatch speed switches against its plain run, same case, same machine (before = plain):", "",
                      "| case | switches | s/iter (steady) | first iter s | speed-up over plain | memory MiB | memory / plain |",
                      "|---|---|---|---|---|---|---|"]
            for name, row in rep["cases"].items():
                if row.get("covmatch_variants"):
                    r = row["covmatch"]
                    lines.append(f"| {name} | (plain) | {r['s_per_iteration_steady']:.3f} | {r['s_first_iteration']:.3f} | "
                                 f"1.00x | {_fmt_mem(r['peak_memory_mb'])} | 1.00x |")
            for name, v, r in variant_rows:
                lines.append(f"| {name} | `{v}` | {r['s_per_iteration_steady']:.3f} | {r['s_first_iteration']:.3f} | "
                             f"{_fmt(r['speedup_over_plain'])}x | {_fmt_mem(r['peak_memory_mb'])} | {_fmt(r['memory_over_plain'])}x |")
        if rep.get("kernels"):
            lines += ["", "| kernel (pytest-benchmark) | mean s | min s | rounds |", "|---|---|---|---|"]
            for name, k in rep["kernels"].items():
                lines.append(f"| {name} | {k['mean_s']} | {k['min_s']} | {k['rounds']} |")
        lines.append("")
    text = "\n".join(lines) + "\n" + "".join(kept)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-kernels", action="store_true", help="skip the pytest-benchmark kernels")
    parser.add_argument("--kernels-only", action="store_true", help="rerun only the kernels into an existing report")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--one", nargs=2, metavar=("CASE_JSON", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmdd_bench.cli import default_cache_dir
    from mmdd_bench.resources import resolve_device

    cache = (args.cache_dir or default_cache_dir()).expanduser()
    if args.one:
        case = Case(**json.loads(args.one[0]))
        print(json.dumps(run_one(case, args.one[1], cache, resolve_device(args.device), args.variant)))
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{args.preset}.json"

    def save(report: dict) -> None:  # after each stage, so a failing later stage loses nothing
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, out)
        write_markdown(args.results, args.markdown)

    if args.kernels_only:
        report = json.loads(out.read_text())
    else:
        report = run_preset(args.preset, cache, args.device)
        save(report)
    if not args.no_kernels and args.preset != "smoke":
        report["kernels"] = run_kernels(args.results / f"kernels-{args.preset}.json")
        save(report)
    print(json.dumps({name: row["ratios"] for name, row in report["cases"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
