"""Identities and labels: resolved before hashing, only what can change a result, variants as a difference from
the defaults; plans that cannot run are refused before anything is written."""

import json

import pandas as pd
import pytest

from mmdd_bench.cli import main
from mmdd_bench.plan import Cell, Planner, RunConfig
from mmdd_bench.resources import Resources


def planner(tmp_path, cache_dir, methods=("random",), overrides=None, datasets=("shapes-mini",), **kw):
    config = RunConfig(methods=list(methods), datasets=list(datasets), sizes=[4], seeds=[0], results_dir=tmp_path,
                       cache_dir=cache_dir, overrides=overrides or {}, **kw)
    return Planner(config, Resources(None, cache_dir))


def evals(p, method="random", protocols=("trainable-text",), dataset="shapes-mini", size=4):
    return p.cell_plan(Cell(dataset, method, size, 0, protocols)).evals


def test_inactive_parameters_do_not_change_identity(tmp_path, cache_dir):
    base = evals(planner(tmp_path, cache_dir))[0]
    other = evals(planner(tmp_path, cache_dir, overrides={"eval": {"val_every": "3"}}))[0]
    assert other.run_id == base.run_id and other.spec.eval_variant == ""  # val_every is unused under selection=final
    val = evals(planner(tmp_path, cache_dir, overrides={"eval": {"selection": "val"}}))[0]
    val3 = evals(planner(tmp_path, cache_dir, overrides={"eval": {"selection": "val", "val_every": "3"}}))[0]
    assert len({base.run_id, val.run_id, val3.run_id}) == 3 and val3.spec.eval_variant == "selection=val,val_every=3"
    learned = evals(planner(tmp_path, cache_dir, overrides={"eval": {"use_learned_lrs": "false"}}))[0]
    assert learned.run_id == base.run_id  # trainable-text never reads learned step sizes


def test_defaults_are_resolved_before_hashing(tmp_path, cache_dir, tiny):
    base = evals(planner(tmp_path, cache_dir))[0]
    assert base.spec.protocol_params["lr_encoder"] == 0.003 and base.spec.protocol_params["lr_decay_epoch"] == 20
    same = evals(planner(tmp_path, cache_dir, overrides={"eval": {"lr_encoder": "0.003", "lr_decay_epoch": "20"}}))[0]
    assert same.run_id == base.run_id and same.spec.eval_variant == ""
    shorter = evals(planner(tmp_path, cache_dir, overrides={"eval": {"epochs": "2"}}))[0]
    assert shorter.spec.eval_variant == "epochs=2"  # the decay epoch follows the epochs; it is no separate label


def test_an_override_equal_to_the_default_is_no_variant(tmp_path, cache_dir):
    base = evals(planner(tmp_path, cache_dir, methods=["covmatch"]), "covmatch")[0]
    same = evals(planner(tmp_path, cache_dir, methods=["covmatch"], overrides={"covmatch": {"iterations": "150"}}),
                 "covmatch")[0]
    assert same.run_id == base.run_id and same.spec.variant == ""
    lam = evals(planner(tmp_path, cache_dir, methods=["covmatch"], overrides={"covmatch": {"lambda": "0"}}),
                "covmatch")[0]
    assert lam.spec.variant == "lam=0.0" and lam.run_id != base.run_id
    # Without the online update the online model's lrs are never used: setting them makes no new result.
    off = planner(tmp_path, cache_dir, methods=["covmatch"], overrides={"covmatch": {"online_update": "false"}})
    off_lr = planner(tmp_path, cache_dir, methods=["covmatch"],
                     overrides={"covmatch": {"online_update": "false", "lr_encoder": "0.5"}})
    assert evals(off, "covmatch")[0].run_id == evals(off_lr, "covmatch")[0].run_id


@pytest.mark.parametrize("args,message", [
    (["--set", "eval.lr_encoder=0"], "eval.lr_encoder must be > 0"),
    (["--set", "eval.lr_encoder=-1"], "eval.lr_encoder must be > 0"),
    (["--set", "eval.val_every=0", "--set", "eval.selection=val"], "eval.val_every must be >= 1"),
    (["--set", "eval.momentum=1.5"], "eval.momentum must be < 1"),
    (["--methods", "covmatch", "--set", "covmatch.iterations=-1"], "covmatch.iterations must be >= 0"),
    (["--methods", "covmatch", "--set", "covmatch.reset_every=0"], "covmatch.reset_every must be >= 1"),
    (["--methods", "covmatch", "--set", "covmatch.real_batch=0"], "covmatch.real_batch must be >= 2"),
    (["--methods", "covmatch", "--set", "covmatch.lr_text=nan"], "finite"),
    (["--methods", "covmatch", "--set", "covmatch.amp=fp8"], "covmatch.amp must be one of none, bf16"),
    (["--seeds", "-1"], "--seeds must be >= 0"),
    (["--methods", "random,mtt-vl", "--protocol", "trainable-text"], "mtt-vl (N=4) makes sets with sentence_embeddings"),
    (["--methods", "covmatch", "--set", "covmatch.text_trainable=false", "--protocol", "trainable-text"],
     "cannot read"),
])
def test_bad_plans_exit_2_before_any_work(cache_dir, tmp_path, capsys, args, message):
    base = ["run", "--datasets", "shapes-mini", "--sizes", "4", "--cache-dir", str(cache_dir), "--results",
            str(tmp_path / "res"), "--quiet"]
    if "--methods" not in args:
        args = ["--methods", "random", *args]
    assert main([*base, *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "res" / "runs").exists() and not (tmp_path / "res" / "artifacts").exists()


def test_eval_records_follow_the_comparison_rules(cache_dir, tmp_path, capsys):
    """``eval`` records: the artifact's own seed by default, an eval_variant like any cell, and an identity that
    covers the captions in the set's JSON, not only its tensors."""
    res = tmp_path / "res"
    common = ["--cache-dir", str(cache_dir), "--results", str(res), "--quiet"]
    assert main(["run", "--datasets", "shapes-mini", "--methods", "random", "--sizes", "4", "--seeds", "3",
                 "--set", "eval.epochs=1", "--set", "eval.n_students=1", *common]) == 0
    artifact = next((res / "artifacts").glob("*.json"))
    capsys.readouterr()
    assert main(["eval", str(artifact), "--set", "eval.epochs=1", "--set", "eval.n_students=1", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    rec = json.loads(open(out["record"]).read())
    assert rec["seed"] == 3 and rec["eval_variant"] == "epochs=1,n_students=1" and rec["source"] == "eval"
    harness = [json.loads(p.read_text()) for p in (res / "runs").glob("*.json") if p.name != rec["run_id"] + ".json"]
    assert harness[0]["eval_variant"] == rec["eval_variant"] and harness[0]["method_params"] == rec["method_params"]
    # The same leaderboard row, one record per seed: n_seeds stays 1.
    with pytest.warns(UserWarning, match="several records of one seed"):
        assert main(["report", "--results", str(res)]) == 0
    board = pd.read_csv(res / "leaderboard" / "leaderboard.csv")
    assert board["n_seeds"].tolist() == [1]
    # Changing a caption in the JSON (tensors untouched) is another set: another identity.
    header = json.loads(artifact.read_text())
    header["captions"][0] = "a completely different caption"
    artifact.write_text(json.dumps(header))
    capsys.readouterr()
    assert main(["eval", str(artifact), "--set", "eval.epochs=1", "--set", "eval.n_students=1", *common]) == 0
    assert json.loads(capsys.readouterr().out)["record"] != out["record"]


def test_eval_refuses_a_set_from_another_dataset(cache_dir, tmp_path, capsys):
    from conftest import write_flickr

    res = tmp_path / "res"
    common = ["--cache-dir", str(cache_dir), "--results", str(res), "--quiet"]
    assert main(["run", "--datasets", "shapes-mini", "--methods", "random", "--sizes", "2", "--set", "eval.epochs=1",
                 "--set", "eval.n_students=1", *common]) == 0
    write_flickr(tmp_path / "data")
    artifact = next((res / "artifacts").glob("*.json"))
    capsys.readouterr()
    assert main(["eval", str(artifact), "--dataset", "flickr30k", "--data-root", str(tmp_path / "data"), *common]) == 2
    assert "was distilled from 'shapes-mini'" in " ".join(capsys.readouterr().err.split())
