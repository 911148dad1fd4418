import json

import pytest

from mmdd_bench.records import RunRecord, atomic_write_text, canonical_id, read_records


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
