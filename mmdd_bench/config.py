"""Experiment files: ``mmdd-bench run --config FILE.yaml|.toml`` holds everything the command line can say.

A file is validated by pydantic models (unknown keys are errors with a did-you-mean, values are type-checked)
and every ``set`` entry goes through ``params.apply_overrides``, the very check ``--set`` gets, before any
work. Layout (YAML; TOML has the same keys)::

    experiment: {name: ..., paper: ..., table: ..., protocol: ..., notes: [...]}   # what this file reproduces
    methods: [random, covmatch]        # the grid: methods x datasets x sizes x seeds
    datasets: [flickr30k]
    sizes: [100, 200, 500]
    seeds: [0, 1, 2]
    backbone: paper                    # default: each dataset's own
    protocols: [auto]
    set: {covmatch: {iterations: 2000}, eval: {epochs: 50}}     # like --set SCOPE.NAME=VALUE
    cells:                             # overrides for one dataset and/or size; they win over ``set``
      - {dataset: flickr30k, size: 500, set: {covmatch: {lam: 0.5}}}
    runs:                              # optional: several grids in one file (an ablation table); each
      - {set: {covmatch: {lam: 0}}}    # entry inherits the top-level keys it does not set
    results: my-results                # and the command's options: cache_dir, data_root, device, force,
    slurm: {partition: gpu, time: "12:00:00", array_throttle: 8}   # retry_failed, executor, lock_timeout

Precedence: command-line flags > a run entry > the file's top level > the defaults; ``--set`` is merged
name by name (and wins over ``cells``). In a file of ``runs``, ``--methods`` and ``--sizes`` pick from each
run's own instead (a run left with none is dropped): the runs of an ablation table differ on purpose. ``--print-config`` writes the resolved experiment (``resolve.py``).
"""

from __future__ import annotations

import difflib
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from .errors import UsageError
from .locks import DEFAULT_EXPIRY_S
from .plan import EVAL_SCOPE, CellOverride, RunConfig

ScopeSets = dict[str, dict[str, Any]]
GRID_DEFAULTS: dict[str, Any] = {"methods": ["random", "herding"], "datasets": ["shapes"], "sizes": [50, 100],
                                 "seeds": [0], "protocols": ["auto"]}
LIST_FIELDS = ("methods", "datasets", "sizes", "seeds", "protocols")


def _as_list(value: Any) -> Any:
    """``0`` -> ``[0]`` and ``"0,1,2"`` -> ``["0", "1", "2"]``, as on the command line."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, int | float):
        return [value]
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Meta(_Strict):
    """What a file reproduces: shown by ``--dry-run`` and copied into ``--print-config``."""

    name: str = ""
    paper: str = ""
    table: str = ""
    protocol: str = ""
    notes: list[str] = Field(default_factory=list)


class CellEntry(_Strict):
    dataset: str | None = None
    size: int | None = Field(None, ge=1)
    set: ScopeSets = Field(default_factory=dict)


class Grid(_Strict):
    """The keys that describe one grid (the top level of a file, or one entry of ``runs``)."""

    methods: list[str] | None = None
    datasets: list[str] | None = None
    sizes: list[int] | None = None
    seeds: list[pydantic.NonNegativeInt] | None = None
    backbone: str | None = None
    protocols: list[str] | None = None
    set: ScopeSets | None = None
    cells: list[CellEntry] | None = None
    debug: bool | None = None
    deterministic: bool | None = None

    @pydantic.field_validator(*LIST_FIELDS, mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _as_list(value)


class SlurmOptions(_Strict):
    partition: str | None = None
    gpus_per_task: int = Field(1, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    time: str = "24:00:00"
    array_throttle: int | None = Field(None, ge=1)
    account: str | None = None
    qos: str | None = None
    lock_expiry: float = Field(DEFAULT_EXPIRY_S, gt=0)


class ExperimentFile(Grid):
    experiment: Meta = Field(default_factory=Meta)
    runs: list[Grid] | None = None
    results: str | None = None
    cache_dir: str | None = None
    data_root: str | None = None
    device: str | None = None
    force: bool | None = None
    retry_failed: bool | None = None
    lock_timeout: float | None = Field(None, ge=0)
    executor: Literal["local", "ray"] | None = None
    ray_address: str | None = None
    workers: int | None = Field(None, ge=1)
    slurm: SlurmOptions | None = None


@dataclass
class Experiment:
    """An experiment ready to plan: its grids as ``RunConfig``s, what it reproduces, how it is executed."""

    meta: Meta
    runs: list[RunConfig]
    source: str = "command line"
    executor: str = "local"
    ray_address: str | None = None
    workers: int = 1  # local processes sharing the grid (``run --workers``)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    options: dict[str, Any] = field(default_factory=dict)  # the machine options as given (results, ...)


# ---- reading -----------------------------------------------------------------------------------------
def read_file(path: Path) -> dict:
    """The file's content as a dict: YAML (``.yaml``/``.yml``, safe loader) or TOML (``.toml``)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text())
        elif suffix == ".toml":
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        else:
            raise UsageError(f"--config {path}: expected a .yaml, .yml or .toml file")
    except yaml.YAMLError as exc:
        raise UsageError(f"--config {path} is not valid YAML: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--config {path} is not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of keys (methods:, sizes:, ...), got {type(data).__name__}")
    return data


def _model_for(loc: tuple) -> type[BaseModel]:
    """The model that owns the key at ``loc`` (for did-you-mean suggestions)."""
    model: type[BaseModel] = ExperimentFile
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        nested = {"experiment": Meta, "runs": Grid, "cells": CellEntry, "slurm": SlurmOptions}.get(str(part))
        if nested is None:
            return model
        model = nested
    return model


def parse_experiment(data: dict, source: str) -> ExperimentFile:
    try:
        return ExperimentFile.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        where = ".".join(str(p) for p in loc) or "file"
        if first["type"] == "extra_forbidden":
            known = list(_model_for(loc).model_fields)
            close = difflib.get_close_matches(str(loc[-1]), known, n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise UsageError(f"{source}: unknown key {where!r}.{hint} Known: {', '.join(known)}.") from None
        raise UsageError(f"{source}: {where}: {first['msg']} (got {first.get('input')!r})") from None


def load_experiment(path: Path) -> ExperimentFile:
    return parse_experiment(read_file(path), str(path))


# ---- merging -----------------------------------------------------------------------------------------
def _merge_sets(*layers: ScopeSets | None) -> ScopeSets:
    out: ScopeSets = {}
    for layer in layers:
        for scope, values in (layer or {}).items():
            if not isinstance(values, dict):
                raise UsageError(f"set.{scope}: expected a mapping of NAME: VALUE, got {values!r}")
            out.setdefault(scope, {}).update(values)
    return out


def check_sets(sets: ScopeSets, methods: list[str], where: str, dataset: str, size: int) -> None:
    """Every override is a known parameter of a method of the run (or ``eval``) with a valid value: the checks
    ``--set`` gets, made now so that the message names the file."""
    from .method import get_method
    from .params import apply_overrides
    from .protocols.base import EvalParams

    for scope, values in sets.items():
        try:
            if scope == EVAL_SCOPE:
                apply_overrides(EvalParams(), values, scope)
            elif scope in methods:
                apply_overrides(get_method(scope).default_params(size, dataset), values, scope)
            else:
                raise UsageError(f"--set {scope}.*: {scope!r} is neither a method in this run ({', '.join(methods)}) "
                                 "nor 'eval'.")
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}" if where else str(exc)) from None


def _sizes_set_by_file(file: ExperimentFile, entry: Grid) -> bool:
    return entry.sizes is not None or file.sizes is not None


def _file_sizes(file: ExperimentFile) -> list[int]:
    return sorted({n for e in file.runs or [] for n in (e.sizes or file.sizes or GRID_DEFAULTS["sizes"])})


def build_experiment(file: ExperimentFile | None, flags: dict[str, Any] | None = None,
                     source: str = "command line", cache_dir: Path | None = None) -> Experiment:
    """The runs of ``file`` with the command-line ``flags`` laid over them (flags as in ``ExperimentFile``;
    ``flags["set"]`` holds the parsed ``--set`` options)."""
    file = file or ExperimentFile()
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    flag_sets = flags.pop("set", None) or {}
    opts = file.model_dump(include={"results", "cache_dir", "data_root", "device", "force", "retry_failed",
                                    "lock_timeout"}, exclude_none=True)
    opts.update({k: v for k, v in flags.items() if k in ("results", "cache_dir", "data_root", "device", "force",
                                                         "retry_failed", "lock_timeout")})
    runs = []
    force_since = time.time() if opts.get("force") else None  # one moment for every run of the file
    dropped_for_sizes = False
    entries = file.runs or [Grid()]
    for index, entry in enumerate(entries):
        where = f"{source}: runs[{index}]" if file.runs else (source if source != "command line" else "")
        grid: dict[str, Any] = dict(GRID_DEFAULTS)
        for layer in (file.model_dump(include=set(Grid.model_fields), exclude_none=True),
                      entry.model_dump(exclude_none=True)):
            grid.update({k: v for k, v in layer.items() if k not in ("set", "cells")})
        own_methods = list(dict.fromkeys(grid["methods"]))
        own_sizes = list(dict.fromkeys(grid["sizes"]))
        grid.update({k: v for k, v in flags.items() if k in Grid.model_fields})
        methods = list(dict.fromkeys(grid["methods"]))
        if file.runs and "methods" in flags:
            # In a file of several runs, --methods picks runs' methods instead of replacing them: the runs
            # differ in sizes, protocols and settings, so `--methods covmatch` means "this file's CovMatch
            # cells", never CovMatch in every other method's run.
            methods = [m for m in own_methods if m in flags["methods"]]
            if not methods:
                continue
        if file.runs and "sizes" in flags and _sizes_set_by_file(file, entry):
            # Likewise --sizes: an ablation run pinned to N=100 is not run at 500 by `--sizes 500`.
            grid["sizes"] = [n for n in own_sizes if n in flags["sizes"]]
            if not grid["sizes"]:
                dropped_for_sizes = True
                continue
        sets = _merge_sets(file.set, entry.set, flag_sets)
        cells = [*(file.cells or []), *(entry.cells or [])]
        # Checked against the run's own methods: a --methods pick leaves the file's other settings valid.
        checked = own_methods if file.runs and "methods" in flags else methods
        check_sets(sets, checked, f"{where} set" if where else "", grid["datasets"][0], grid["sizes"][0])
        overrides = []
        for k, cell in enumerate(cells):
            # the command line wins over the file's per-cell values too
            cell_sets = {scope: {n: v for n, v in values.items() if n not in flag_sets.get(scope, {})}
                         for scope, values in cell.set.items()}
            check_sets(cell_sets, checked, f"{where} cells[{k}].set", cell.dataset or grid["datasets"][0],
                       cell.size or grid["sizes"][0])
            overrides.append(CellOverride(cell.dataset, cell.size, {s: v for s, v in cell_sets.items() if v}))
        runs.append(RunConfig(
            methods=methods, datasets=grid["datasets"], sizes=grid["sizes"], seeds=grid["seeds"],
            results_dir=Path(opts.get("results", "results")), cache_dir=Path(opts.get("cache_dir") or cache_dir or "."),
            backbone=grid.get("backbone"), protocols=grid["protocols"], data_root=opts.get("data_root"),
            device=opts.get("device", "auto"), overrides=sets, force=bool(opts.get("force", False)), force_since=force_since,
            retry_failed=bool(opts.get("retry_failed", False)), debug=bool(grid.get("debug", False)),
            lock_timeout_s=float(opts.get("lock_timeout", 6 * 3600.0)),
            deterministic=bool(grid.get("deterministic", False)), cell_overrides=overrides))
    if not runs and dropped_for_sizes:
        raise UsageError(f"{source}: none of its runs has any of --sizes {','.join(map(str, flags['sizes']))}"
                         + (f" with --methods {','.join(flags['methods'])}" if "methods" in flags else "")
                         + f" (its sizes: {', '.join(map(str, _file_sizes(file)))}). In a file of runs, --sizes picks "
                         "from each run's own sizes; to run other sizes, add them to the file or copy one run "
                         "into a file of its own.")
    if not runs:
        raise UsageError(f"{source}: none of its runs has any of --methods {','.join(flags['methods'])} (its methods: "
                         f"{', '.join(dict.fromkeys(m for e in entries for m in (e.methods or file.methods or [])))}).")
    slurm = file.slurm or SlurmOptions()
    if flags.get("slurm"):
        slurm = slurm.model_copy(update=flags["slurm"])
    return Experiment(meta=file.experiment, runs=runs, source=source,
                      executor=flags.get("executor") or file.executor or "local",
                      ray_address=flags.get("ray_address") or file.ray_address,
                      workers=flags["workers"] if flags.get("workers") is not None else (file.workers or 1), slurm=slurm, options=opts)


__all__ = ["CellEntry", "Experiment", "ExperimentFile", "Grid", "Meta", "SlurmOptions", "build_experiment",
           "check_sets", "load_experiment", "parse_experiment", "read_file"]
