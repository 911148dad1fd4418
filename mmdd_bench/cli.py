"""``mmdd-bench``: one command line over methods x datasets x sizes x seeds (run, status, submit, rerun, ...).

Results go to stdout, logs and progress bars to stderr. Usage and data errors exit with code 2 and a
message that says what to fix; a grid in which some cells failed exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from platformdirs import user_cache_dir
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .errors import DataError, MMDDError, UsageError
from .progress import PlainProgress, ProgressFn

stdout = Console()
stderr = Console(stderr=True)


def _csv(kind: type = str):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None
    return parse


CACHE_KINDS = ["datasets", "images", "weights", "features", "trajectories", "open_clip"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("MMDD_BENCH_CACHE") or user_cache_dir("mmdd-bench"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmdd-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, results_default: Path | None = Path("results"), work: bool = True) -> None:
        p.add_argument("--results", type=Path, default=results_default,
                       help=f"results folder (default: ./{results_default or 'results'}"
                            + (", or the experiment file's)" if results_default is None else ")"))
        p.add_argument("--cache-dir", type=Path, default=None,
                       help="cache for generated data, decoded images, weights, features (default: MMDD_BENCH_CACHE or the user cache)")
        p.add_argument("--data-root", default=None, help="folder with flickr30k/ and coco/ (default: MMDD_BENCH_DATA)")
        if work:  # options of the commands that distil or evaluate
            p.add_argument("--device", default=None, help="auto (default) | cpu | cuda | cuda:N")
            p.add_argument("--quiet", action="store_true", help="no progress or log lines on stderr")
            log_every(p)

    def log_every(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log-every", type=float, default=30.0, metavar="SECONDS",
                       help="when stderr is not a terminal (nohup, CI, SLURM): one progress line per loop every "
                            "SECONDS instead of a live bar (default 30)")

    def grid(p: argparse.ArgumentParser) -> None:
        """The options that say what the grid is (defaults: the experiment file's, else the built-in ones)."""
        p.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="an experiment file (.yaml or .toml; presets in configs/); the flags below override it")
        p.add_argument("--methods", type=_csv(), default=None, help="default: random,herding")
        p.add_argument("--datasets", type=_csv(), default=None, help="default: shapes")
        p.add_argument("--sizes", type=_csv(int), default=None, help="default: 50,100")
        p.add_argument("--seeds", type=_csv(int), default=None, help="default: 0")
        p.add_argument("--backbone", default=None, help="paper | paper-nfresnet50 | paper-vit | tiny | tiny-vit | tiny-scenes | clip-<model>[@tag] (default: per dataset)")
        p.add_argument("--protocol", type=_csv(), default=None,
                       help="auto (each method's own; the default) | all (every protocol that reads the set) | "
                            "trainable-text | frozen-text | frozen-text-mtt | frozen-encoders, comma-separated")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SCOPE.NAME=VALUE",
                       help="override a parameter: METHOD.NAME=VALUE or eval.NAME=VALUE (repeatable)")
        p.add_argument("--force", action="store_true", default=None, help="redo cells that already have a record")
        p.add_argument("--retry-failed", action="store_true", default=None,
                       help="rerun only the cells whose record says failed")
        p.add_argument("--debug", action="store_true", default=None,
                       help="smoke run (3 iterations, 1 expert, 1 student x 2 epochs): recorded as debug, never in a leaderboard")
        p.add_argument("--deterministic", action="store_true", default=None,
                       help="torch's deterministic algorithms (bit-identical reruns and resumes on GPUs; CPUs need none)")
        p.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                       help="how long to wait for a distillation another process is doing (default 6 h)")

    run = sub.add_parser("run", help="distill and evaluate a grid of cells")
    common(run, results_default=None)
    grid(run)
    run.add_argument("--executor", choices=["local", "ray"], default=None,
                     help="local: cells in this process (torchrun/SLURM ranks shard them); ray: one Ray task per cell")
    run.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    run.add_argument("--workers", dest="local_workers", type=int, default=None, metavar="N",
                     help="local executor: N processes on this machine share the cells (each with cores/N torch "
                          "threads, or its own GPU); progress as plain lines (default 1: this process)")
    run.add_argument("--json", action="store_true", help="print the records as JSON lines instead of a table")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (done / evaluate only / distil) and its estimated cost; nothing is run")
    run.add_argument("--print-config", action="store_true",
                     help="print the resolved experiment (every parameter filled in) as a file --config reads")

    st = sub.add_parser("status", help="the grid's state: done, failed, running (who holds it), missing")
    common(st, results_default=None, work=False)
    grid(st)
    st.add_argument("--json", action="store_true", help="the state as JSON")

    sbm = sub.add_parser("submit", help="run the grid as a SLURM job array (submitit), or as local jobs")
    common(sbm, results_default=None)
    grid(sbm)
    where = sbm.add_mutually_exclusive_group(required=True)
    where.add_argument("--slurm", action="store_true", help="submit to SLURM (sbatch, through submitit)")
    where.add_argument("--local", action="store_true", help="submitit's local executor (this machine)")
    sbm.add_argument("--partition", default=None)
    sbm.add_argument("--gpus-per-task", type=int, default=None, help="default 1")
    sbm.add_argument("--cpus-per-task", type=int, default=None)
    sbm.add_argument("--mem-gb", type=float, default=None)
    sbm.add_argument("--time", default=None, help="time limit per task, SLURM format (default 24:00:00)")
    sbm.add_argument("--array-throttle", type=int, default=None, metavar="K", help="at most K array tasks at once")
    sbm.add_argument("--account", default=None)
    sbm.add_argument("--qos", default=None)
    sbm.add_argument("--workers", type=int, default=None,
                     help="array tasks (default: one per cell to do; each claims cells until none is left)")
    sbm.add_argument("--lock-expiry", type=float, default=None, metavar="SECONDS",
                     help="a claim whose heartbeat is this old is stale and taken over (default 300)")
    sbm.add_argument("--wait", action="store_true", help="wait for every job and print their results")

    rr = sub.add_parser("rerun", help="rerun exactly the experiment a record describes, and compare")
    common(rr, results_default=Path("reruns"))
    rr.add_argument("record", type=Path, help="a run record, results/runs/<run_id>.json")

    ev = sub.add_parser("eval", help="evaluate a saved distilled set (.json/.safetensors) and record the result")
    common(ev)
    ev.add_argument("artifact", type=Path)
    ev.add_argument("--dataset", default=None, help="default: the dataset the set was distilled from")
    ev.add_argument("--protocol", default=None, help="default: the method's own protocol")
    ev.add_argument("--backbone", default=None,
                    help="default: the backbone the set was distilled with; another one scores a transfer (its text "
                         "must be captions or live in that backbone's text tower, e.g. tiny <-> tiny-vit)")
    ev.add_argument("--seed", type=int, default=None, help="default: the seed the set was distilled with")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.NAME=VALUE")
    ev.add_argument("--skip-done", action="store_true",
                    help="do nothing when this evaluation already has an ok record (scripts that resume)")

    show = sub.add_parser("show", help="render a distilled set as an image grid with decoded captions (PNG)")
    show.add_argument("artifact", type=Path)
    show.add_argument("--out", type=Path, default=None, help="PNG path (default: next to the artifact)")
    show.add_argument("--max-items", type=int, default=24)
    show.add_argument("--data-root", default=None)
    show.add_argument("--cache-dir", type=Path, default=None)
    show.add_argument("--device", default="cpu")

    rep = sub.add_parser("report", help="regenerate leaderboards (CSV, Markdown, plots) from the run records")
    rep.add_argument("--results", type=Path, default=Path("results"))
    rep.add_argument("--html", action="store_true", help="also galleries and the static page <results>/index.html")
    rep.add_argument("--data-root", default=None, help="to decode learned text in galleries (Flickr30K/COCO)")
    rep.add_argument("--cache-dir", type=Path, default=None)

    ls = sub.add_parser("list", help="list methods, datasets, backbones or protocols")
    ls.add_argument("what", choices=["methods", "datasets", "backbones", "protocols"])
    ls.add_argument("pattern", nargs="?", default="*")

    cache = sub.add_parser("cache", help="show (du) or free (clear) what the cache holds")
    cache.add_argument("action", choices=["du", "clear"])
    cache.add_argument("what", nargs="?", default="all",
                       choices=["all", *CACHE_KINDS])
    cache.add_argument("--cache-dir", type=Path, default=None)

    exp = sub.add_parser("experts", help="train (or extend) MTT-VL expert trajectories ahead of a run")
    exp.add_argument("--dataset", default="shapes")
    exp.add_argument("--backbone", default=None, help="default: the dataset's")
    exp.add_argument("--num-experts", type=int, default=None, help="default: mtt-vl's (20; 5 on embedded data)")
    exp.add_argument("--epochs", type=int, default=None,
                     help="epochs per expert (default: the epochs mtt-vl's defaults read; the paper trained 10)")
    exp.add_argument("--set", dest="overrides", action="append", default=[], metavar="mtt-vl.NAME=VALUE",
                     help="expert settings as mtt-vl parameters: expert_lr, expert_batch, expert_dtype, expert_seed, ...")
    exp.add_argument("--data-root", default=None)
    exp.add_argument("--cache-dir", type=Path, default=None)
    exp.add_argument("--device", default="auto")
    exp.add_argument("--quiet", action="store_true")
    log_every(exp)

    data = sub.add_parser("data", help="prepare (embedded) or check (Flickr30K/COCO) a dataset")
    data.add_argument("dataset")
    data.add_argument("--skip-images", action="store_true", help="check the JSON only, not every image header")
    data.add_argument("--data-root", default=None)
    data.add_argument("--cache-dir", type=Path, default=None)
    log_every(data)
    return parser


class _ProgressReporter:
    """Adapts the (what, done, total) callbacks of methods and protocols to one rich progress bar each."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if what not in self.tasks:
            self.tasks[what] = self.progress.add_task(escape(what), total=total)
        self.progress.update(self.tasks[what], completed=done, total=total)
        if done >= total:
            self.progress.remove_task(self.tasks.pop(what))


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=stderr, transient=True, disable=quiet)


@contextmanager
def _reporter(quiet: bool, every_s: float = 30.0) -> Iterator[ProgressFn | None]:
    """Where long loops report: a live bar per loop on a terminal; plain lines every ``every_s`` seconds
    when stderr is a file or a pipe (a bar there is one line for tens of minutes); nothing under --quiet."""
    if quiet:
        yield None
    elif stderr.is_terminal:
        with _progress(False) as progress:
            yield _ProgressReporter(progress)
    else:
        yield PlainProgress(_log(False), every_s)


def _log(quiet: bool):
    """Log lines are plain text: paths and names may hold brackets that rich would read as markup."""
    return (lambda s: None) if quiet else (lambda s: stderr.print(s, markup=False, highlight=False))


def _summary_table(records) -> Table:
    table = Table(title="mmdd-bench results (mean over students)")
    for col in ["dataset", "method", "size", "seed", "protocol", "status", "i2t R@1", "t2i R@1", "r_mean", "distill s"]:
        table.add_column(col, justify="right" if col not in ("dataset", "method", "protocol", "status") else "left")
    for r in records:
        m = r.metrics.get("mean", {})
        i2t, t2i, mean = (f"{m[k]:.2f}" if k in m else "-" for k in ("i2t_R@1", "t2i_R@1", "r_mean"))
        cells = [r.dataset, r.method, str(r.size), str(r.seed), r.protocol, r.status + (" (debug)" if r.debug else ""),
                 i2t, t2i, mean, str(r.timings.get("distill_s", "-"))]
        table.add_row(*(Text(c) for c in cells))
    return table


def _experiment(args):
    """The experiment of a run/status/submit command: the --config file (if any) with the flags laid over it."""
    from .config import build_experiment, load_experiment
    from .params import parse_set_options

    flags = {"methods": args.methods, "datasets": args.datasets, "sizes": args.sizes, "seeds": args.seeds,
             "backbone": args.backbone, "protocols": args.protocol, "debug": args.debug,
             "deterministic": args.deterministic, "results": str(args.results) if args.results else None,
             "cache_dir": str(args.cache_dir_flag) if args.cache_dir_flag else None, "data_root": args.data_root,
             "device": getattr(args, "device", None), "force": args.force, "retry_failed": args.retry_failed,
             "lock_timeout": args.lock_timeout, "executor": getattr(args, "executor", None),
             "ray_address": getattr(args, "ray_address", None), "workers": getattr(args, "local_workers", None), "set": parse_set_options(args.overrides)}
    file = load_experiment(args.config) if args.config else None
    return build_experiment(file, flags, source=str(args.config) if args.config else "command line",
                            cache_dir=args.cache_dir)


def _has_grid_flags(args) -> bool:
    return bool(args.config or args.overrides or any(getattr(args, k) is not None for k in (
        "methods", "datasets", "sizes", "seeds", "backbone", "protocol")))


def _seconds(value: float | None) -> str:
    from .progress import format_duration

    return "?" if value is None else format_duration(value)


def _print_dry_run(grid, as_json: bool) -> None:
    from . import estimate

    total, unknown_cells = grid.total()
    experts = grid.experts()
    meta = grid.experiment.meta
    if as_json:
        print(json.dumps({"experiment": meta.model_dump(), "source": grid.experiment.source,
                          "unknown": grid.unknown, "cells": [c.as_dict() for c in grid.cells],
                          "total_s": total, "cells_without_estimate": unknown_cells, "experts_s": experts,
                          "figures": grid.figures.sources, "method": estimate.__doc__}, indent=1))
        return
    out = []
    if meta.name or meta.paper:
        out.append(f"experiment: {meta.name}" + (f" -- {meta.paper}" if meta.paper else "")
                   + (f", {meta.table}" if meta.table else "") + (f"; protocol: {meta.protocol}" if meta.protocol else ""))
    out.append(f"from: {grid.experiment.source}; results: {grid.experiment.runs[0].results_dir}")
    for what, why in grid.unknown.items():
        out.append(f"unknown here: {what}: {why}")
    if grid.unknown:
        out.append("  -> the run ids of those cells hash what is missing: they are shown as '?' and their state as unknown")
    actions = {"done": "done", "evaluate": "evaluate only (set saved)", "distil": "distil + evaluate",
               "unknown": "? (ids unknown here)"}
    rows = [("run", "dataset", "method", "N", "seed", "variant", "evaluations (protocol run-id state)", "action",
             "estimate")]
    for c in grid.cells:
        evals = ", ".join(f"{e.protocol} {e.run_id or '?'} {e.state}" for e in c.evals)
        rows.append((str(c.run), c.cell.dataset, c.cell.method, str(c.cell.size), str(c.cell.seed),
                     (c.plan.evals[0].spec.variant if c.plan.evals else "") or "-", evals,
                     "evaluate only (set from an earlier cell)" if c.set_from_earlier_cell else actions[c.action],
                     _seconds(c.estimate.seconds) if c.action != "done" else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out.append(f"plan: {len(grid.cells)} cells")
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    counts = {k: sum(c.action == k for c in grid.cells) for k in ("done", "evaluate", "distil", "unknown")}
    summary = [f"cells: {counts['done']} done, {counts['evaluate']} evaluate only, {counts['distil']} distil + evaluate"
               + (f", {counts['unknown']} unknown" if counts["unknown"] else ""),
               f"estimated: {_seconds(total)} for the cells with an estimate"
               + (f"; {unknown_cells} cells to do have none (nothing measured matches)" if unknown_cells else "")
               + ("" if not experts else f"; plus experts {_seconds(experts)} unless cached"),
               "how: distillation = s/iteration x iterations, evaluation = s per student x students, from the "
               "records of earlier cells with the same backbone/method/size (backbone/protocol/dataset and work per "
               "student), else the benchmark JSON for the same backbone and image size (see mmdd_bench/estimate.py).",
               "figures: " + ("; ".join(grid.figures.sources) or "none found")]
    if grid.cells:
        sources = dict.fromkeys(c.estimate.source for c in grid.cells if c.action != "done" and c.estimate.source)
        summary += [f"  {s}" for s in list(sources)[:8]]
    print("\n".join(out + summary))


def cmd_run(args) -> int:
    from dataclasses import asdict

    from . import api
    from .reports.writer import write_leaderboards
    from .resources import shard_from_environment

    experiment = _experiment(args)
    if args.print_config:
        from .resolve import print_config

        text, unknown = print_config(experiment)
        print(text, end="")
        for what, why in unknown.items():
            _log(args.quiet)(f"note: {what} is absent here ({why}); the parameters do not depend on it, the run ids do")
        return 0
    if args.dry_run:
        from .dryrun import plan_experiment

        _print_dry_run(plan_experiment(experiment), args.json)
        return 0
    if len(experiment.runs) > 1:  # every grid is checked before the first one starts
        for run in experiment.runs:
            api.plan(run)
    rank, world = shard_from_environment()
    lead = rank == 0  # under torchrun/SLURM only rank 0 draws progress bars and writes leaderboards
    log = _log(args.quiet)
    with _reporter(args.quiet or not lead, args.log_every) as progress:
        summaries = api.run_all(experiment.runs, log=log, progress=progress, executor=experiment.executor,
                                ray_address=experiment.ray_address, workers=experiment.workers,
                                log_every_s=None if args.quiet else args.log_every)
    if lead:
        for results in dict.fromkeys(run.results_dir for run in experiment.runs):
            write_leaderboards(results)
    records = [r for summary in summaries for r in summary.records]
    if args.json:
        for r in records:
            print(json.dumps(asdict(r)))
    else:
        results = experiment.runs[0].results_dir
        stdout.print(_summary_table(records))
        stdout.print(Text(f"records: {results / 'runs'}  leaderboard: {results / 'leaderboard'}"))
    missing = [m for s in summaries for m in s.missing]
    if missing:
        busy = sum(len(s.busy) for s in summaries)
        refused = sum(len(s.refused) for s in summaries)
        why = []
        if busy:
            why.append(f"{busy} held by another process (rerun once it is done to confirm)")
        if refused:
            why.append(f"{refused} whose record file cannot be replaced (see the log)")
        failed = len({r.run_id for s in summaries for r in s.failed})
        if failed:
            why.append(f"{failed} failed")
        stderr.print(Text(f"{len(missing)} of {sum(len(s.planned) for s in summaries)} planned evaluations have no ok "
                          "record: " + "; ".join(why)))
    return 0 if all(s.complete for s in summaries) else 1


def cmd_status(args) -> int:
    from .status import folder_status, planned_status

    if _has_grid_flags(args):
        from .dryrun import plan_experiment

        status = planned_status(plan_experiment(_experiment(args)))
    else:
        status = folder_status(args.results or Path("results"))
    if args.json:
        print(json.dumps(status.as_dict(), indent=1))
        return 0
    table = Table(title=Text(f"{status.results}" + (" (planned grid)" if status.planned else " (records and locks)")))
    for col in ["state", "dataset", "method", "N", "seed", "protocol", "variant", "run id", "detail"]:
        table.add_column(col)
    for r in status.rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in (r.state, r.dataset, r.method, r.size, r.seed,
                                                                  r.protocol, r.variant, r.run_id, r.detail)))
    stdout.print(table)
    stdout.print(Text(", ".join(f"{n} {state}" for state, n in sorted(status.counts().items())) or "no records"))
    return 0


def cmd_submit(args) -> int:
    from . import submit as sub

    experiment = _experiment(args)
    slurm = experiment.slurm
    opts = {k: v for k, v in {"partition": args.partition, "gpus_per_task": args.gpus_per_task,
                              "cpus_per_task": args.cpus_per_task, "mem_gb": args.mem_gb, "time": args.time,
                              "array_throttle": args.array_throttle, "account": args.account, "qos": args.qos,
                              "lock_expiry": args.lock_expiry}.items() if v is not None}
    slurm = slurm.model_copy(update=opts)
    folder = experiment.runs[0].results_dir / "submitit"
    if args.slurm:
        executor = sub.slurm_executor(folder, partition=slurm.partition, gpus_per_task=slurm.gpus_per_task,
                                      cpus_per_task=slurm.cpus_per_task, mem_gb=slurm.mem_gb, time_limit=slurm.time,
                                      array_throttle=slurm.array_throttle, account=slurm.account, qos=slurm.qos)
    else:
        executor = sub.local_executor(folder, time_limit=slurm.time, gpus_per_task=slurm.gpus_per_task)
    log = _log(args.quiet)
    result = sub.submit(experiment.runs, executor, workers=args.workers or (slurm.array_throttle if args.local else None),
                        local=args.local, lock_expiry_s=slurm.lock_expiry, log_every_s=args.log_every,
                        expert_tasks=slurm.array_throttle or 1, log=log)
    jobs = {"experts": [str(j.job_id) for j in result.expert_jobs], "cells": [str(j.job_id) for j in result.cell_jobs],
            "folder": str(result.folder)}
    if args.wait:
        jobs["results"] = [j.result() for j in result.cell_jobs]
    print(json.dumps(jobs, indent=1))
    log(f"logs: {result.folder}; progress: mmdd-bench status --results {experiment.runs[0].results_dir}")
    return 0


def cmd_rerun(args) -> int:
    from .rerun import rerun_record

    log = _log(args.quiet)
    with _reporter(args.quiet, args.log_every) as progress:
        outcome = rerun_record(args.record, results_dir=args.results, cache_dir=args.cache_dir,
                               data_root=args.data_root, device=args.device, log=log, progress=progress)
    print(json.dumps(outcome.as_dict(), indent=1))
    return 0 if outcome.reproduced else 1


def cmd_eval(args) -> int:
    from . import api
    from .params import parse_set_options
    from .records import record_path

    overrides = parse_set_options(args.overrides)
    if set(overrides) - {"eval"}:
        raise UsageError(f"mmdd-bench eval takes --set eval.NAME=VALUE only, got scopes {sorted(overrides)}")
    with _reporter(args.quiet, args.log_every) as progress:
        rec = api.evaluate_artifact(args.artifact, results_dir=args.results, cache_dir=args.cache_dir,
                                    data_root=args.data_root, dataset=args.dataset, protocol=args.protocol,
                                    backbone=args.backbone, seed=args.seed, overrides=overrides.get("eval", {}),
                                    device=args.device or "auto", progress=progress, skip_done=args.skip_done)
    print(json.dumps({"artifact": str(args.artifact), "dataset": rec.dataset, "backbone": rec.backbone,
                      "distilled_backbone": rec.distilled_backbone, "protocol": rec.protocol,
                      "protocol_version": rec.protocol_version, "params": rec.protocol_params, "seed": rec.seed,
                      "eval_variant": rec.eval_variant, "mean": rec.metrics["mean"], "std": rec.metrics["std"],
                      "per_student": rec.metrics["per_student"], "lrs": rec.eval_lrs, "notes": rec.notes,
                      "record": str(record_path(args.results, rec.run_id))}, indent=1))
    return 0


def cmd_show(args) -> int:
    from .reports.gallery import render_artifact
    from .resources import resolve_device

    out = args.out or Path(args.artifact).with_suffix(".gallery.png")
    print(render_artifact(args.artifact, out, args.max_items, args.data_root, args.cache_dir, resolve_device(args.device)))
    return 0


def cmd_report(args) -> int:
    from . import api

    for path in api.report(args.results, html=args.html, data_root=args.data_root, cache_dir=args.cache_dir):
        print(path)
    return 0


def cmd_list(args) -> int:
    import fnmatch

    if args.what == "methods":
        from .method import METHODS

        for name in METHODS.names(args.pattern):
            cls = METHODS.get(name)
            print(f"{name}\t{cls.default_protocol}\t{cls.description}")
    elif args.what == "datasets":
        from .data import DATASETS

        for name, (_, backbone, desc) in DATASETS.items():
            if fnmatch.fnmatchcase(name, args.pattern):
                print(f"{name}\tbackbone={backbone}\t{desc}")
    elif args.what == "backbones":
        from .encoders import BACKBONE_NAMES

        for name, desc in BACKBONE_NAMES.items():
            print(f"{name}\t{desc}")
    else:
        from .protocols import PROTOCOLS

        for name in PROTOCOLS.names(args.pattern):
            cls = PROTOCOLS.get(name)
            print(f"{name}\tv{cls.version}\taccepts {','.join(cls.accepts)}\t{cls.description}")
    return 0


def cmd_cache(args) -> int:
    import shutil

    kinds = CACHE_KINDS if args.what == "all" else [args.what]
    table = Table(title=Text(f"cache {args.cache_dir}"))
    table.add_column("what")
    table.add_column("files", justify="right")
    table.add_column("MiB", justify="right")
    for kind in kinds:
        folder = args.cache_dir / kind
        files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
        table.add_row(kind, str(len(files)), f"{sum(p.stat().st_size for p in files) / 2**20:.1f}")
        if args.action == "clear" and folder.is_dir():
            shutil.rmtree(folder)
    stdout.print(table)
    if args.action == "clear":
        stdout.print(f"cleared: {', '.join(kinds)}")
    return 0


def cmd_experts(args) -> int:
    """Experts are what trajectory-matching methods read; building them here uses the very settings a run
    would, so a later ``mmdd-bench run --methods mtt-vl`` with the same ``--set`` finds them in the cache."""
    from . import api
    from .params import parse_set_options

    overrides = parse_set_options(args.overrides)
    if set(overrides) - {"mtt-vl"}:
        raise UsageError(f"mmdd-bench experts takes --set mtt-vl.NAME=VALUE only, got scopes {sorted(overrides)}")
    log = _log(args.quiet)
    with _reporter(args.quiet, args.log_every) as progress:
        summary = api.train_experts(args.dataset, cache_dir=args.cache_dir, data_root=args.data_root,
                                    backbone=args.backbone, num_experts=args.num_experts, epochs=args.epochs,
                                    overrides=overrides.get("mtt-vl", {}), device=args.device,
                                    progress=progress, log=log)
    log(f"{summary['num_experts']} experts x {summary['epochs_asked']} epochs in {summary['path']}: "
        f"{summary['bytes_per_expert'] / 2**20:.1f} MiB per expert ({summary['storage_dtype']}), "
        f"{summary['bytes_total'] / 2**20:.1f} MiB in all; trained here in {summary['train_s']:.0f} s")
    print(json.dumps(summary, indent=1))
    return 0


def cmd_data(args) -> int:
    """Load a dataset and check it: the JSON, the images' headers (no bomb is decoded), leakage between
    splits, duplicates and empty captions. Exit 2 when an image cannot be used."""
    import warnings

    from .data import load_dataset
    from .data.validate import validate

    with warnings.catch_warnings(), _reporter(False, args.log_every) as progress:
        warnings.simplefilter("ignore")  # the same problems are in the report below
        ds = load_dataset(args.dataset, args.data_root, args.cache_dir, progress)
    report = validate(ds, images=not args.skip_images)
    print(json.dumps({"dataset": ds.name, "root": str(ds.root),
                      "train": {"images": len(ds.train.image_paths), "pairs": ds.train.n_pairs},
                      "val": {"images": len(ds.val.image_paths), "captions": len(ds.val.captions)},
                      "test": {"images": len(ds.test.image_paths), "captions": len(ds.test.captions)},
                      "warnings": report.warnings, "errors": report.errors}, indent=1))
    if report.errors:
        raise DataError(f"{ds.name} at {ds.root}: " + "; ".join(report.errors) + ". Replace or remove those files "
                        "and their JSON entries.")
    return 0


COMMANDS = {"run": cmd_run, "eval": cmd_eval, "show": cmd_show, "cache": cmd_cache, "report": cmd_report, "list": cmd_list, "data": cmd_data,
            "experts": cmd_experts, "status": cmd_status, "submit": cmd_submit, "rerun": cmd_rerun}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "cache_dir"):
        args.cache_dir_flag = args.cache_dir  # an experiment file's cache_dir applies unless --cache-dir is given
        args.cache_dir = (args.cache_dir or default_cache_dir()).expanduser()
    try:
        return COMMANDS[args.command](args)
    except MMDDError as exc:
        stderr.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False)
        return 2
    except KeyboardInterrupt:
        stderr.print("interrupted; finished cells are kept and a rerun resumes after them")
        return 130


if __name__ == "__main__":
    sys.exit(main())
