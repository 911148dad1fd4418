"""The command line end to end on the embedded shapes-mini set (tiny backbone, a few epochs)."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from mmdd_bench.cli import main

QUICK = ["--datasets", "shapes-mini", "--set", "eval.epochs=2", "--set", "eval.n_students=1", "--quiet"]


@pytest.fixture
def run(cache_dir, tmp_path):
    def _run(*args):
        return main(["run", "--cache-dir", str(cache_dir), "--results", str(tmp_path / "res"), *QUICK, *args])
    return _run


def test_run_writes_records_artifacts_and_leaderboard(run, tmp_path, capsys):
    assert run("--methods", "random,herding", "--sizes", "5,10", "--seeds", "0,1") == 0
    runs = sorted((tmp_path / "res" / "runs").glob("*.json"))
    assert len(runs) == 8
    rec = json.loads(runs[0].read_text())
    for key in ["run_id", "method_version", "method_params", "dataset_fingerprints", "storage_bytes", "protocol_version",
                "protocol_params", "eval_seeds", "metrics", "timings", "peak_memory_mb", "versions", "started_utc",
                "finished_utc", "artifact", "device", "backbone_weights"]:
        assert key in rec, key
    assert rec["status"] == "ok" and rec["versions"]["torch"]
    assert (tmp_path / "res" / rec["artifact"]).with_suffix(".safetensors").is_file()
    board = pd.read_csv(tmp_path / "res" / "leaderboard" / "leaderboard.csv")
    assert len(board) == 4 and set(board["n_seeds"]) == {2}
    assert list(board.columns[:10]) == ["dataset", "backbone", "protocol", "protocol_version", "eval_variant", "method",
                                        "variant", "size", "n_seeds", "i2t_R@1"]
    assert set(board["eval_variant"]) == {"epochs=2,n_students=1"}  # debugging limits are visible, never merged
    assert "r_mean_std" in board.columns and "gain_vs_random" in board.columns
    assert (board.loc[board["method"] == "random", "gain_vs_random"] == 0).all()
    md = (tmp_path / "res" / "leaderboard" / "shapes-mini__tiny__trainable-text.md").read_text()
    assert "| herding † |" in md and "±" in md and "deterministic method" in md


def test_variants_get_their_own_rows(run, tmp_path):
    assert run("--methods", "random,herding", "--sizes", "5") == 0
    assert run("--methods", "herding", "--sizes", "5", "--set", "herding.image_weight=0") == 0
    board = pd.read_csv(tmp_path / "res" / "leaderboard" / "leaderboard.csv", keep_default_na=False)
    assert sorted(board["variant"]) == ["", "", "image_weight=0.0"]


def test_rerun_skips_done_cells_and_force_redoes_them(run, tmp_path):
    assert run("--methods", "random", "--sizes", "5") == 0
    path = next((tmp_path / "res" / "runs").glob("*.json"))
    first = json.loads(path.read_text())
    assert run("--methods", "random", "--sizes", "5") == 0
    assert json.loads(path.read_text())["finished_utc"] == first["finished_utc"]  # untouched
    assert run("--methods", "random", "--sizes", "5", "--force") == 0
    again = json.loads(path.read_text())
    assert again["metrics"] == first["metrics"]  # same seed, same numbers


def test_two_protocols_share_one_distilled_set(run, tmp_path):
    assert run("--methods", "random", "--sizes", "5", "--protocol", "frozen-text,trainable-text") == 0
    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / "runs").glob("*.json")]
    assert sorted(r["protocol"] for r in recs) == ["frozen-text", "trainable-text"]
    assert len({r["distill_id"] for r in recs}) == 1 and len({r["run_id"] for r in recs}) == 2


def test_eval_scores_a_saved_set(run, tmp_path, cache_dir, capsys):
    assert run("--methods", "random", "--sizes", "5") == 0
    artifact = next((tmp_path / "res" / "artifacts").glob("*.json"))
    capsys.readouterr()
    assert main(["eval", str(artifact), "--cache-dir", str(cache_dir), "--protocol", "frozen-text",
                 "--results", str(tmp_path / "res"),
                 "--set", "eval.epochs=1", "--set", "eval.n_students=1", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "shapes-mini" and out["protocol"] == "frozen-text" and "r_mean" in out["mean"]
    rec = json.loads(open(out["record"]).read())  # recorded like a harness cell, so it enters leaderboards
    assert rec["method"] == "random" and rec["protocol"] == "frozen-text" and rec["status"] == "ok"


@pytest.mark.parametrize("args,message", [
    (["--methods", "randm"], "Did you mean 'random'"),
    (["--sizes", "100000"], "outside 1..400"),
    (["--set", "random.nope=1"], "unknown parameter 'random.nope'"),
    (["--set", "covmatch.rho=1"], "neither a method in this run"),
    (["--set", "eval.epochs=x"], "expected int"),
    (["--protocol", "frozen"], "unknown protocol"),
    (["--datasets", "flickr30k", "--data-root", "/nonexistent"], "does not exist"),
])
def test_usage_and_data_errors_exit_2_with_a_message(run, tmp_path, capsys, args, message):
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "res" / "runs").exists()  # nothing half-written


def test_list_commands(capsys):
    for what, expected in [("methods", "covmatch"), ("datasets", "shapes"), ("backbones", "tiny"),
                           ("protocols", "frozen-text")]:
        assert main(["list", what]) == 0
        assert expected in capsys.readouterr().out


def test_failing_method_is_recorded_and_exit_code_says_so(run, tmp_path, monkeypatch):
    from mmdd_bench.methods.random_subset import RandomSubset

    def boom(self, ctx, params):
        raise RuntimeError("plugin exploded")

    monkeypatch.setattr(RandomSubset, "distill", boom)
    assert run("--methods", "random,herding", "--sizes", "5") == 1
    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / "runs").glob("*.json")]
    status = {r["method"]: r["status"] for r in recs}
    assert status == {"random": "failed", "herding": "ok"}
    assert "plugin exploded" in next(r["error"] for r in recs if r["method"] == "random")


def test_console_script_entry_point(cache_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "mmdd_bench.cli", "list", "methods"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and "random" in out.stdout


def test_unreadable_image_in_a_flickr_layout_exits_2_naming_the_file(cache_dir, tmp_path, capsys):
    from conftest import write_flickr

    ds = write_flickr(tmp_path / "data")
    (ds / "flickr30k-images" / "tr1.jpg").write_bytes(b"garbage")
    temp_before = set((cache_dir / "images").glob("*.tmp*"))
    code = main(["run", "--datasets", "flickr30k", "--data-root", str(tmp_path / "data"), "--backbone", "tiny",
                 "--methods", "random", "--sizes", "2", "--cache-dir", str(cache_dir), "--results",
                 str(tmp_path / "res"), "--quiet"])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "tr1.jpg" in err and "Traceback" not in err
    assert not list((tmp_path / "res").glob("runs/*.json"))
    assert set((cache_dir / "images").glob("*.tmp*")) == temp_before  # no half-written image cache


def test_show_renders_a_gallery_with_decoded_captions(run, tmp_path, cache_dir, capsys, mini, tiny):
    import torch

    from mmdd_bench.data.images import ImageStore
    from mmdd_bench.distilled import DistilledSet
    from mmdd_bench.features import train_features
    from mmdd_bench.reports.gallery import decode_text

    assert run("--methods", "covmatch", "--sizes", "4", "--set", "covmatch.iterations=2") == 0
    artifact = next((tmp_path / "res" / "artifacts").glob("*.json"))
    capsys.readouterr()
    out = tmp_path / "gallery.png"
    assert main(["show", str(artifact), "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"
    d = DistilledSet.load(artifact)
    assert d.text_kind == "token_embeddings"
    store = ImageStore(mini.train.image_paths, 32, cache_dir, mini.train.fingerprint, tiny.mean, tiny.std)
    _, text_feats = train_features(mini.train, store, tiny, torch.device("cpu"), cache_dir)
    caps = decode_text(d, mini.train, text_feats, tiny)
    assert len(caps) == 4 and all(c.startswith("~ ") and c[2:] in mini.train.captions for c in caps)


def test_debug_runs_are_recorded_but_never_enter_a_leaderboard(cache_dir, tmp_path, capsys):
    res = tmp_path / "res"
    base = ["run", "--cache-dir", str(cache_dir), "--results", str(res), "--datasets", "shapes-mini", "--quiet",
            "--sizes", "5"]
    assert main([*base, "--methods", "random,mtt-vl", "--debug", "--json"]) == 0
    recs = {r["method"]: r for r in (json.loads(p.read_text()) for p in (res / "runs").glob("*.json"))}
    for rec in recs.values():
        assert rec["debug"] is True and rec["protocol_params"]["epochs"] == 2 and rec["protocol_params"]["n_students"] == 1
    assert recs["mtt-vl"]["method_params"]["iterations"] == 3 and recs["mtt-vl"]["method_params"]["num_experts"] == 1
    assert recs["mtt-vl"]["protocol"] == "frozen-text-mtt" and any("learned image step size" in n for n in recs["mtt-vl"]["notes"])
    assert json.loads(capsys.readouterr().out.splitlines()[0])["debug"] is True
    assert pd.read_csv(res / "leaderboard" / "leaderboard.csv").empty
    # The full run of the same cell is another identity: the debug record never stands in for it.
    assert main([*base, "--methods", "random", "--set", "eval.epochs=1"]) == 0
    assert len(list((res / "runs").glob("*.json"))) == 3
    assert len(pd.read_csv(res / "leaderboard" / "leaderboard.csv")) == 1


def test_experts_command_trains_then_reuses(cache_dir, tmp_path, capsys):
    args = ["experts", "--dataset", "shapes-mini", "--cache-dir", str(cache_dir), "--num-experts", "1", "--epochs", "1",
            "--set", "mtt-vl.expert_seed=11", "--set", "mtt-vl.expert_dtype=bfloat16", "--quiet"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["epochs"] == [1] and first["storage_dtype"] == "bfloat16" and first["bytes_per_expert"] > 0
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["train_s"] == 0.0 and again["path"] == first["path"]
    assert main([*args, "--set", "eval.epochs=1"]) == 2  # only mtt-vl.* settings make sense here
    assert main([*args[:-1], "--set", "mtt-vl.expert_momentum=0.9"]) == 2  # unknown name: clear error
