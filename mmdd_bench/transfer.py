"""Transfer evaluations: a set distilled with one backbone (A), scored with another (B).

Distillation fits a set to A's image encoder; scoring it with B's asks how much of the gain survives another
architecture (MTT-VL's and CovMatch's cross-architecture tables). Which sets B can read, and how their images
become B's inputs, is the protocols' business (``protocols/compat.py``); this module says where a set came
from, so that its record names A (``distilled_backbone``) and leaderboards never merge it with B's own sets,
and lists the sets of a results folder distilled with one backbone (what ``scripts/reproduce_transfer.sh``
scores with the other):

    python -m mmdd_bench.transfer --results results --distilled-with tiny --size 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .distilled import DistilledSet
from .records import read_records


def distilled_with(distilled: DistilledSet) -> tuple[str | None, str | None]:
    """(backbone name, weights id) a set was distilled with: its metadata (the runner writes both), else the
    backbone its ``encoder_id`` names; (None, None) when it says neither, and for a reference set (the whole
    training split, which no backbone made)."""
    if distilled.reference is not None:
        return None, None
    name, weights = distilled.meta.get("backbone"), distilled.meta.get("backbone_weights")
    if isinstance(name, str) and name:
        return name, weights if isinstance(weights, str) and weights else None
    if distilled.encoder_id and ":" in distilled.encoder_id:
        name, _, weights = distilled.encoder_id.partition(":")
        return name, weights or None
    return None, None


def transfer_source(distilled: DistilledSet, backbone: str, weights: str) -> tuple[str | None, str | None]:
    """A's (name, weights id) when scoring ``distilled`` with backbone ``backbone`` (weights ``weights``) is a
    transfer, else (None, None): the same backbone, or a set that does not say where it came from (scored as
    before, as the evaluating backbone's own)."""
    name, source_weights = distilled_with(distilled)
    if name is None or (name == backbone and source_weights in (None, weights)):
        return None, None
    return name, source_weights


def sets_distilled_with(results_dir: Path, backbone: str, size: int | None = None) -> list[Path]:
    """The saved sets (``<results>/artifacts/*.json``) that harness runs distilled with ``backbone`` (at ``size``
    pairs), from the folder's ok, non-debug records: one path per set, in the order of their names. Sets a
    record points outside ``artifacts/`` to are left out (records are untrusted)."""
    results_dir = Path(results_dir)
    root = (results_dir / "artifacts").resolve()
    found = set()
    for rec in read_records(results_dir):
        if (rec.status != "ok" or rec.debug or rec.source != "run" or rec.distilled_backbone or not rec.artifact
                or rec.backbone != backbone or (size is not None and rec.size != size)):
            continue
        path = (results_dir / rec.artifact).resolve()
        if root in path.parents and path.with_suffix(".json").is_file() and path.with_suffix(".safetensors").is_file():
            found.add(path.with_suffix(".json"))
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmdd_bench.transfer",
                                     description="list the saved sets harness runs distilled with one backbone")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--distilled-with", required=True, metavar="BACKBONE")
    parser.add_argument("--size", type=int, default=None, help="only sets of this many pairs")
    args = parser.parse_args(argv)
    for path in sets_distilled_with(args.results, args.distilled_with, args.size):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["distilled_with", "main", "sets_distilled_with", "transfer_source"]
