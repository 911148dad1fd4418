"""The cost benchmark script runs end to end (its smoke preset, on CPU) and renders BENCHMARKS.md."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_end_to_end_smoke_preset_writes_json_and_markdown(tmp_path, cache_dir):
    results, md = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "end_to_end.py"), "--preset", "smoke", "--cache-dir",
           str(cache_dir), "--results", str(results), "--markdown", str(md), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((results / "smoke.json").read_text())
    row = report["cases"]["tiny-smoke"]
    for method in ("covmatch", "mtt-vl"):
        assert row[method]["s_per_iteration_steady"] > 0 and row[method]["iterations_timed"] == 2
        assert row[method]["peak_memory_mb"]["rss_peak"] > 0
    assert row["mtt-vl"]["experts"]["bytes_per_expert"] > 0
    assert row["mtt-vl"]["experts"]["train_s"] > 0  # trained afresh, never read from an earlier cache
    assert row["ratios"]["time_mtt_over_covmatch"] > 0
    assert row["data_pipeline"]["images_per_s_cached"] > row["data_pipeline"]["images_per_s_consumed_by_covmatch"] > 0
    assert report["machine"]["torch"] and report["command"]
    harness = row["harness"]  # the loop's own parts: model work against what the harness adds
    assert harness["model"] > 0 and harness["data"] > 0 and harness["harness_over_model"] > 0
    variant = row["covmatch_variants"]["channels_last=true"]
    assert variant["s_per_iteration_steady"] > 0 and variant["speedup_over_plain"] > 0

    # A non-smoke report renders into the Markdown tables; other scripts' JSON in the folder (a calibration)
    # is not read as a preset, and the section efficiency.py owns survives the rewrite.
    (results / "cpu.json").write_text(json.dumps({**report, "preset": "cpu"}))
    (results / "calibration-scenes.json").write_text(json.dumps({"entries": {}}))
    md.write_text(md.read_text() + "\n## Efficiency\n\nthe efficiency tables\n")
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import end_to_end as e; "
                    "from pathlib import Path; e.write_markdown(Path(sys.argv[2]), Path(sys.argv[3]))",
                    str(ROOT / "benchmarks"), str(results), str(md)], check=True, env=env)
    text = md.read_text()
    assert "## Preset `cpu`" in text and "| tiny-smoke | covmatch |" in text and "MTT-VL / CovMatch time" in text
    assert "| tiny-smoke | `channels_last=true` |" in text and "harness / model" in text
    assert text.count("## Efficiency") == 1 and "the efficiency tables" in text


def test_efficiency_counts_positive_flops_and_writes_its_section(tmp_path, cache_dir):
    """FLOPs per iteration and per student epoch are differences of counted runs after a warm-up: positive,
    and the Markdown section replaces itself (rerunning never appends a second copy)."""
    results, md = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Preset `cpu`\n\nkept\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "efficiency.py"), "--dataset", "shapes-mini", "--size", "8",
           "--methods", "covmatch", "--students", "2", "--epochs", "1", "--cache-dir", str(cache_dir),
           "--results", str(results), "--markdown", str(md), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((results / "efficiency-cpu.json").read_text())
    assert report["peak_flop_per_s"] > 0
    for row in report["methods"].values():
        assert row["flops_per_iteration"] > 0 and row["s_per_iteration"] > 0
    for name in ("trainable-text", "frozen-text", "frozen-encoders"):
        assert report["protocols"][name]["flops_per_student_epoch"] > 0
    assert report["protocols"]["frozen-text"]["together_s"] > 0  # heads over fixed features: vmappable
    assert report["protocols"]["trainable-text"]["together_s"] is None  # the text encoder trains: sequential
    parts = report["together_parts"]  # the measured reason for the together target: conv and matmul parts
    assert len(parts) == 2 and all(r[k] > 0 for r in parts.values() for k in ("one_by_one_s", "together_s",
                                                                              "one_model_big_batch_s"))
    subprocess.run([*cmd[:2], "--from-json", str(results / "efficiency-cpu.json"), "--markdown", str(md)],
                   check=True, env=env)
    text = md.read_text()
    assert text.count("## Efficiency") == 1 and "kept" in text and "| covmatch |" in text
    assert "Why together misses its target here" in text and "| image tower (tiny CNN: convolutions) |" in text


def test_time_reproduce_summarizes_a_resumed_run_by_its_segments(tmp_path):
    """A grid interrupted and resumed is timed as the sum of its segments, each distillation counted once, and
    names the code its records were made with (not the checkout that summarizes them)."""
    from test_records import make_record  # pytest puts tests/ on sys.path (no package, rootdir conftest)

    results = tmp_path / "results"
    for protocol, eval_s in (("frozen-text", 10.0), ("trainable-text", 30.0)):
        make_record(run_id=f"r-{protocol}", protocol=protocol, timings={"distill_s": 100.0, "eval_s": eval_s},
                    versions={"git_sha": "abc123"}).save(results)
    out = tmp_path / "t.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_reproduce.py"), "--summarize",
                           str(results), "--started", "2026-01-01T00:00:00+00:00", "--finished",
                           "2026-01-01T01:00:00+00:00", "--started", "2026-01-01T02:00:00+00:00", "--finished",
                           "2026-01-01T02:30:00+00:00", "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["wall_s"] == 5400.0 and len(report["segments"]) == 2
    assert report["process_s"] == 140.0 and report["records"] == 2  # one distillation, two evaluations
    assert report["git_sha"] == "abc123"
    unpaired = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_reproduce.py"), "--summarize",
                               str(results), "--started", "2026-01-01T00:00:00+00:00", "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
    assert unpaired.returncode != 0 and "one --started and one --finished" in unpaired.stderr
    garbled = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_reproduce.py"), "--summarize",
                              str(results), "--started", "yesterday", "--finished", "2026-01-01T01:00:00+00:00",
                              "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert garbled.returncode != 0 and "ISO times" in garbled.stderr and "Traceback" not in garbled.stderr
