"""Logs without a terminal: plain progress lines (what, done/total, rate, ETA) instead of live bars."""

import dataclasses
import json
import os
import subprocess
import sys

from mmdd_bench.progress import PlainProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_one_line_per_interval_with_rate_and_eta():
    lines, clock = [], Clock()
    progress = PlainProgress(lines.append, every_s=10, clock=clock)
    for step in range(1, 101):
        clock.now = step * 0.5  # 2 steps per second
        progress("covmatch N=100 seed=0", step, 100)
    assert lines[0] == "covmatch N=100 seed=0: started, 100 steps"
    middle = lines[1:-1]
    assert len(middle) == 4  # 50 s of work, one line every 10 s
    assert middle[0] == "covmatch N=100 seed=0: 21/100 (21%), 2/s, ETA 40s"
    assert lines[-1] == "covmatch N=100 seed=0: done, 100/100 in 50s, 2/s"


def test_loops_are_reported_separately():
    lines, clock = [], Clock()
    progress = PlainProgress(lines.append, every_s=1000, clock=clock)
    progress("student 1/2", 1, 2)
    progress("student 2/2", 1, 2)
    progress("student 1/2", 2, 2)
    assert lines == ["student 1/2: started, 2 steps", "student 2/2: started, 2 steps", "student 1/2: done, 2/2 in 0s"]


def test_a_run_with_stderr_in_a_file_logs_plain_lines_and_quiet_json_keep_working(tmp_path):
    """A fresh cache, so the embedded dataset's generation is logged too."""
    base = [sys.executable, "-m", "mmdd_bench.cli", "run", "--datasets", "shapes-mini", "--methods", "random",
            "--sizes", "4", "--set", "eval.epochs=2", "--set", "eval.n_students=1", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        done = subprocess.run([*base, "--results", str(tmp_path / "a"), "--log-every", "0"], stderr=err,
                              stdout=subprocess.DEVNULL, env=env, timeout=600)
    assert done.returncode == 0
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text  # no live bar, no terminal codes
    lines = text.splitlines()
    assert "generating shapes-mini train images: started, 400 steps" in lines
    assert any(line.startswith("generating shapes-mini train images: 200/400 (50%), ") and "/s, ETA " in line
               for line in lines)
    assert any(line.startswith("generating shapes-mini train images: done, 400/400 in ") for line in lines)
    assert "student 1/1: started, 2 steps" in lines
    assert any(line.startswith("student 1/1: done, 2/2 in ") for line in lines)

    quiet = subprocess.run([*base, "--results", str(tmp_path / "b"), "--quiet", "--json"], capture_output=True,
                           text=True, env=env, timeout=600)
    assert quiet.returncode == 0 and quiet.stderr == ""
    (record,) = [json.loads(line) for line in quiet.stdout.splitlines()]
    assert record["status"] == "ok" and record["method"] == "random"


def test_the_tiny_encoders_pretraining_reports_progress(tmp_path, monkeypatch):
    """The fallback path (MMDD_BENCH_TINY_PRETRAIN=1), shrunk to a few batches."""
    from mmdd_bench.encoders import tiny

    monkeypatch.setitem(tiny.IMAGE_TOWERS, "tiny", dataclasses.replace(tiny.IMAGE_TOWERS["tiny"], images=300, epochs=1))
    calls = []
    tiny.pretrained_image_encoder(tmp_path, progress=lambda what, done, total: calls.append((what, done, total)))
    drawn = [c for c in calls if c[0] == "drawing pretraining scenes"]
    trained = [c for c in calls if c[0] == "pretraining the tiny image encoder"]
    assert drawn[-1] == ("drawing pretraining scenes", 300, 300)
    assert [c[1] for c in trained] == [1, 2, 3] and trained[-1][2] == 3
