#!/usr/bin/env python
"""How long does reproducing an embedded grid take, end to end? (issue 16: "say how long
scripts/reproduce_embedded.sh takes on 2 cores".)

Runs ``scripts/reproduce_embedded.sh`` as a user would, from a cold start: an empty cache (the dataset is generated,
images decoded, features and MTT-VL's experts trained) and an empty results folder, and writes one JSON with the
wall-clock time, the machine, the commit, and where the process-seconds went (the records' distillation and
evaluation seconds, per method and protocol; a set scored by several protocols counts its distillation once).

    HF_HUB_OFFLINE=1 python benchmarks/time_reproduce.py --config configs/scenes-embedded.yaml --workers 2 \
        --out benchmarks/results/reproduce-scenes-cpu.json

``--summarize RESULTS --started T --finished T`` writes the same JSON for a run timed another way (its start and
end as ISO times), without running anything. A run that was interrupted and resumed gives one ``--started`` and
one ``--finished`` per segment; its wall time is their sum (work lost at the interruption included), and the code
version is the one its records name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from mmdd_bench.provenance import environment
from mmdd_bench.records import RunRecord, atomic_write_text, read_records

ROOT = Path(__file__).resolve().parent.parent


def where_time_went(records: list[RunRecord]) -> dict:
    """Process-seconds by part: each distillation once, every evaluation; the full-data ceilings apart."""
    distill: dict[str, float] = {}
    evaluate: dict[str, float] = defaultdict(float)
    seen = set()
    for r in records:
        if r.status != "ok":
            continue
        label = r.method + (f" [{r.variant}]" if r.variant else "")
        key = (r.dataset, r.method, r.size, r.seed, r.variant)
        if key not in seen:
            seen.add(key)
            distill[label] = distill.get(label, 0.0) + float((r.timings or {}).get("distill_s") or 0.0)
        evaluate[f"{label} / {r.protocol}"] += float((r.timings or {}).get("eval_s") or 0.0)
    total = sum(distill.values()) + sum(evaluate.values())
    return {"distill_s": {k: round(v, 1) for k, v in sorted(distill.items())},
            "eval_s": {k: round(v, 1) for k, v in sorted(evaluate.items())},
            "process_s": round(total, 1), "records": sum(r.status == "ok" for r in records),
            "failed_records": sum(r.status != "ok" for r in records)}


def summary(results: Path, started: list[str], finished: list[str], command: str, config: str, workers: int) -> dict:
    """The run's JSON; ``started`` / ``finished`` pair up as its segments (one for a run that was not interrupted)."""
    segments = list(zip(started, finished, strict=True))
    wall = sum((datetime.fromisoformat(end) - datetime.fromisoformat(begin)).total_seconds() for begin, end in segments)
    records = read_records(results)
    parts = where_time_went(records)
    here = environment(torch.device("cpu"))
    shas = sorted({(r.versions or {}).get("git_sha") for r in records} - {None})
    git = ",".join(shas) or subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.strip()
    return {"command": command, "config": config, "workers": workers, "started_utc": started[0],
            "finished_utc": finished[-1], **({"segments": segments} if len(segments) > 1 else {}),
            "wall_s": round(wall, 1), "wall_h": round(wall / 3600, 2),
            "parallel_efficiency": round(parts["process_s"] / (wall * workers), 3) if wall else None,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        **{k: here[k] for k in ("cpu_model", "cpu_capability", "cuda_compiled", "gpu_count")}},
            "git_sha": git, **parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/scenes-embedded.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workdir", type=Path,
                        help="an empty folder for the run's results/ and cache/, kept afterwards (default: a temporary one)")
    parser.add_argument("--summarize", type=Path, help="a results folder of a run already made: only write its JSON")
    parser.add_argument("--started", action="append", default=[],
                        help="with --summarize: the run's start (ISO time); once per segment of a resumed run")
    parser.add_argument("--finished", action="append", default=[],
                        help="with --summarize: the run's end (ISO time); once per segment, in the same order")
    args = parser.parse_args()
    command = f"CONFIG={args.config} WORKERS={args.workers} scripts/reproduce_embedded.sh (empty cache, empty results)"
    if args.summarize:
        if not args.started or len(args.started) != len(args.finished):
            raise SystemExit("--summarize needs one --started and one --finished (ISO times) per segment of the run, "
                             f"got {len(args.started)} and {len(args.finished)}")
        for value in (*args.started, *args.finished):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise SystemExit("--started / --finished take ISO times such as 2026-12-07T21:11:20+00:00, "
                                 f"got {value!r}") from None
        report = summary(args.summarize, args.started, args.finished, command, args.config, args.workers)
    else:
        with tempfile.TemporaryDirectory(prefix="mmdd-reproduce-") as scratch:
            work = args.workdir or Path(scratch)
            if args.workdir and any(args.workdir.iterdir() if args.workdir.is_dir() else []):
                raise SystemExit(f"--workdir {args.workdir} is not empty: the timing needs a cold cache and no records")
            results, cache = work / "results", work / "cache"
            env = {**os.environ, "RESULTS": str(results), "CONFIG": args.config, "WORKERS": str(args.workers),
                   "MMDD_BENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
            started = datetime.now(UTC).isoformat(timespec="seconds")
            begin = time.monotonic()
            done = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce_embedded.sh")], cwd=ROOT, env=env)
            elapsed = time.monotonic() - begin
            finished = datetime.now(UTC).isoformat(timespec="seconds")
            if done.returncode != 0:
                raise SystemExit(f"reproduce_embedded.sh exited with {done.returncode} after {elapsed:.0f} s")
            report = summary(results, [started], [finished], command, args.config, args.workers)
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    print(f"{report['wall_h']} h wall, {report['process_s']:.0f} process-s in {report['records']} records -> {args.out}")


if __name__ == "__main__":
    main()
