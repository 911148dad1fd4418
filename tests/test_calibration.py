"""The calibration of embedded datasets (issue 16): it scores students exactly as the protocols do."""

import json

import pytest
import torch

from mmdd_bench.calibration import (
    CalibrationConfig,
    calibration_table,
    harness_eval_params,
    measure,
    run_calibration,
)
from mmdd_bench.data import load_dataset
from mmdd_bench.method import DistillContext, get_method
from mmdd_bench.protocols import get_protocol


@pytest.fixture(scope="module")
def scenes_mini(cache_dir):
    return load_dataset("scenes-mini", None, cache_dir)


@pytest.mark.parametrize("protocol_name", ["trainable-text", "frozen-text"])
def test_a_measurement_is_the_harness_cell_scored_on_val_too(protocol_name, scenes_mini, tiny, cache_dir):
    """One training scored on val and test gives, on test, exactly what ``Protocol.evaluate`` records for the
    harness's random cell, with the harness's parameters."""
    device = torch.device("cpu")
    small = {"epochs": 2}
    got = measure("random", protocol_name, scenes_mini, tiny, 8, 3, device, cache_dir, small)
    method = get_method("random")
    distilled = method.distill(DistillContext(scenes_mini.train_view(), tiny, 8, 3, device, cache_dir),
                               method.default_params(8, scenes_mini.name))
    params = harness_eval_params(protocol_name, "random", scenes_mini.name, small)
    assert params.n_students == get_protocol(protocol_name).default_params("scenes-mini").n_students
    reference = get_protocol(protocol_name).evaluate(distilled, scenes_mini, tiny, params, 3, device, cache_dir)
    assert got["per_student"]["test"] == reference.per_student and got["mean"]["test"] == reference.mean
    assert len(got["per_student"]["val"]) == params.n_students
    assert got["per_student"]["val"] != got["per_student"]["test"]  # val is its own split


def test_ceilings_use_the_full_data_methods_harness_evaluation():
    """full-data's embedded evaluation (one student, epoch chosen on val) is what the ceilings get."""
    params = harness_eval_params("trainable-text", "full-data", "scenes")
    assert (params.n_students, params.selection) == (1, "val")
    assert harness_eval_params("trainable-text", "random", "scenes").selection == "final"


def _entry(val: float, test: float, metric_top: float = 50.0) -> dict:
    def split(r: float) -> dict:
        return {"r_mean": r, "i2t_R@1": r / 2, "i2t_R@5": r, "i2t_R@10": metric_top, "t2i_R@1": r / 2,
                "t2i_R@5": r, "t2i_R@10": r}
    return {"mean": {"val": split(val), "test": split(test)}}


def test_calibration_table_flags_each_target():
    config = CalibrationConfig("scenes", "tiny-scenes", sizes=(100, 200, 500), seeds=(0,))
    entries = {"trainable-text/full": _entry(60, 58, metric_top=95), "frozen-text/full": _entry(45, 50),
               "trainable-text/random-100/seed0": _entry(9, 10), "trainable-text/random-200/seed0": _entry(15, 16),
               "trainable-text/random-500/seed0": _entry(14, 25), "frozen-text/random-100/seed0": _entry(5, 5),
               "frozen-text/random-200/seed0": _entry(8, 8), "frozen-text/random-500/seed0": _entry(12, 12)}
    rows = {r["property"]: r for r in calibration_table({"entries": entries}, config)}
    gap = rows["ceiling gap, trainable-text minus frozen-text"]
    assert gap["val"] == "15.0 (ok)" and gap["test"] == "8.0 (MISSED)"
    share = rows["random-100 (trainable-text) as a share of its ceiling"]
    assert share["val"] == "9.0 = 15% (ok)" and "ok" in share["test"]
    growth = rows["random-100/200/500 (trainable-text) grows with N"]
    assert "MISSED" in growth["val"] and "ok" in growth["test"]
    assert "ok" in rows["random-100/200/500 (frozen-text) grows with N"]["val"]
    assert "MISSED" in rows["highest metric at full data (no metric near 100)"]["val"]


def test_calibration_resumes_from_its_file(scenes_mini, tiny, cache_dir, tmp_path, monkeypatch):
    """An interrupted calibration keeps what it measured: a second run re-measures nothing."""
    import mmdd_bench.calibration as calibration

    config = CalibrationConfig("scenes-mini", "tiny", sizes=(4,), seeds=(0,), protocols=("frozen-text",),
                               eval_overrides={"epochs": 1})
    out = tmp_path / "cal.json"
    first = run_calibration(config, scenes_mini, tiny, torch.device("cpu"), cache_dir, out, log=lambda s: None)
    assert set(first["entries"]) == {"frozen-text/full", "frozen-text/random-4/seed0"}

    def no_training(*args, **kwargs):
        raise AssertionError("re-measured an entry that was saved")

    monkeypatch.setattr(calibration, "measure", no_training)
    again = run_calibration(config, scenes_mini, tiny, torch.device("cpu"), cache_dir, out, log=lambda s: None)
    assert again["entries"] == json.loads(out.read_text())["entries"] == first["entries"]


def test_calibrations_of_disjoint_cells_share_one_file(scenes_mini, tiny, cache_dir, tmp_path):
    """Two runs with disjoint ``only`` patterns (two cores, one file) both keep what the other saved."""
    out = tmp_path / "cal.json"
    common = dict(sizes=(4,), seeds=(0,), protocols=("frozen-text",), eval_overrides={"epochs": 1})
    ceiling = CalibrationConfig("scenes-mini", "tiny", only=("*/full",), **common)
    randoms = CalibrationConfig("scenes-mini", "tiny", only=("*/random-*",), **common)
    first = run_calibration(ceiling, scenes_mini, tiny, torch.device("cpu"), cache_dir, out, log=lambda s: None)
    assert set(first["entries"]) == {"frozen-text/full"}
    second = run_calibration(randoms, scenes_mini, tiny, torch.device("cpu"), cache_dir, out, log=lambda s: None)
    saved = json.loads(out.read_text())
    assert set(saved["entries"]) == set(second["entries"]) == {"frozen-text/full", "frozen-text/random-4/seed0"}
    assert saved["entries"]["frozen-text/full"] == first["entries"]["frozen-text/full"]
    share = {r["property"]: r for r in saved["table"]}["random-4 (trainable-text) as a share of its ceiling"]
    assert share["val"] == "n/a"  # no trainable-text ceiling measured: the table says so, it does not guess
