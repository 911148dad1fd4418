"""Dry runs (states and measured estimates, nothing loaded or written), status, and rerun from a record."""

import json

from mmdd_bench.cli import main
from mmdd_bench.locks import HeartbeatLock
from mmdd_bench.records import load_record, read_records

QUICK = ["--datasets", "shapes-mini", "--set", "eval.epochs=1", "--set", "eval.n_students=1"]


def base(tmp_path, cache_dir, command="run"):
    return [command, "--results", str(tmp_path / "res"), "--cache-dir", str(cache_dir), *QUICK]


def test_dry_run_tells_done_evaluate_only_and_distil_apart_without_loading_a_model(cache_dir, tmp_path, capsys,
                                                                                   monkeypatch):
    assert main([*base(tmp_path, cache_dir), "--methods", "random", "--sizes", "4", "--quiet"]) == 0
    capsys.readouterr()
    files = sorted(p for p in (tmp_path / "res").rglob("*") if p.is_file())

    import mmdd_bench.resources as resources

    def no_models(*a, **k):
        raise AssertionError("a dry run built a backbone")

    monkeypatch.setattr(resources, "build_backbone", no_models)
    args = [*base(tmp_path, cache_dir), "--methods", "random,herding", "--sizes", "4", "--protocol",
            "trainable-text,frozen-text", "--dry-run"]
    assert main([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    by_method = {c["method"]: c for c in plan["cells"]}
    random, herding = by_method["random"], by_method["herding"]
    assert [e["state"] for e in random["evals"]] == ["ok", "missing"] and random["action"] == "evaluate"
    assert [e["state"] for e in herding["evals"]] == ["missing", "missing"] and herding["action"] == "distil"
    # what is left to do is estimated: trainable-text from the record just made; nothing measured frozen-text or
    # herding on tiny, so no total is made up for those cells
    assert random["estimate_source"] == "frozen-text: nothing measured for tiny on shapes-mini"
    assert random["estimate_s"] is None and herding["estimate_s"] is None
    assert "distil: nothing measured for herding" in herding["estimate_source"]
    assert "trainable-text: 1 students x" in herding["estimate_source"] and "(records" in herding["estimate_source"]
    assert "records" in plan["method"] and "benchmark" in plan["method"]  # the output says how it estimates
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "evaluate only (set saved)" in text and "distil + evaluate" in text and "how: " in text
    assert sorted(p for p in (tmp_path / "res").rglob("*") if p.is_file()) == files  # nothing written
    assert main([*base(tmp_path, cache_dir), "--methods", "random", "--sizes", "4", "--dry-run", "--json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)["cells"]
    assert only["action"] == "done" and only["estimate_s"] == 0


def test_dry_run_counts_a_set_scored_by_two_runs_once(cache_dir, tmp_path, capsys):
    """A file whose runs score one set under different protocols distils it once (the later cell waits on the
    lock and loads it): the plan's later cell is evaluate-only and the total has one distillation."""
    assert main([*base(tmp_path, cache_dir), "--methods", "random", "--sizes", "4", "--quiet"]) == 0
    capsys.readouterr()
    exp = tmp_path / "two-runs.yaml"
    exp.write_text("datasets: [shapes-mini]\nsizes: [4]\nseeds: [0]\nset: {eval: {epochs: 1, n_students: 1}}\n"
                   "runs:\n  - {methods: [random], protocols: [trainable-text]}\n"
                   "  - {methods: [random], protocols: [frozen-text]}\n")
    args = ["run", "--config", str(exp), "--results", str(tmp_path / "res"), "--cache-dir", str(cache_dir),
            "--dry-run", "--json"]
    assert main([*args, "--force"]) == 0
    plan = json.loads(capsys.readouterr().out)
    first, second = plan["cells"]
    assert first["distill_id"] == second["distill_id"]
    assert (first["action"], second["action"]) == ("distil", "evaluate")
    assert first["estimate_source"].startswith("distil") and "distil" not in second["estimate_source"]
    assert main([*args[:-1], "--force"]) == 0
    assert "evaluate only (set from an earlier cell)" in capsys.readouterr().out
    assert main(args) == 0  # the set is saved now: both cells only evaluate, as before
    assert [c["action"] for c in json.loads(capsys.readouterr().out)["cells"]] == ["done", "evaluate"]
    # and the runner agrees: under --force the first run redoes the set, the second reuses that new one
    assert main([*args[:-2], "--force"]) == 0
    log = capsys.readouterr()
    assert (log.out + log.err).count("reusing distilled set") == 1


def test_status_shows_done_failed_running_and_missing(cache_dir, tmp_path, capsys, monkeypatch):
    from mmdd_bench.methods.random_subset import RandomSubset

    monkeypatch.setattr(RandomSubset, "distill", lambda self, ctx, params: 1 / 0)
    assert main([*base(tmp_path, cache_dir), "--methods", "random,herding", "--sizes", "4", "--quiet"]) == 1
    monkeypatch.undo()
    capsys.readouterr()
    recs = {r.method: r for r in read_records(tmp_path / "res")}
    lock = HeartbeatLock(tmp_path / "res" / "locks" / f"{recs['herding'].distill_id}.claim",
                         what="shapes-mini herding N=6 seed=0").acquire(timeout=0)
    try:
        assert main(["status", "--results", str(tmp_path / "res"), "--json"]) == 0
        folder = json.loads(capsys.readouterr().out)
        states = {(r["method"], r["state"]) for r in folder["rows"]}
        assert ("random", "failed") in states and ("herding", "done") in states
        failed = next(r for r in folder["rows"] if r["state"] == "failed")
        assert failed["detail"] == "ZeroDivisionError: division by zero"  # the error's first line
        (held,) = folder["locks"]
        assert held["pid"] > 0 and held["host"] and held["what"] == "shapes-mini herding N=6 seed=0"

        planned = [*base(tmp_path, cache_dir, "status"), "--methods", "random,herding", "--sizes", "4,6", "--json"]
        assert main(planned) == 0
        grid = json.loads(capsys.readouterr().out)
        rows = {(r["method"], r["size"]): r for r in grid["rows"]}
        assert rows[("random", 4)]["state"] == "failed" and rows[("herding", 4)]["state"] == "done"
        assert rows[("random", 6)]["state"] == "missing"
        assert grid["counts"] == {"failed": 1, "done": 1, "missing": 2}
    finally:
        lock.release()
    assert main(["status", "--results", str(tmp_path / "res")]) == 0
    assert "1 done, 1 failed" in " ".join(capsys.readouterr().out.split())


def test_rerun_reproduces_a_records_run_id_and_metrics(cache_dir, tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("methods: [covmatch]\ndatasets: [shapes-mini]\nsizes: [4]\nseeds: [1]\n"
                   "set: {covmatch: {iterations: 3, real_batch: 16}, eval: {epochs: 1, n_students: 1}}\n")
    assert main(["run", "--config", str(cfg), "--results", str(tmp_path / "res"), "--cache-dir", str(cache_dir),
                 "--quiet"]) == 0
    (path,) = (tmp_path / "res" / "runs").glob("*.json")
    original = load_record(path)
    assert original.experiment["set"]["covmatch"] == {"iterations": 3, "real_batch": 16}
    capsys.readouterr()
    assert main(["rerun", str(path), "--results", str(tmp_path / "again"), "--cache-dir", str(cache_dir),
                 "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["same_run_id"] and out["same_metrics"] and out["status"] == "ok"
    again = load_record(tmp_path / "again" / "runs" / path.name)
    assert again.run_id == original.run_id and again.metrics == original.metrics

    # a record from before experiments were stored: its resolved parameters plan the same identity
    data = json.loads(path.read_text())
    del data["experiment"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert main(["rerun", str(old), "--results", str(tmp_path / "old"), "--cache-dir", str(cache_dir), "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["same_run_id"] and out["same_metrics"]


def test_estimates_read_timing_reports_only(tmp_path):
    """The benchmark folder also holds calibrations and studies: they are not figures (nor named as sources)."""
    import json

    from mmdd_bench.estimate import load_figures

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "calibration-scenes.json").write_text(json.dumps({"entries": {}, "dataset": "scenes"}))
    (bench / "cpu.json").write_text(json.dumps({"machine": {"cpus": 2, "cuda": None, "git_sha": "abc"}, "cases": {
        "c": {"case": {"name": "c", "backbone": "tiny", "image_size": 32, "size": 100},
              "covmatch": {"s_per_iteration_steady": 0.5}}}}))
    figures = load_figures(tmp_path / "no-results", bench)
    assert figures.sources == ["benchmark cpu.json (2 CPUs, cuda None, git abc)"]
    assert figures.bench_iteration[("tiny", 32, "covmatch")][100][0] == 0.5
