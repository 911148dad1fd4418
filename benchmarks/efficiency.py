"""FLOP-counted efficiency of the loops that cost: a distillation iteration per method, a student epoch per
protocol, and the machine's measured peak, giving achieved FLOP/s and the share of peak (issue 18 item 3);
plus the evaluation targets measured side by side (students together against one by one, frozen-encoders
against trainable-text).

    python benchmarks/efficiency.py [--dataset shapes] [--size 100] [--device auto]   # about 3 minutes, 2 cores

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and backward;
elementwise ops are not counted, so "achieved" is a lower bound on the work done). A per-iteration count is
the difference between runs of 2 and 1 iterations (a per-epoch count: 2 and 1 epochs), after a warm-up run
that builds the caches (features, decoded images), so setup, feature encoding and scoring cancel. Times are measured in separate runs without the counter (its dispatch overhead
would inflate them). Writes ``benchmarks/results/efficiency-<device>.json`` and the ``## Efficiency`` section
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
METHODS = ("covmatch", "mtt-vl", "tesla-vl", "lors")
PROTOCOLS = ("trainable-text", "frozen-text", "frozen-encoders")
SECTION = "## Efficiency"


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10) -> float:
    """The machine's measured peak: FLOP/s of a large square matmul in ``dtype``, best of ``reps``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def context(dataset: str, size: int, device: torch.device, cache: Path):
    from mmdd_bench.data import load_dataset
    from mmdd_bench.encoders import build_backbone
    from mmdd_bench.method import DistillContext

    ds = load_dataset(dataset, None, cache)
    bb = build_backbone("tiny", cache, pretrained=True).to(device)
    return DistillContext(ds, bb, size, 0, device, cache)


def method_params(name: str, ctx, iterations: int):
    from mmdd_bench.method import get_method

    params = get_method(name).default_params(ctx.size, ctx.dataset.name)
    changes = {"iterations": iterations, "checkpoint_every": 0}
    if hasattr(params, "num_experts"):
        changes["num_experts"] = 1  # the same one trajectory for every count and timing
    return dataclasses.replace(params, **changes)


def method_row(name: str, ctx) -> dict:
    """FLOPs of one iteration (2 minus 1) and the steady s/iteration of an uncounted run of 4."""
    from mmdd_bench.method import get_method
    from mmdd_bench.trajectory import ensure_experts

    method = get_method(name)
    params = method_params(name, ctx, 1)
    if hasattr(params, "expert_settings"):  # trained (or loaded) outside every count
        ensure_experts(ctx, params.expert_settings(), params.num_experts, params.expert_train_epochs)
    ctx.train_images  # noqa: B018 - the decoded-image cache, built outside the counts
    method.distill(ctx, method_params(name, ctx, 1))  # features and caches a method builds once, uncounted
    one = counted(lambda: method.distill(ctx, method_params(name, ctx, 1)))
    two = counted(lambda: method.distill(ctx, method_params(name, ctx, 2)))
    timings = method.distill(ctx, method_params(name, ctx, 4)).meta["timings"]
    seconds = timings.get("s_per_iteration_steady") or timings["s_per_iteration"]
    flops = two - one
    return {"flops_per_iteration": flops, "s_per_iteration": seconds, "flop_per_s": flops / seconds}


def protocol_row(protocol_name: str, ctx, distilled, students: int, epochs: int) -> dict:
    """FLOPs of one student epoch (2 minus 1, one student), and a whole evaluation of ``students`` students x
    ``epochs`` epochs timed one by one and, where the protocol can, together."""
    from mmdd_bench.protocols import get_protocol

    proto = get_protocol(protocol_name)
    base = proto.default_params(ctx.dataset.name)

    def evaluate(**changes):
        params = dataclasses.replace(base, **changes)
        return proto.evaluate(distilled, ctx.dataset, ctx.backbone, params, 0, ctx.device, ctx.cache_dir)

    evaluate(epochs=1, n_students=1, students="one-by-one")  # caches frozen features, outside the counts
    one = counted(lambda: evaluate(epochs=1, n_students=1, students="one-by-one"))
    two = counted(lambda: evaluate(epochs=2, n_students=1, students="one-by-one"))
    row: dict = {"flops_per_student_epoch": two - one}
    for mode in ("one-by-one", "together"):
        t0 = time.perf_counter()
        result = evaluate(epochs=epochs, n_students=students, students=mode)
        wall = time.perf_counter() - t0
        used = next((n for n in result.notes if n.startswith("students trained")), "")
        if mode == "together" and "together" not in used:
            row["together_s"], row["together_note"] = None, used
            continue
        row[f"{mode.replace('-', '_')}_s"] = round(wall, 3)
    # achieved FLOP/s over the training part of the sequential evaluation (scoring excluded by the counts)
    row["flop_per_s"] = row["flops_per_student_epoch"] * students * epochs / row["one_by_one_s"]
    return row


def _fwd_bwd_seconds(step, reps: int = 5) -> float:
    """Best-of-``reps`` seconds of ``step()`` (a forward and backward), after two warm-up calls."""
    best = float("inf")
    for _ in range(reps + 2):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


def together_parts(device: torch.device, students: int = 5, batch: int = 128) -> dict:
    """Why students trained together gain little on a CPU: one forward and backward of a student's parts for
    ``students`` students, (a) one by one, (b) vmapped over stacked weights (what ``train_together`` runs), and
    (c) one model on a ``students``-times larger batch, the best any fusion could do (the same kernels, fed
    more work at once). If (c) already costs ``students`` times (a)'s single student, the loop is compute-bound
    and no batching can beat the sequential loop by much; (b) slower than (a) is the vmapped kernels' own cost."""
    from mmdd_bench.encoders.heads import ProjectionHead
    from mmdd_bench.encoders.tiny import IMAGE_DIM, IMAGE_SIZE, TinyConvNet

    torch.manual_seed(0)
    parts = {"image tower (tiny CNN: convolutions)": (lambda: TinyConvNet(out_dim=IMAGE_DIM),
                                                      (3, IMAGE_SIZE, IMAGE_SIZE)),
             "text head (384 -> 256: matmuls)": (lambda: ProjectionHead(384, 256), (384,))}
    return {name: _part_row(build, shape, device, students, batch) for name, (build, shape) in parts.items()}


def _part_row(build, shape: tuple[int, ...], device: torch.device, students: int, batch: int) -> dict:
    """``together_parts`` for one part: ``build()`` makes one student's module, ``shape`` its input's."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    models = [build().to(device).eval() for _ in range(students)]  # no dropout: its masks are not the cost here
    x = torch.randn(students, batch, *shape, device=device)
    big = torch.randn(students * batch, *shape, device=device)
    params, buffers = stack_module_state(models)
    template = copy.deepcopy(models[0]).to("meta")

    def one_by_one():
        for m, xi in zip(models, x, strict=True):
            m(xi).square().mean().backward()

    def together():
        out = vmap(lambda p, b, xi: functional_call(template, (p, b), (xi,)))(params, buffers, x)
        out.square().mean().backward()

    single = _fwd_bwd_seconds(lambda: models[0](x[0]).square().mean().backward())
    seq, tog = _fwd_bwd_seconds(one_by_one), _fwd_bwd_seconds(together)
    fused = _fwd_bwd_seconds(lambda: models[0](big).square().mean().backward())
    return {"one_student_s": single, "one_by_one_s": seq, "together_s": tog, "one_model_big_batch_s": fused,
            "together_speedup": seq / tog, "best_fusion_speedup": seq / fused}


def machine(device: torch.device) -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}


def fmt_flops(value: float | None) -> str:
    if value is None:
        return ""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def markdown(report: dict) -> str:
    m, peak = report["machine"], report["peak_flop_per_s"]
    lines = [SECTION, "",
             f"`python benchmarks/efficiency.py --dataset {report['dataset']} --size {report['size']}` on {m['platform']}, "
             f"{m['cpus']} CPUs ({m['torch_threads']} torch threads), device {m['device']}"
             f"{' (' + m['gpu'] + ')' if m['gpu'] else ''}, torch {m['torch']}, started {report['started_utc']}. "
             "FLOPs counted by `torch.utils.flop_counter` (matmuls and convolutions only: achieved FLOP/s is a lower "
             "bound); per iteration = 2 iterations minus 1, per epoch = 2 epochs minus 1; times from uncounted runs.",
             "", f"Measured peak (float32 {report['peak_matmul_n']}x{report['peak_matmul_n']} matmul): "
             f"{fmt_flops(peak)}FLOP/s.", "",
             f"| distillation (tiny, {report['dataset']}, N={report['size']}) | FLOPs / iteration | s / iteration | "
             "achieved FLOP/s | share of peak |", "|---|---|---|---|---|"]
    for name, row in report["methods"].items():
        lines.append(f"| {name} | {fmt_flops(row['flops_per_iteration'])} | {row['s_per_iteration']:.3f} | "
                     f"{fmt_flops(row['flop_per_s'])} | {100 * row['flop_per_s'] / peak:.1f}% |")
    ratio = report.get("mtt_vl_over_covmatch")
    if ratio:
        lines += ["", f"MTT-VL / CovMatch at each one's embedded defaults (not equal settings: those are the "
                  f"`end_to_end.py` presets above): {ratio['flops']:.2f}x the FLOPs, {ratio['time']:.2f}x the time per "
                  "iteration."]
    s, e = report["students"], report["epochs"]
    lines += ["", f"| student epoch ({report['size']} pairs of random's set) | FLOPs / epoch | evaluation of {s} "
              f"students x {e} epochs, one by one s | together s | together / one by one | achieved FLOP/s (one by one) "
              "| share of peak |", "|---|---|---|---|---|---|---|"]
    for name, row in report["protocols"].items():
        together, alone = row.get("together_s"), row["one_by_one_s"]
        lines.append(f"| {name} | {fmt_flops(row['flops_per_student_epoch'])} | {alone:.2f} | "
                     f"{'' if together is None else f'{together:.2f}'} | "
                     f"{'' if together is None else f'{together / alone:.2f}x'} | "
                     f"{fmt_flops(row['flop_per_s'])} | {100 * row['flop_per_s'] / peak:.1f}% |")
    targets = report["targets"]
    lines += ["", "Targets, measured in this run:",
              f"- frozen-encoders evaluation / trainable-text evaluation (same set, same students and epochs): "
              f"{targets['frozen_encoders_over_trainable_text']:.3f}x (target < 0.10x).",
              *[f"- {p}: students together are {v:.2f}x the sequential loop's speed (target >= 3x)"
                for p, v in targets["together_speedup"].items()], ""]
    parts = report.get("together_parts")
    if parts:
        lines += [f"Why together misses its target here (`together_parts`: one forward and backward of {s} students' parts, "
                  "batch 128, best of 5): *together* is what `train_together` runs (vmap over stacked weights); *one "
                  f"model, {s}x batch* is the best any fusion could do, the same kernels given {s}x the work at once.", "",
                  f"| part | one student s | one by one s | together s | one model, {s}x batch s | together speed-up | "
                  "best possible speed-up |", "|---|---|---|---|---|---|---|"]
        for name, r in parts.items():
            lines.append(f"| {name} | {r['one_student_s']:.4f} | {r['one_by_one_s']:.4f} | {r['together_s']:.4f} | "
                         f"{r['one_model_big_batch_s']:.4f} | {r['together_speedup']:.2f}x | {r['best_fusion_speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--students", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--from-json", type=Path, help="only rewrite the Markdown section from this report")
    args = parser.parse_args(argv)
    if args.from_json:
        write_section(args.markdown, markdown(json.loads(args.from_json.read_text())))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmdd_bench.cli import default_cache_dir
    from mmdd_bench.method import get_method
    from mmdd_bench.resources import resolve_device

    device = resolve_device(args.device)
    cache = (args.cache_dir or default_cache_dir()).expanduser()
    torch.manual_seed(0)
    n = 2048
    report: dict = {"machine": machine(device), "dataset": args.dataset, "size": args.size,
                    "students": args.students, "epochs": args.epochs, "peak_matmul_n": n,
                    "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                    "command": sys.argv, "peak_flop_per_s": peak_flops(device, n=n)}
    ctx = context(args.dataset, args.size, device, cache)
    report["methods"] = {name: method_row(name, ctx) for name in args.methods.split(",") if name}
    if {"covmatch", "mtt-vl"} <= set(report["methods"]):
        cov, mtt = report["methods"]["covmatch"], report["methods"]["mtt-vl"]
        report["mtt_vl_over_covmatch"] = {"flops": mtt["flops_per_iteration"] / cov["flops_per_iteration"],
                                          "time": mtt["s_per_iteration"] / cov["s_per_iteration"]}
    random_set = get_method("random").distill(ctx, get_method("random").default_params(args.size, args.dataset))
    report["protocols"] = {p: protocol_row(p, ctx, random_set, args.students, args.epochs) for p in PROTOCOLS}
    rows = report["protocols"]
    report["targets"] = {
        "frozen_encoders_over_trainable_text": rows["frozen-encoders"]["one_by_one_s"] / rows["trainable-text"]["one_by_one_s"],
        "together_speedup": {p: r["one_by_one_s"] / r["together_s"] for p, r in rows.items() if r.get("together_s")},
    }
    report["together_parts"] = together_parts(device, args.students)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"efficiency-{device.type}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out)
    write_section(args.markdown, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
