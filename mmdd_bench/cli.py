"""``mmdd-bench``: one command line over methods x datasets x sizes x seeds (run, eval, report, list, data).

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

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: ./results)")
        p.add_argument("--cache-dir", type=Path, default=None,
                       help="cache for generated data, decoded images, weights, features (default: MMDD_BENCH_CACHE or the user cache)")
        p.add_argument("--data-root", default=None, help="folder with flickr30k/ and coco/ (default: MMDD_BENCH_DATA)")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
        p.add_argument("--quiet", action="store_true", help="no progress or log lines on stderr")
        log_every(p)

    def log_every(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log-every", type=float, default=30.0, metavar="SECONDS",
                       help="when stderr is not a terminal (nohup, CI, SLURM): one progress line per loop every "
                            "SECONDS instead of a live bar (default 30)")

    run = sub.add_parser("run", help="distill and evaluate a grid of cells")
    common(run)
    run.add_argument("--methods", type=_csv(), default=["random", "herding"])
    run.add_argument("--datasets", type=_csv(), default=["shapes"])
    run.add_argument("--sizes", type=_csv(int), default=[50, 100])
    run.add_argument("--seeds", type=_csv(int), default=[0])
    run.add_argument("--backbone", default=None, help="paper | tiny | clip-<model>[@tag] (default: per dataset)")
    run.add_argument("--protocol", type=_csv(), default=["auto"],
                     help="auto (each method's own) | frozen-text | trainable-text, comma-separated for several")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SCOPE.NAME=VALUE",
                     help="override a parameter: METHOD.NAME=VALUE or eval.NAME=VALUE (repeatable)")
    run.add_argument("--force", action="store_true", help="redo cells that already have a record")
    run.add_argument("--retry-failed", action="store_true", help="rerun only the cells whose record says failed")
    run.add_argument("--debug", action="store_true",
                     help="smoke run (3 iterations, 1 expert, 1 student x 2 epochs): recorded as debug, never in a leaderboard")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local: cells in this process (torchrun/SLURM ranks shard them); ray: one Ray task per cell")
    run.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    run.add_argument("--json", action="store_true", help="print the records as JSON lines instead of a table")
    run.add_argument("--deterministic", action="store_true",
                     help="torch's deterministic algorithms (bit-identical reruns and resumes on GPUs; CPUs need none)")
    run.add_argument("--lock-timeout", type=float, default=6 * 3600.0, metavar="SECONDS",
                     help="how long to wait for a distillation another process is doing (default 6 h)")

    ev = sub.add_parser("eval", help="evaluate a saved distilled set (.json/.safetensors) and record the result")
    common(ev)
    ev.add_argument("artifact", type=Path)
    ev.add_argument("--dataset", default=None, help="default: the dataset the set was distilled from")
    ev.add_argument("--protocol", default=None, help="default: the method's own protocol")
    ev.add_argument("--backbone", default=None, help="default: the backbone the set was distilled with")
    ev.add_argument("--seed", type=int, default=None, help="default: the seed the set was distilled with")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.NAME=VALUE")

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


def cmd_run(args) -> int:
    from dataclasses import asdict

    from . import api
    from .params import parse_set_options
    from .plan import RunConfig
    from .reports.writer import write_leaderboards
    from .resources import shard_from_environment

    config = RunConfig(methods=args.methods, datasets=args.datasets, sizes=args.sizes, seeds=args.seeds,
                       results_dir=args.results, cache_dir=args.cache_dir, backbone=args.backbone,
                       protocols=args.protocol, data_root=args.data_root, device=args.device,
                       overrides=parse_set_options(args.overrides), force=args.force,
                       retry_failed=args.retry_failed, debug=args.debug, lock_timeout_s=args.lock_timeout,
                       deterministic=args.deterministic)
    rank, world = shard_from_environment()
    lead = rank == 0  # under torchrun/SLURM only rank 0 draws progress bars and writes leaderboards
    log = _log(args.quiet)
    with _reporter(args.quiet or not lead, args.log_every) as progress:
        summary = api.run(config, log=log, progress=progress, executor=args.executor, ray_address=args.ray_address)
    if lead:
        write_leaderboards(config.results_dir)
    if args.json:
        for r in summary.records:
            print(json.dumps(asdict(r)))
    else:
        stdout.print(_summary_table(summary.records))
        stdout.print(Text(f"records: {config.results_dir / 'runs'}  leaderboard: {config.results_dir / 'leaderboard'}"))
    if summary.missing:
        why = []
        if summary.busy:
            why.append(f"{len(summary.busy)} held by another process (rerun once it is done to confirm)")
        if summary.refused:
            why.append(f"{len(summary.refused)} whose record file cannot be replaced (see the log)")
        failed = len({r.run_id for r in summary.failed})
        if failed:
            why.append(f"{failed} failed")
        stderr.print(Text(f"{len(summary.missing)} of {len(summary.planned)} planned evaluations have no ok record: "
                          + "; ".join(why)))
    return 0 if summary.complete else 1


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
                                    device=args.device, progress=progress)
    print(json.dumps({"artifact": str(args.artifact), "dataset": rec.dataset, "protocol": rec.protocol,
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
            "experts": cmd_experts}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "cache_dir"):
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
