"""The Python API: what the command line calls, and what a notebook calls the same way.

    from mmdd_bench import api
    summary = api.run(api.RunConfig(methods=["random", "covmatch"], datasets=["shapes"], sizes=[100],
                                    seeds=[0, 1, 2], results_dir="results", cache_dir="cache"))
    record = api.evaluate_artifact("results/artifacts/<id>.json", results_dir="results", cache_dir="cache")
    api.report("results")
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .distilled import DistilledSet
from .encoders import BackboneSpec
from .errors import MMDDError, UsageError
from .memory import PeakMemory
from .method import METHODS, get_method
from .params import apply_overrides, check_ranges, identity_dict, unset_fields
from .plan import EVAL_SCOPE, Cell, Planner, RunConfig, evaluation_identity, fingerprints, student_seeds
from .progress import ProgressFn
from .protocols import PROTOCOLS, get_protocol
from .records import RecordSpec, RunRecord, build_record, canonical_id, utc_now
from .resources import Resources, resolve_device
from .runner import Runner, RunSummary
from .store import ResultsStore
from .transfer import transfer_source


def run(config: RunConfig, *, log: Callable[[str], None] = lambda s: None, progress: ProgressFn | None = None,
        executor: str = "local", ray_address: str | None = None, workers: int = 1,
        log_every_s: float | None = 30.0) -> RunSummary:
    """Plan, distil and evaluate the grid; returns what was recorded and what is still missing.

    ``workers`` > 1 (local executor): that many processes on this machine share the grid's cells (each
    with its share of the cores, or its own GPU), their progress as plain lines every ``log_every_s``."""
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    if executor == "ray":
        if workers > 1:
            raise UsageError("--workers is for the local executor; Ray places one task per cell by itself")
        from .executors import run_with_ray

        return run_with_ray(config, ray_address, log)
    if executor != "local":
        raise UsageError(f"unknown executor {executor!r}; choose local or ray")
    if workers > 1:
        from .executors import run_with_processes

        return run_with_processes([config], workers, log, log_every_s)[0]
    return Runner(config, log=log, progress=progress).run()


def run_all(configs: list[RunConfig], *, log: Callable[[str], None] = lambda s: None,
            progress: ProgressFn | None = None, executor: str = "local", ray_address: str | None = None,
            workers: int = 1, log_every_s: float | None = 30.0) -> list[RunSummary]:
    """Every run of an experiment file, one summary each. With local ``workers`` > 1 the runs share one pool
    of processes that walk all their cells (no run waits for the last cell of the one before); otherwise
    the runs go one after another, as ``run``."""
    if workers > 1 and executor == "local" and len(configs) > 1:
        from .executors import run_with_processes

        return run_with_processes(configs, workers, log, log_every_s)
    return [run(config, log=log, progress=progress, executor=executor, ray_address=ray_address, workers=workers,
                log_every_s=log_every_s) for config in configs]


def plan(config: RunConfig) -> list[Cell]:
    """The grid's cells with every check made (parameters, sizes, method x protocol pairs); nothing is loaded
    but the annotation files and the backbones' identities."""
    return Planner(config, Resources(config.data_root, config.cache_dir, config.backbone)).plan()


def artifact_content_id(path: Path, distilled: DistilledSet) -> str:
    """A saved set's identity: its tensors' bytes and the header fields that hold content (text kind,
    captions, encoder), not its metadata (timings differ between identical sets)."""
    stem = Path(path).with_suffix("") if Path(path).suffix in (".json", ".safetensors") else Path(path)
    digest = hashlib.sha256(stem.with_suffix(".safetensors").read_bytes())
    digest.update(json.dumps({"text_kind": distilled.text_kind, "captions": distilled.captions,
                              "encoder_id": distilled.encoder_id}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _method_variant(meta: dict, dataset: str, backbone: Any) -> str:
    """How a saved set's method parameters differ from that method's defaults for its size and dataset."""
    name, params, size = meta.get("method"), meta.get("method_params"), meta.get("size")
    if name not in METHODS or not isinstance(params, dict) or not isinstance(size, int):
        return ""
    method = get_method(name)
    defaults = identity_dict(method.resolve_params(method.default_params(size, dataset), backbone))
    return ",".join(f"{k}={v}" for k, v in sorted(params.items()) if defaults.get(k) != v)


def _source_spec(resources: Resources, source: str | None) -> BackboneSpec | None:
    """The source backbone's identity and defaults, which a transferred set's method parameters were resolved
    against; None when there is no source or it cannot be described here (its weights are elsewhere)."""
    if source is None:
        return None
    try:
        return resources.spec(source)
    except MMDDError:
        return None


def _transfer_notes(distilled: DistilledSet, source: str | None, backbone: str, learned_lrs: bool) -> list[str]:
    """What a transfer record says about itself; ``learned_lrs``: the protocol trains with a set's learned lrs."""
    if source is None:
        return []
    notes = [f"transfer: distilled with backbone {source!r}, scored with {backbone!r}"]
    if learned_lrs and distilled.has_learned_lrs:
        notes.append(f"the set's learned step sizes were learned for {source!r}'s image encoder; "
                     "--set eval.use_learned_lrs=false scores it with the protocol's lrs")
    return notes


def evaluate_artifact(artifact: Path, *, results_dir: Path, cache_dir: Path, data_root: str | None = None,
                      dataset: str | None = None, protocol: str | None = None, backbone: str | None = None,
                      seed: int | None = None, overrides: dict[str, Any] | None = None, device: str = "auto",
                      progress: ProgressFn | None = None, skip_done: bool = False) -> RunRecord:
    """Score a saved set (possibly distilled elsewhere) and record it like a harness cell, so it sits in the
    same leaderboard row as the cell it came from (one record per seed there, the newest). With ``backbone``
    another than the set's own, a transfer evaluation: its record names the set's backbone
    (``distilled_backbone``) and it has a leaderboard row of its own. ``skip_done``: return the evaluation's
    ok record when there is one instead of scoring again (what a resumable script wants)."""
    store = ResultsStore(results_dir)
    distilled = DistilledSet.load(artifact)
    meta = distilled.meta
    made_from = meta.get("dataset")
    if dataset and made_from and dataset != made_from:
        raise UsageError(f"{artifact} was distilled from {made_from!r}; scoring it as a {dataset!r} result would put it "
                         f"in that dataset's leaderboard. Drop --dataset (or pass --dataset {made_from}).")
    dataset = dataset or made_from
    if not dataset:
        raise UsageError(f"{artifact} does not say which dataset it comes from; pass --dataset.")
    resources = Resources(data_root, cache_dir, backbone, progress=progress)
    ds = resources.dataset(dataset)
    bb = resources.backbone(backbone or meta.get("backbone") or ds.default_backbone)
    method_name = meta.get("method", "external")
    if protocol is None:  # the method's own protocol when it can read this set, else frozen-text
        own = METHODS.get(method_name).default_protocol if method_name in METHODS else "frozen-text"
        protocol = own if distilled.text_kind in PROTOCOLS.get(own).accepts else "frozen-text"
    proto = get_protocol(protocol)
    if distilled.text_kind not in proto.accepts:
        raise UsageError(f"protocol {protocol!r} cannot read {distilled.text_kind} text (it reads "
                         f"{', '.join(proto.accepts)}); pick another --protocol.")
    raw = apply_overrides(proto.default_params(dataset), (overrides or {}), EVAL_SCOPE)
    params, defaults = proto.resolve_params(raw, bb), proto.resolve_params(proto.default_params(dataset), bb)
    check_ranges(params, EVAL_SCOPE)
    derived = unset_fields(raw, proto.default_params(dataset))
    seed = int(meta.get("seed", 0)) if seed is None else seed
    content_id = artifact_content_id(artifact, distilled)
    source, source_weights = transfer_source(distilled, bb.name, bb.weights_id)
    # A transfer's identity names its source too (a random subset is the same pairs whichever backbone drew it);
    # evaluations with the set's own backbone keep the identity they always had.
    transfer = {"distilled_backbone": source, "distilled_backbone_weights": source_weights} if source else {}
    identity = evaluation_identity({"artifact": content_id, "dataset": dataset, "train": ds.train.fingerprint,
                                    "backbone": bb.name, "backbone_weights": bb.weights_id, "seed": seed, **transfer},
                                   ds, proto, params)
    size = meta.get("size") if isinstance(meta.get("size"), int) else distilled.budget_pairs
    spec = RecordSpec(
        run_id=canonical_id(identity), distill_id=content_id, dataset=dataset, dataset_fingerprints=fingerprints(ds),
        method=method_name, method_version=str(meta.get("method_version", "unknown")),
        method_params=meta.get("method_params", {}) if isinstance(meta.get("method_params"), dict) else {},
        size=size, seed=seed, backbone=bb.name, backbone_weights=bb.weights_id, protocol=protocol,
        protocol_version=proto.version, protocol_params=proto.identity(params),
        variant=_method_variant(meta, dataset, _source_spec(resources, source) or bb),
        eval_variant=proto.variant(params, defaults, derived),
        eval_seeds=student_seeds(seed, params.n_students), deterministic=bool(meta.get("deterministic", False)),
        source="eval", artifact=str(artifact), distilled_backbone=source, distilled_backbone_weights=source_weights)
    learned_lrs = params.use_learned_lrs and "use_learned_lrs" not in proto.inactive_params
    notes = [f"evaluated from {artifact}"] + _transfer_notes(distilled, source, bb.name, learned_lrs)
    done = store.record_state(spec.run_id)
    if skip_done and done.state == "ok" and done.record is not None:
        return done.record
    dev = resolve_device(device)
    started = utc_now()
    with PeakMemory(dev) as pm:
        result = proto.evaluate(distilled, ds, bb, params, seed, dev, Path(cache_dir), progress)
    rec = build_record(spec, status="ok", started=started, device=str(dev), result=result, distilled=distilled,
                       timings=meta.get("timings", {}) if isinstance(meta.get("timings"), dict) else {},
                       memory={f"eval_{k}": v for k, v in pm.result().items()}, notes=notes)
    store.write_record(rec)
    return rec


def train_experts(dataset: str, *, cache_dir: Path, data_root: str | None = None, backbone: str | None = None,
                  method: str = "mtt-vl", num_experts: int | None = None, epochs: int | None = None,
                  overrides: dict[str, Any] | None = None, device: str = "auto", progress: ProgressFn | None = None,
                  log: Callable[[str], None] = lambda s: None, size: int = 100) -> dict:
    """Train (or extend) the expert trajectories ``method`` reads, with the settings a run of it would use,
    so a later run with the same ``overrides`` finds them in the cache."""
    from .method import DistillContext

    resources = Resources(data_root, cache_dir, backbone, progress=progress)
    ds = resources.dataset(dataset)
    dev = resolve_device(device)
    bb = resources.backbone_for(ds).to(dev)
    plugin = get_method(method)
    if not hasattr(plugin, "experts"):
        raise UsageError(f"method {method!r} reads no expert trajectories")
    params = plugin.resolve_params(apply_overrides(plugin.default_params(size, ds.name), overrides or {}, method), bb)
    ctx = DistillContext(ds.train_view(), bb, size, 0, dev, Path(cache_dir), progress)
    _, summary = plugin.experts(ctx, params, num_experts=num_experts, epochs=epochs, log=log)
    return {**summary, "epochs_asked": epochs or params.expert_train_epochs}


def report(results_dir: Path, *, html: bool = False, data_root: str | None = None,
           cache_dir: Path | None = None) -> list[Path]:
    """Regenerate leaderboards (and with ``html`` the galleries and the page) from the records alone."""
    from .reports.writer import write_reports

    return write_reports(Path(results_dir), html=html, data_root=data_root, cache_dir=cache_dir)


__all__ = ["RunConfig", "RunSummary", "artifact_content_id", "evaluate_artifact", "plan", "report", "run", "run_all",
           "train_experts"]
