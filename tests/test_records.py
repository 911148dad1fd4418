import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from mmdd_bench.records import (
    SCHEMA_VERSION,
    RecordError,
    RunRecord,
    atomic_write_text,
    canonical_id,
    parse_record,
    read_records,
)


def make_record(run_id="abc", **kw) -> RunRecord:
    base = dict(run_id=run_id, distill_id="d", status="ok", dataset="shapes", dataset_fingerprints={},
                method="random", method_version="1", method_params={}, size=10, seed=0, backbone="tiny",
                backbone_weights="w", protocol="frozen-text", protocol_version="1", protocol_params={})
    base.update(kw)
    return RunRecord(**base)


def test_canonical_id_ignores_key_order():
    assert canonical_id({"a": 1, "b": [1, 2]}) == canonical_id({"b": [1, 2], "a": 1})
    assert canonical_id({"a": 1}) != canonical_id({"a": 2})


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write_text(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_records_roundtrip_and_corrupt_files_are_skipped(tmp_path):
    make_record("r1").save(tmp_path)
    make_record("r2", status="failed", error="boom").save(tmp_path)
    (tmp_path / "runs" / "broken.json").write_text('{"run_id": "trunc')
    (tmp_path / "runs" / "foreign.json").write_text(json.dumps({"hello": 1}))
    with pytest.warns(UserWarning, match="broken.json"):
        records = read_records(tmp_path)
    assert sorted(r.run_id for r in records) == ["r1", "r2"]


def test_unknown_fields_are_ignored_not_fatal():
    """A record with one field this version does not know still loads (the board must not shrink)."""
    data = {**asdict(make_record("r1")), "added_by_a_later_minor_version": {"x": 1}}
    assert parse_record(json.dumps(data), "r1.json") == make_record("r1")


def test_schema_1_records_are_migrated():
    data = asdict(make_record("r1", metrics={"mean": {"r_mean": 5.0}, "std": {"r_mean": 0.0},
                                             "per_student": [{"r_mean": 5.0}]}))
    data["schema_version"] = 1
    for new_field in ("environment", "command", "deterministic", "source", "budget_pairs"):
        data.pop(new_field)
    rec = parse_record(json.dumps(data), "old.json")
    assert rec.schema_version == SCHEMA_VERSION and rec.metrics["std"]["r_mean"] is None  # one student: no std
    assert any("migrated" in n for n in rec.notes)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer mmdd-bench"),
    (lambda d: d.update(size="ten"), "field size"),
    (lambda d: d.update(dataset={"nested": 1}), "field dataset"),
    (lambda d: d["metrics"]["mean"].update(r_mean=float("inf")), "finite"),
    (lambda d: d["metrics"]["mean"].update(r_mean=float("nan")), "finite"),
    (lambda d: d.update(status="maybe"), "field status"),
])
def test_malformed_records_are_refused_with_the_field_named(mutate, message):
    data = asdict(make_record("r1", metrics={"mean": {"r_mean": 5.0}, "std": {"r_mean": None}, "per_student": []}))
    mutate(data)
    with pytest.raises(RecordError, match=message):
        parse_record(json.dumps(data), "r1.json")


def test_deeply_nested_or_huge_json_is_a_clear_refusal():
    with pytest.raises(RecordError, match="not valid JSON"):
        parse_record("[" * 200_000 + "]" * 200_000, "deep.json")
    with pytest.raises(RecordError, match="not valid JSON"):
        parse_record('{"run_id": NaN', "bad.json")


def test_provenance_block(tmp_path, cache_dir):
    """Versions from importlib.metadata, the device and its flags, git state and the exact command line."""
    from mmdd_bench.cli import main

    assert main(["run", "--datasets", "shapes-mini", "--methods", "random", "--sizes", "3", "--cache-dir", str(cache_dir),
                 "--results", str(tmp_path), "--set", "eval.epochs=1", "--set", "eval.n_students=1", "--quiet"]) == 0
    (rec,) = read_records(tmp_path)
    for package in ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "numpy"):
        assert rec.versions[package], package
    assert "git_sha" in rec.versions and "git_dirty" in rec.versions
    env = rec.environment
    assert env["device"] == "cpu" and "deterministic_algorithms" in env and "gpu_count" in env and "torch_threads" in env
    # The CPU's kernels and name: two CPUs can give the same seed different floats.
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["cpu_model"]
    assert isinstance(rec.command, list) and rec.command  # sys.argv of the process


def test_compare_records_pairs_cells_by_run_id_and_finds_a_changed_metric(tmp_path):
    """scripts/compare_records.py: what a rerun reproduces, cell by cell, and what it cost against the reference."""
    import importlib.util
    import shutil

    path = Path(__file__).resolve().parent.parent / "scripts" / "compare_records.py"
    spec = importlib.util.spec_from_file_location("compare_records", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    committed = sorted((Path(__file__).resolve().parent.parent / "results" / "runs").glob("*.json"))[:3]
    for folder in ("ref", "new"):
        (tmp_path / folder / "runs").mkdir(parents=True)
        for p in committed:
            shutil.copy(p, tmp_path / folder / "runs" / p.name)
    changed = json.loads(committed[1].read_text())
    changed["metrics"]["per_student"][0]["i2t_R@1"] += 0.5
    changed["timings"]["eval_s"] = changed["timings"]["eval_s"] / 2
    (tmp_path / "new" / "runs" / committed[1].name).write_text(json.dumps(changed))
    orphan = json.loads(committed[2].read_text())
    orphan["run_id"] = "0" * 16
    (tmp_path / "new" / "runs" / committed[2].name).write_text(json.dumps(orphan))
    report = script.compare(read_records(tmp_path / "ref"), read_records(tmp_path / "new"))
    by_id = {c["run_id"]: c for c in report["cells"]}
    assert by_id[json.loads(committed[0].read_text())["run_id"]]["identical_metrics"]
    assert not by_id[changed["run_id"]]["identical_metrics"]
    assert abs(by_id[changed["run_id"]]["max_metric_diff"] - 0.5) < 1e-9
    assert by_id[changed["run_id"]]["eval_s"]["candidate"] == changed["timings"]["eval_s"]
    assert [u["run_id"] for u in report["unmatched"]] == ["0" * 16]
    assert report["summary"]["paired"] == 2 and report["summary"]["identical"] == 1


def test_compare_records_pairs_a_cut_to_fewer_students_on_the_students_both_have(tmp_path):
    """A grid cut from 2 students to 1 must reproduce each reference cell's first student: compare_records pairs
    the cut record with the uncut one (same set, same protocol, only n_students differs) and names thread counts."""
    import copy
    import importlib.util

    from mmdd_bench.metrics import METRIC_NAMES

    path = Path(__file__).resolve().parent.parent / "scripts" / "compare_records.py"
    spec = importlib.util.spec_from_file_location("compare_records", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    base = json.loads(sorted((Path(__file__).resolve().parent.parent / "results" / "runs").glob("*.json"))[0].read_text())
    first = {m: 10.0 + k for k, m in enumerate(METRIC_NAMES)}
    second = {m: 20.0 + k for k, m in enumerate(METRIC_NAMES)}
    uncut = copy.deepcopy(base)
    uncut.update(run_id="a" * 16, eval_seeds=[0, 1])
    uncut["protocol_params"] = {**base["protocol_params"], "n_students": 2}
    uncut["metrics"]["per_student"] = [first, second]
    uncut["environment"] = {**base["environment"], "torch_threads": 2}
    cut = copy.deepcopy(uncut)
    cut.update(run_id="b" * 16, eval_seeds=[0])
    cut["protocol_params"]["n_students"] = 1
    cut["metrics"]["per_student"] = [dict(first)]
    cut["environment"]["torch_threads"] = 1
    moved = copy.deepcopy(cut)
    moved.update(run_id="c" * 16, seed=base["seed"] + 100)  # another seed: no reference to pair with
    for folder, records in (("ref", [uncut]), ("new", [cut, moved])):
        (tmp_path / folder / "runs").mkdir(parents=True)
        for r in records:
            (tmp_path / folder / "runs" / f"{r['run_id']}.json").write_text(json.dumps(r))
    report = script.compare(read_records(tmp_path / "ref"), read_records(tmp_path / "new"))
    (cell,) = report["cells"]
    assert cell["paired_by"] == "first students" and cell["reference_run_id"] == "a" * 16
    assert cell["identical_metrics"] and cell["students_compared"] == 1
    assert cell["torch_threads"] == {"reference": 2, "candidate": 1}
    assert [u["run_id"] for u in report["unmatched"]] == ["c" * 16]
    # The cut's one student differs from the reference's first: not identical, by how much.
    cut["metrics"]["per_student"][0]["r_mean"] += 0.25
    (tmp_path / "new" / "runs" / f"{cut['run_id']}.json").write_text(json.dumps(cut))
    (cell,) = script.compare(read_records(tmp_path / "ref"), read_records(tmp_path / "new"))["cells"]
    assert not cell["identical_metrics"] and abs(cell["max_metric_diff"] - 0.25) < 1e-9


def test_adopt_records_replaces_cut_cells_and_refuses_a_cut_that_changed_the_numbers(tmp_path):
    """scripts/adopt_records.py: a regenerated grid's records go in, the records its fewer-student cells replace go
    out; a cut that does not reproduce its reference's first students adopts nothing."""
    import copy
    import importlib.util

    from mmdd_bench.metrics import METRIC_NAMES

    path = Path(__file__).resolve().parent.parent / "scripts" / "adopt_records.py"
    spec = importlib.util.spec_from_file_location("adopt_records", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    base = json.loads(sorted((Path(__file__).resolve().parent.parent / "results" / "runs").glob("*.json"))[0].read_text())
    uncut = copy.deepcopy(base)
    uncut.update(run_id="a" * 16, eval_seeds=[0, 1])
    uncut["protocol_params"] = {**base["protocol_params"], "n_students": 2}
    uncut["metrics"]["per_student"] = [{m: 10.0 for m in METRIC_NAMES}, {m: 20.0 for m in METRIC_NAMES}]
    untouched = copy.deepcopy(uncut)
    untouched.update(run_id="d" * 16, seed=base["seed"] + 7)
    cut = copy.deepcopy(uncut)
    cut.update(run_id="b" * 16, eval_seeds=[0])
    cut["protocol_params"]["n_students"] = 1
    cut["metrics"]["per_student"] = [{m: 10.0 for m in METRIC_NAMES}]
    new_cell = copy.deepcopy(cut)
    new_cell.update(run_id="c" * 16, seed=base["seed"] + 100)

    def write(folder, records):
        (tmp_path / folder / "runs").mkdir(parents=True, exist_ok=True)
        for r in records:
            (tmp_path / folder / "runs" / f"{r['run_id']}.json").write_text(json.dumps(r))

    write("results", [uncut, untouched])
    changed = copy.deepcopy(cut)
    changed["metrics"]["per_student"][0]["r_mean"] = 11.0
    write("changed", [changed])
    with pytest.raises(SystemExit, match="differ from the first students"):
        script.adopt(tmp_path / "results", tmp_path / "changed")
    assert sorted(p.stem for p in (tmp_path / "results" / "runs").iterdir()) == ["a" * 16, "d" * 16]
    write("run", [cut, new_cell])
    done = script.adopt(tmp_path / "results", tmp_path / "run")
    assert done["copied"] == 2 and done["removed"] == ["a" * 16] and done["changed"] == 0
    assert sorted(p.stem for p in (tmp_path / "results" / "runs").iterdir()) == ["b" * 16, "c" * 16, "d" * 16]
