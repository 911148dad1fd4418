#!/usr/bin/env python
"""Adopt a regenerated grid into the committed results: its records in, the records it supersedes out.

A regeneration (``benchmarks/time_reproduce.py --workdir W``, a rerun after a code change) writes a results folder
of its own. Adopting it copies every record into ``results/runs`` (the same run id replaces the old record) and
removes each committed record that a record of the run replaces with fewer students (a grid cut from 2 students to
1: ``scripts/compare_records.py`` pairs them on the students both have). The cut must be exact: student k trains
from the same seed whatever the count, so a cut record that differs from its reference's first students means the
code or the machine changed the numbers, and nothing is adopted unless ``--allow-changed`` says that is known and
wanted. Committed records the run does not touch stay. Then ``mmdd-bench report --results results --html``.

    python scripts/adopt_records.py results W/results
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from mmdd_bench.records import atomic_write_text, read_records

HERE = Path(__file__).resolve().parent


def _compare_records():
    spec = importlib.util.spec_from_file_location("compare_records", HERE / "compare_records.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def adopt(results: Path, run: Path, allow_changed: bool = False) -> dict:
    """Copy ``run``'s records into ``results`` and drop the ones they supersede; what was done, as a dict."""
    report = _compare_records().compare(read_records(results), read_records(run))
    superseded = [c for c in report["cells"] if c["paired_by"] == "first students"]
    changed = [c for c in superseded if not c["identical_metrics"]]
    if changed and not allow_changed:
        names = ", ".join(f"{c['method']} N={c['size']} seed {c['seed']} {c['protocol']}" for c in changed[:5])
        raise SystemExit(f"{len(changed)} cut record(s) differ from the first students of the records they would "
                         f"replace ({names}{', ...' if len(changed) > 5 else ''}): nothing adopted. Find out why "
                         "(python scripts/compare_records.py RESULTS RUN), or pass --allow-changed if it is known")
    sources = sorted((run / "runs").glob("*.json"))
    (results / "runs").mkdir(parents=True, exist_ok=True)
    for source in sources:
        atomic_write_text(results / "runs" / source.name, source.read_text())  # a report never reads half a record
    # A record the run itself wrote is never removed, even where it also holds the uncut cell.
    removed = sorted({c["reference_run_id"] for c in superseded} - {source.stem for source in sources})
    for run_id in removed:
        (results / "runs" / f"{run_id}.json").unlink()
    return {"copied": len(sources), "removed": removed, "changed": len(changed),
            "identical": report["summary"]["identical"], "paired": report["summary"]["paired"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the results folder to update (e.g. results)")
    parser.add_argument("run", type=Path, help="the regenerated run's results folder")
    parser.add_argument("--allow-changed", action="store_true",
                        help="adopt even where a cut record differs from the first students it replaces")
    args = parser.parse_args()
    for folder in (args.results, args.run):
        if not (folder / "runs").is_dir():
            raise SystemExit(f"{folder}: no runs/ folder of records; pass a results folder (e.g. results)")
    done = adopt(args.results, args.run, args.allow_changed)
    print(f"copied {done['copied']} records; removed {len(done['removed'])} superseded by fewer students; "
          f"{done['identical']}/{done['paired']} paired cells identical ({done['changed']} cut cells changed)")


if __name__ == "__main__":
    main()
