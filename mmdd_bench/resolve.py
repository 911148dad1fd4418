"""``--print-config``: the fully resolved experiment, as a file that ``--config`` reads back into the very same
run ids (and variant labels), which is checked before anything is printed.

Every parameter of every method, per dataset and size, and of the evaluation, per dataset, is written out
(``cells:`` entries), with one exception: a parameter left unset and *derived from others* (the evaluation's
lr-decay epoch from its epochs) stays ``null`` where its value differs from the default's, because writing
the value would turn a consequence into a choice and relabel the variant. Its value is in the dry run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .config import Experiment, build_experiment, parse_experiment
from .dryrun import planner_for
from .protocols import get_protocol


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def filled(raw: Any, resolved: Any, default: Any) -> dict[str, Any]:
    """Each field's value: as set (or defaulted), else resolved where that equals the resolved default."""
    out = {}
    for f in dataclasses.fields(raw):
        value = getattr(raw, f.name)
        if value is None:
            res = getattr(resolved, f.name)
            value = res if res == getattr(default, f.name) else None
        out[f.name] = _plain(value)
    return out


def _identities(experiment: Experiment) -> list[tuple]:
    out = []
    for index, run in enumerate(experiment.runs):
        planner, _ = planner_for(run)
        for cell in planner.plan():
            plan = planner.cell_plan(cell)
            out += [(index, e.run_id, e.spec.variant, e.spec.eval_variant) for e in plan.evals]
    return out


def resolve_run(run, unknown: dict[str, str] | None = None) -> dict[str, Any]:
    """One grid, resolved; what is absent on this machine (weights, data) is added to ``unknown``."""
    planner, resources = planner_for(run)
    cells = planner.plan()
    entry: dict[str, Any] = {"methods": list(run.methods), "datasets": list(dict.fromkeys(run.datasets)),
                             "sizes": list(dict.fromkeys(run.sizes)), "seeds": list(dict.fromkeys(run.seeds)),
                             "backbone": run.backbone, "protocols": list(run.protocols)}
    if run.debug:
        entry["debug"] = True
    if run.deterministic:
        entry["deterministic"] = True
    entries = []
    for ds_name in entry["datasets"]:
        bb = resources.spec_for(resources.dataset(ds_name))
        for size in entry["sizes"]:
            sets: dict[str, dict] = {}
            for method in planner.methods.values():
                values = filled(planner.raw_method_params(method, size, ds_name),
                                planner.method_params(method, size, ds_name, bb),
                                planner.method_params(method, size, ds_name, bb, overrides=False))
                if values:
                    sets[method.name] = values
            protocols = dict.fromkeys(p for c in cells if c.dataset == ds_name and c.size == size for p in c.protocols)
            evals = []
            for name in protocols:
                protocol = get_protocol(name)
                evals.append(filled(planner.raw_eval_params(protocol, ds_name, size=size),
                                    planner.eval_params(protocol, ds_name, bb, size=size),
                                    planner.eval_params(protocol, ds_name, bb, overrides=False)))
            if evals:
                if any(e != evals[0] for e in evals):
                    raise RuntimeError(f"the protocols {', '.join(protocols)} resolve the eval parameters of "
                                       f"{ds_name} N={size} differently; one 'eval' scope cannot hold both")
                sets["eval"] = evals[0]
            entries.append({"dataset": ds_name, "size": size, "set": sets})
    entry["cells"] = entries
    if unknown is not None:
        unknown.update(resources.unknown)
    return entry


def resolved_experiment(experiment: Experiment, unknown: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    meta = experiment.meta.model_dump(exclude_defaults=True)
    if meta:
        out["experiment"] = meta
    runs = [resolve_run(run, unknown) for run in experiment.runs]
    if len(runs) == 1:
        out.update(runs[0])
    else:
        out["runs"] = runs
    return out


def print_config(experiment: Experiment) -> tuple[str, dict[str, str]]:
    """The resolved experiment as YAML, after checking that it plans into the same identities, and what was
    absent here (the ids were then compared with the weights id ``unknown``)."""
    unknown: dict[str, str] = {}
    data = resolved_experiment(experiment, unknown)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)
    first = experiment.runs[0]
    again = build_experiment(parse_experiment(yaml.safe_load(text), "--print-config output"),
                             {"results": str(first.results_dir)}, cache_dir=Path(first.cache_dir))
    for run, original in zip(again.runs, experiment.runs, strict=True):
        run.data_root, run.device = original.data_root, original.device
    if _identities(again) != _identities(experiment):
        raise RuntimeError("the resolved experiment does not plan into the same run ids; please report this")
    header = [f"# mmdd-bench experiment resolved from {experiment.source} by --print-config: every parameter",
              "# per method, dataset and size is filled in (null: derived from other values); mmdd-bench run",
              "# --config THIS_FILE plans the same run ids."]
    return "\n".join(header) + "\n" + text, unknown


__all__ = ["filled", "print_config", "resolve_run", "resolved_experiment"]
