"""The planner: which cells a run holds, with which (resolved) parameters, under which identities.

A cell is (dataset, method, size, seed) evaluated under one or more protocols: one distillation, one
record per protocol. Everything a result depends on is resolved here, before any work: method and
protocol defaults with every ``None`` filled from the backbone, the ``--set`` overrides type- and
range-checked, each method's text kind checked against each protocol it is to be scored with. A plan
that cannot run is refused with a usage error before anything is written.

Identities hash only what can change a result (``params.identity_dict``), and a variant is labelled by
how its resolved parameters differ from the resolved defaults, never by the flags that were typed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.augment import augment_identity
from .data.splits import Dataset
from .encoders import BackboneSpec
from .errors import UsageError
from .method import Method, get_method
from .params import apply_overrides, check_ranges, identity_dict, unset_fields, variant_label
from .protocols import PROTOCOLS, Protocol, get_protocol
from .records import RecordSpec, canonical_id
from .resources import Resources

EVAL_SCOPE = "eval"
# A debugging run: a few iterations, one expert, one short student. Applied to whichever of these fields a
# method's (or the protocol's) parameters have; the records say ``debug`` and leaderboards leave them out.
DEBUG_LIMITS = {"iterations": 3, "num_experts": 1, "epochs": 2, "n_students": 1}


@dataclass(frozen=True)
class CellOverride:
    """``--set``-style overrides for the cells of one dataset and/or size (``None``: every one), from an
    experiment file's ``cells:`` list; they take precedence over the run's global ``overrides``."""

    dataset: str | None = None
    size: int | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def applies(self, dataset: str, size: int | None) -> bool:
        return (self.dataset is None or self.dataset == dataset) and (self.size is None or self.size == size)


@dataclass
class RunConfig:
    methods: list[str]
    datasets: list[str]
    sizes: list[int]
    seeds: list[int]
    results_dir: Path
    cache_dir: Path
    backbone: str | None = None
    protocols: list[str] = field(default_factory=lambda: ["auto"])
    data_root: str | None = None
    device: str = "auto"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    force: bool = False
    # Under ``force``: when this invocation began. A set saved since then is its own (another run of the file,
    # or another worker, made it) and is reused, not distilled again; every older one is redone.
    force_since: float | None = None
    retry_failed: bool = False  # run only evaluations whose last record failed
    debug: bool = False  # smoke run under DEBUG_LIMITS: recorded, but never in a leaderboard
    lock_timeout_s: float = 6 * 3600.0  # how long to wait for a distillation another process is doing
    deterministic: bool = False  # torch's deterministic kernels (recorded in each record's environment)
    cell_overrides: list[CellOverride] = field(default_factory=list)  # per dataset/size, over ``overrides``

    def __post_init__(self) -> None:
        # Absolute paths: Ray workers and SLURM tasks may start in another working directory.
        self.results_dir = Path(self.results_dir).expanduser().absolute()
        self.cache_dir = Path(self.cache_dir).expanduser().absolute()
        if self.force and self.force_since is None:
            self.force_since = time.time()
        if not self.methods or not self.datasets or not self.sizes or not self.seeds:
            raise UsageError("a run needs at least one method, dataset, size and seed")
        bad = [s for s in self.seeds if s < 0]
        if bad:
            raise UsageError(f"--seeds must be >= 0 (numpy seeds are non-negative), got {bad}")

    def overrides_for(self, scope: str, dataset: str, size: int | None = None) -> dict[str, Any]:
        """The overrides of ``scope`` for one dataset and size: the global ones, then each matching cell entry."""
        out = dict(self.overrides.get(scope, {}))
        for entry in self.cell_overrides:
            if entry.applies(dataset, size):
                out.update(entry.overrides.get(scope, {}))
        return out

    def cell_experiment(self, cell: Cell, protocol: str) -> dict[str, Any]:
        """What a record stores of the experiment that made it: enough for ``mmdd-bench rerun`` to plan
        this one evaluation again (the grid narrowed to its cell, the overrides that applied to it)."""
        scopes = {scope: self.overrides_for(scope, cell.dataset, cell.size) for scope in (cell.method, EVAL_SCOPE)}
        return {"methods": [cell.method], "datasets": [cell.dataset], "sizes": [cell.size], "seeds": [cell.seed],
                "backbone": self.backbone, "protocols": [protocol], "set": {k: v for k, v in scopes.items() if v},
                "debug": self.debug, "deterministic": self.deterministic}


def apply_debug_limits(params: Any) -> Any:
    limited = {name: min(getattr(params, name), cap) for name, cap in DEBUG_LIMITS.items() if hasattr(params, name)}
    return dataclasses.replace(params, **limited)


@dataclass(frozen=True)
class Cell:
    dataset: str
    method: str
    size: int
    seed: int
    protocols: tuple[str, ...]


@dataclass
class EvalPlan:
    protocol: str
    params: Any  # resolved EvalParams
    spec: RecordSpec

    @property
    def run_id(self) -> str:
        return self.spec.run_id


@dataclass
class CellPlan:
    cell: Cell
    params: Any  # resolved method parameters
    distill_spec: dict
    distill_id: str
    evals: list[EvalPlan]


class Planner:
    def __init__(self, config: RunConfig, resources: Resources) -> None:
        self.config = config
        self.resources = resources
        self.methods: dict[str, Method] = {m: get_method(m) for m in dict.fromkeys(config.methods)}
        for scope in [*config.overrides, *(s for entry in config.cell_overrides for s in entry.overrides)]:
            if scope != EVAL_SCOPE and scope not in self.methods:
                raise UsageError(f"--set {scope}.*: {scope!r} is neither a method in this run "
                                 f"({', '.join(self.methods)}) nor 'eval'.")
        for name in config.protocols:
            if name not in ("auto", "all"):
                PROTOCOLS.get(name)

    # ---- parameters --------------------------------------------------------------------------------
    def raw_method_params(self, method: Method, size: int, dataset: str, *, overrides: bool = True):
        """Defaults plus overrides, before resolution (``None`` still means "derive it")."""
        params = method.default_params(size, dataset)
        if overrides:
            params = apply_overrides(params, self.config.overrides_for(method.name, dataset, size), scope=method.name)
        return apply_debug_limits(params) if self.config.debug else params

    def method_params(self, method: Method, size: int, dataset: str, backbone: BackboneSpec, *, overrides: bool = True):
        params = method.resolve_params(self.raw_method_params(method, size, dataset, overrides=overrides), backbone)
        check_ranges(params, method.name)
        return params

    def raw_eval_params(self, protocol: Protocol, dataset: str, *, overrides: bool = True, size: int | None = None,
                        method: Method | None = None):
        """The protocol's defaults, then what the method's sets need (``Method.eval_defaults``), then the user's
        overrides; with ``overrides=False``, the protocol's defaults alone (what variant labels compare with)."""
        params = protocol.default_params(dataset)
        if overrides and method is not None and method.eval_defaults(dataset):
            params = apply_overrides(params, method.eval_defaults(dataset), scope=EVAL_SCOPE)
        if overrides:
            params = apply_overrides(params, self.config.overrides_for(EVAL_SCOPE, dataset, size), scope=EVAL_SCOPE)
        return apply_debug_limits(params) if self.config.debug else params

    def eval_params(self, protocol: Protocol, dataset: str, backbone: BackboneSpec, *, overrides: bool = True,
                    size: int | None = None, method: Method | None = None):
        params = protocol.resolve_params(self.raw_eval_params(protocol, dataset, overrides=overrides, size=size,
                                                              method=method), backbone)
        check_ranges(params, EVAL_SCOPE)
        return params

    def sizes(self, method: Method, ds: Dataset) -> list[int]:
        """``--sizes``, or the one size a method's sets have of their own (``full-data``: every pair)."""
        fixed = method.fixed_size(ds)
        return [fixed] if fixed is not None else list(dict.fromkeys(self.config.sizes))

    # ---- the grid ----------------------------------------------------------------------------------
    def plan(self) -> list[Cell]:
        """Every cell of the run, after checking sizes, parameters and method x protocol pairs."""
        cells = []
        for ds_name in dict.fromkeys(self.config.datasets):
            ds = self.resources.dataset(ds_name)
            bb = self.resources.spec_for(ds)
            n_images = len(ds.train.image_paths)
            for size in self.config.sizes:
                if size < 1 or size > n_images:
                    raise UsageError(f"size {size} is outside 1..{n_images}, the number of train images of {ds_name}.")
            for protocol_name in (p for p in self.config.protocols if p not in ("auto", "all")):
                self.eval_params(get_protocol(protocol_name), ds_name, bb)  # type and range errors now
            for method in self.methods.values():
                for size in self.sizes(method, ds):
                    params = self.method_params(method, size, ds_name, bb)
                    own = method.protocol_for(params)
                    kind = method.text_kind(params)
                    readers = [n for n in PROTOCOLS.names() if kind in PROTOCOLS.get(n).accepts]
                    protocols = tuple(dict.fromkeys(q for p in self.config.protocols
                                                    for q in ([own] if p == "auto" else readers if p == "all" else [p])))
                    for name in protocols:
                        accepts = PROTOCOLS.get(name).accepts
                        if kind not in accepts:
                            raise UsageError(
                                f"{method.name} (N={size}) makes sets with {kind} text, which protocol {name!r} cannot "
                                f"read (it reads {', '.join(accepts)}). Score it under --protocol auto or one of: "
                                f"{', '.join(n for n in PROTOCOLS.names() if kind in PROTOCOLS.get(n).accepts)}.")
                    for name in dict.fromkeys((own, *protocols)):
                        self.eval_params(get_protocol(name), ds_name, bb, size=size, method=method)
                    for seed in dict.fromkeys(self.config.seeds):
                        cells.append(Cell(ds_name, method.name, size, seed, protocols))
        return cells

    def cell_plan(self, cell: Cell) -> CellPlan:
        ds = self.resources.dataset(cell.dataset)
        bb = self.resources.spec_for(ds)
        method = self.methods[cell.method]
        params = self.method_params(method, cell.size, cell.dataset, bb)
        defaults = self.method_params(method, cell.size, cell.dataset, bb, overrides=False)
        method_identity = identity_dict(params)
        distill_spec = distill_identity(ds, bb, method, method_identity, cell.size, cell.seed, self.config.debug)
        distill_id = canonical_id(distill_spec)
        derived = unset_fields(self.raw_method_params(method, cell.size, cell.dataset),
                               self.raw_method_params(method, cell.size, cell.dataset, overrides=False))
        variant = variant_label(params, defaults, derived)
        evals = []
        for name in cell.protocols:
            protocol = get_protocol(name)
            eval_params = self.eval_params(protocol, cell.dataset, bb, size=cell.size, method=method)
            eval_defaults = self.eval_params(protocol, cell.dataset, bb, overrides=False)
            eval_derived = unset_fields(self.raw_eval_params(protocol, cell.dataset, size=cell.size, method=method),
                                        self.raw_eval_params(protocol, cell.dataset, overrides=False))
            spec = evaluation_identity(distill_spec, ds, protocol, eval_params)
            evals.append(EvalPlan(name, eval_params, RecordSpec(
                run_id=canonical_id(spec), distill_id=distill_id, dataset=cell.dataset,
                dataset_fingerprints=fingerprints(ds), method=method.name, method_version=method.version,
                method_params=method_identity, size=cell.size, seed=cell.seed, backbone=bb.name,
                backbone_weights=bb.weights_id, protocol=name, protocol_version=protocol.version,
                protocol_params=protocol.identity(eval_params), variant=variant,
                eval_variant=protocol.variant(eval_params, eval_defaults, eval_derived),
                eval_seeds=student_seeds(cell.seed, eval_params.n_students), debug=self.config.debug,
                deterministic=method.deterministic, source="run", artifact=f"artifacts/{distill_id}",
                experiment=self.config.cell_experiment(cell, name))))
        return CellPlan(cell, params, distill_spec, distill_id, evals)


def fingerprints(ds: Dataset) -> dict[str, str]:
    return {"train": ds.train.fingerprint, "val": ds.val.fingerprint, "test": ds.test.fingerprint}


def student_seeds(seed: int, n_students: int) -> list[int]:
    """The seeds of an evaluation's students (initialisation, batch order, dropout); see ``Protocol.evaluate``."""
    return [seed * 1000 + k for k in range(n_students)]


def distill_identity(ds: Dataset, bb: BackboneSpec, method: Method, method_identity: dict, size: int, seed: int,
                     debug: bool) -> dict:
    """What a distilled set depends on: the training split, the method and its active parameters, the size,
    the seed and the backbone's weights (and the augmentation, where the data is augmented)."""
    spec = {"dataset": ds.name, "train": ds.train.fingerprint, "method": method.name, "method_version": method.version,
            "method_params": method_identity, "size": size, "seed": seed, "backbone": bb.name,
            "backbone_weights": bb.weights_id}
    augment = augment_identity(ds)
    if augment is not None:  # real-data runs: the augmentation's version is part of the result
        spec["augment"] = augment
    if debug:  # never the same identity as a full run
        spec["debug"] = True
    return spec


def evaluation_identity(distill_spec: dict, ds: Dataset, protocol: Protocol, params: Any) -> dict:
    """A distilled set's identity plus how it is scored: the test split, the protocol, its version and active
    parameters, and the val split only when it selects the epoch."""
    spec = {**distill_spec, "test": ds.test.fingerprint, "protocol": protocol.name,
            "protocol_version": protocol.version, "protocol_params": protocol.identity(params)}
    if params.selection == "val":
        spec["val"] = ds.val.fingerprint
    return spec


__all__ = ["Cell", "CellOverride", "CellPlan", "DEBUG_LIMITS", "EVAL_SCOPE", "EvalPlan", "Planner", "RunConfig", "apply_debug_limits",
           "distill_identity", "evaluation_identity", "fingerprints", "student_seeds"]
