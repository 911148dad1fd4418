"""``mmdd-bench``: one command line over methods x datasets x sizes x seeds (run, eval, report, list, data).

Results go to stdout, logs and progress bars to stderr. Usage and data errors exit with code 2 and a
message that says what to fix; a grid in which some cells failed exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from platformdirs import user_cache_dir
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import MMDDError, UsageError

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

    ev = sub.add_parser("eval", help="evaluate a saved distilled set (.json/.safetensors) and record the result")
    common(ev)
    ev.add_argument("artifact", type=Path)
    ev.add_argument("--dataset", default=None, help="default: the dataset the set was distilled from")
    ev.add_argument("--protocol", default=None, help="default: the method's own protocol")
    ev.add_argument("--backbone", default=None, help="default: the backbone the set was distilled with")
    ev.add_argument("--seed", type=int, default=0)
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

    data = sub.add_parser("data", help="prepare (embedded) or check (Flickr30K/COCO) a dataset")
    data.add_argument("dataset")
    data.add_argument("--data-root", default=None)
    data.add_argument("--cache-dir", type=Path, default=None)
    return parser


class _ProgressReporter:
    """Adapts the (what, done, total) callbacks of methods and protocols to one rich progress bar each."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if what not in self.tasks:
            self.tasks[what] = self.progress.add_task(what, total=total)
        self.progress.update(self.tasks[what], completed=done, total=total)
        if done >= total:
            self.progress.remove_task(self.tasks.pop(what))


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=stderr, transient=True, disable=quiet)


def _summary_table(records) -> Table:
    table = Table(title="mmdd-bench results (mean over students)")
    for col in ["dataset", "method", "size", "seed", "protocol", "status", "i2t R@1", "t2i R@1", "r_mean", "distill s"]:
        table.add_column(col, justify="right" if col not in ("dataset", "method", "protocol", "status") else "left")
    for r in records:
        m = r.metrics.get("mean", {})
        i2t, t2i, mean = (f"{m[k]:.2f}" if k in m else "-" for k in ("i2t_R@1", "t2i_R@1", "r_mean"))
        table.add_row(r.dataset, r.method, str(r.size), str(r.seed), r.protocol, r.status + (" (debug)" if r.debug else ""), i2t, t2i, mean,
                      str(r.timings.get("distill_s", "-")))
    return table


def cmd_run(args) -> int:
    from dataclasses import asdict

    from .harness import Harness, RunConfig
    from .params import parse_set_options
    from .reports.leaderboard import write_leaderboards

    config = RunConfig(methods=args.methods, datasets=args.datasets, sizes=args.sizes, seeds=args.seeds,
                       results_dir=args.results, cache_dir=args.cache_dir, backbone=args.backbone,
                       protocols=args.protocol, data_root=args.data_root, device=args.device,
                       overrides=parse_set_options(args.overrides), force=args.force,
                       retry_failed=args.retry_failed, debug=args.debug)
    log = (lambda s: None) if args.quiet else (lambda s: stderr.print(s, highlight=False))
    if args.executor == "ray":
        from .executors import run_with_ray

        records = run_with_ray(config, args.ray_address, log)
    else:
        with _progress(args.quiet) as progress:
            records = Harness(config, log=log, progress=_ProgressReporter(progress)).run()
    write_leaderboards(args.results)
    if args.json:
        for r in records:
            print(json.dumps(asdict(r)))
    else:
        stdout.print(_summary_table(records))
        stdout.print(f"records: {args.results / 'runs'}  leaderboard: {args.results / 'leaderboard'}")
    return 1 if any(r.status != "ok" for r in records) else 0


def cmd_eval(args) -> int:
    from .data import load_dataset
    from .distilled import DistilledSet
    from .encoders import build_backbone
    from .harness import evaluate_artifact, resolve_device
    from .params import apply_overrides, parse_set_options
    from .protocols import get_protocol
    from .records import record_path

    distilled = DistilledSet.load(args.artifact)
    meta = distilled.meta
    dataset_name = args.dataset or meta.get("dataset")
    if not dataset_name:
        raise MMDDError(f"{args.artifact} does not say which dataset it comes from; pass --dataset.")
    protocol_name = args.protocol
    if protocol_name is None:  # the method's own protocol when it can read this set, else frozen-text
        from .method import METHODS
        from .protocols import PROTOCOLS

        own = METHODS.get(meta["method"]).default_protocol if meta.get("method") in METHODS else "frozen-text"
        protocol_name = own if distilled.text_kind in PROTOCOLS.get(own).accepts else "frozen-text"
    dataset = load_dataset(dataset_name, args.data_root, args.cache_dir)
    backbone = build_backbone(args.backbone or meta.get("backbone") or dataset.default_backbone, args.cache_dir)
    protocol = get_protocol(protocol_name)
    params = apply_overrides(protocol.default_params(dataset_name), parse_set_options(args.overrides).get("eval", {}), "eval")
    device = resolve_device(args.device)
    with _progress(args.quiet) as progress:
        rec = evaluate_artifact(args.artifact, distilled, dataset, backbone, protocol_name, params, args.seed, device,
                                args.cache_dir, args.results, _ProgressReporter(progress))
    print(json.dumps({"artifact": str(args.artifact), "dataset": dataset_name, "protocol": protocol_name,
                      "protocol_version": rec.protocol_version, "params": rec.protocol_params,
                      "mean": rec.metrics["mean"], "std": rec.metrics["std"],
                      "per_student": rec.metrics["per_student"], "lrs": rec.eval_lrs, "notes": rec.notes,
                      "record": str(record_path(args.results, rec.run_id))}, indent=1))
    return 0


def cmd_show(args) -> int:
    from .harness import resolve_device
    from .reports.gallery import render_artifact

    out = args.out or Path(args.artifact).with_suffix(".gallery.png")
    print(render_artifact(args.artifact, out, args.max_items, args.data_root, args.cache_dir, resolve_device(args.device)))
    return 0


def cmd_report(args) -> int:
    from .reports.leaderboard import leaderboard, records_frame, write_leaderboards

    for path in write_leaderboards(args.results):
        stdout.print(str(path))
    if args.html:
        import torch

        from .records import read_records
        from .reports.gallery import render_artifact
        from .reports.html import gallery_sources, write_page

        records = read_records(args.results)
        galleries, notes = {}, []
        for key, rec in gallery_sources(records).items():
            out = args.results / "gallery" / f"{key[0]}__{key[1]}__{key[2]}.png"
            try:
                render_artifact(args.results / rec.artifact, out, 12, args.data_root, args.cache_dir, torch.device("cpu"))
                galleries[key] = out
            except MMDDError as exc:
                notes.append(f"no gallery for {' / '.join(key)}: {exc}")
        page = write_page(args.results, leaderboard(records_frame(records)), galleries, notes)
        stdout.print(str(page))
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
    table = Table(title=f"cache {args.cache_dir}")
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
    """Experts are what ``mtt-vl`` reads; building them here uses the very settings a run would, so a
    later ``mmdd-bench run --methods mtt-vl`` with the same ``--set`` finds them in the cache."""
    from .data import load_dataset
    from .encoders import build_backbone
    from .harness import resolve_device
    from .method import get_method
    from .params import apply_overrides, parse_set_options

    overrides = parse_set_options(args.overrides)
    if set(overrides) - {"mtt-vl"}:
        raise UsageError(f"mmdd-bench experts takes --set mtt-vl.NAME=VALUE only, got scopes {sorted(overrides)}")
    method = get_method("mtt-vl")
    ds = load_dataset(args.dataset, args.data_root, args.cache_dir)
    params = apply_overrides(method.default_params(100, ds.name), overrides.get("mtt-vl", {}), scope="mtt-vl")
    num = args.num_experts or params.num_experts
    epochs = args.epochs or params.expert_train_epochs
    device = resolve_device(args.device)
    backbone = build_backbone(args.backbone or ds.default_backbone, args.cache_dir).to(device)
    from .data.images import ImageStore
    from .experts import ExpertStore

    store = ExpertStore(args.cache_dir, ds, backbone, params.expert_settings())
    images = ImageStore(ds.train.image_paths, backbone.image_size, args.cache_dir, ds.train.fingerprint,
                        backbone.mean, backbone.std)
    log = (lambda s: None) if args.quiet else (lambda s: stderr.print(s, highlight=False))
    with _progress(args.quiet) as progress:
        summary = store.ensure(num, epochs, ds, backbone, images, device, _ProgressReporter(progress), log)
    per_expert = summary["bytes_per_expert"] / 2**20
    log(f"{num} experts x {epochs} epochs in {store.root}: {per_expert:.1f} MiB per expert "
        f"({summary['storage_dtype']}), {summary['bytes_total'] / 2**20:.1f} MiB in all; trained here in {summary['train_s']:.0f} s")
    print(json.dumps(summary, indent=1))
    return 0


def cmd_data(args) -> int:
    from .data import load_dataset

    ds = load_dataset(args.dataset, args.data_root, args.cache_dir)
    print(json.dumps({"dataset": ds.name, "root": str(ds.root),
                      "train": {"images": len(ds.train.image_paths), "pairs": ds.train.n_pairs},
                      "val": {"images": len(ds.val.image_paths), "captions": len(ds.val.captions)},
                      "test": {"images": len(ds.test.image_paths), "captions": len(ds.test.captions)}}, indent=1))
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
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        stderr.print("interrupted; finished cells are kept and a rerun resumes after them")
        return 130


if __name__ == "__main__":
    sys.exit(main())
