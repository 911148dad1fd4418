"""Experiment files: YAML/TOML with the --set checks, flags over the file, --print-config round trips, presets."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmdd_bench.cli import main
from mmdd_bench.config import build_experiment, load_experiment
from mmdd_bench.dryrun import planner_for
from mmdd_bench.errors import UsageError
from mmdd_bench.plan import Planner, RunConfig
from mmdd_bench.reports.published import published_results
from mmdd_bench.resources import Resources

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def identities(runs) -> list[tuple]:
    out = []
    for run in runs:
        planner, _ = planner_for(run)
        for cell in planner.plan():
            out += [(e.run_id, e.spec.variant, e.spec.eval_variant) for e in planner.cell_plan(cell).evals]
    return out


def flag_identities(cache_dir, tmp_path, **kw) -> list[tuple]:
    config = RunConfig(results_dir=tmp_path, cache_dir=cache_dir, **kw)
    planner = Planner(config, Resources(None, cache_dir))
    return [(e.run_id, e.spec.variant, e.spec.eval_variant) for c in planner.plan() for e in planner.cell_plan(c).evals]


@pytest.mark.parametrize("suffix", ["yaml", "toml"])
def test_a_file_plans_the_same_cells_as_the_same_flags(cache_dir, tmp_path, suffix):
    path = tmp_path / f"exp.{suffix}"
    if suffix == "yaml":
        path.write_text("methods: [random, covmatch]\ndatasets: [shapes-mini]\nsizes: [4, 6]\nseeds: 0,1\n"
                        "set:\n  covmatch: {iterations: 3, rho: 2}\n  eval: {epochs: 2}\n")
    else:
        path.write_text('methods = ["random", "covmatch"]\ndatasets = ["shapes-mini"]\nsizes = [4, 6]\nseeds = [0, 1]\n'
                        "[set.covmatch]\niterations = 3\nrho = 2\n[set.eval]\nepochs = 2\n")
    experiment = build_experiment(load_experiment(path), {"results": str(tmp_path)}, cache_dir=cache_dir)
    expected = flag_identities(cache_dir, tmp_path, methods=["random", "covmatch"], datasets=["shapes-mini"],
                               sizes=[4, 6], seeds=[0, 1],
                               overrides={"covmatch": {"iterations": "3", "rho": "2"}, "eval": {"epochs": "2"}})
    assert identities(experiment.runs) == expected and len(expected) == 8


def test_flags_override_the_file_and_set_merges_name_by_name(cache_dir, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("methods: [covmatch]\ndatasets: [shapes-mini]\nsizes: [4]\n"
                    "set: {covmatch: {iterations: 3, rho: 2}}\n"
                    "cells: [{size: 6, set: {covmatch: {iterations: 7}}}]\n")
    flags = {"results": str(tmp_path), "sizes": [4, 6], "set": {"covmatch": {"rho": "3"}}}
    (run,) = build_experiment(load_experiment(path), flags, cache_dir=cache_dir).runs
    planner, _ = planner_for(run)
    params = {c.size: planner.cell_plan(c).params for c in planner.plan()}
    assert params[4].iterations == 3 and params[6].iterations == 7  # the file's per-cell entry
    assert params[4].rho == params[6].rho == 3.0  # the command line wins over the file
    flags["set"] = {"covmatch": {"iterations": "9"}}
    (run,) = build_experiment(load_experiment(path), flags, cache_dir=cache_dir).runs
    planner, _ = planner_for(run)
    assert {planner.cell_plan(c).params.iterations for c in planner.plan()} == {9}  # over the cells too


def test_workers_come_from_the_file_unless_the_flag_says(cache_dir, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("methods: [random]\ndatasets: [shapes-mini]\nsizes: [4]\nworkers: 3\n")
    assert build_experiment(load_experiment(path), {"results": str(tmp_path)}, cache_dir=cache_dir).workers == 3
    flags = {"results": str(tmp_path), "workers": 2}
    assert build_experiment(load_experiment(path), flags, cache_dir=cache_dir).workers == 2
    path.write_text("methods: [random]\ndatasets: [shapes-mini]\nsizes: [4]\n")
    assert build_experiment(load_experiment(path), {"results": str(tmp_path)}, cache_dir=cache_dir).workers == 1


@pytest.mark.parametrize("text,message", [
    ("sizs: [4]\n", "unknown key 'sizs'. Did you mean sizes?"),
    ("methods: [covmatch]\nset: {covmatch: {rhoo: 2}}\n", "unknown parameter 'covmatch.rhoo'. Did you mean rho?"),
    ("set: {eval: {epochs: 0}}\n", "eval.epochs must be >= 1"),
    ("set: {eval: {epochs: many}}\n", "eval.epochs: expected int, got 'many'"),
    ("set: {covmatch: {rho: 2}}\n", "neither a method in this run"),
    ("sizes: [four]\n", "sizes.0"),
    ("experiment: {titel: x}\n", "unknown key 'experiment.titel'"),
    ("runs: [{sizes: [4], set: {random: {nope: 1}}}]\n", "runs[0] set: unknown parameter 'random.nope'"),
    ("methods: [random\n", "is not valid YAML"),
    ("workers: 0\n", "workers"),
])
def test_bad_files_exit_2_naming_the_file_and_the_key(cache_dir, tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text("methods: [random]\ndatasets: [shapes-mini]\n" + text if not text.startswith("methods") else
                    "datasets: [shapes-mini]\n" + text)
    assert main(["run", "--config", str(path), "--results", str(tmp_path / "res"), "--cache-dir", str(cache_dir),
                 "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "res").exists()


def test_print_config_fills_every_parameter_and_reproduces_the_run_ids(cache_dir, tmp_path, capsys):
    args = ["run", "--methods", "random,covmatch", "--datasets", "shapes-mini", "--sizes", "4,6", "--seeds", "0",
            "--set", "covmatch.iterations=3", "--set", "eval.epochs=2", "--protocol", "auto,frozen-text",
            "--results", str(tmp_path / "res"), "--cache-dir", str(cache_dir)]
    assert main([*args, "--print-config"]) == 0
    text = capsys.readouterr().out
    resolved = yaml.safe_load(text)
    cell = next(c for c in resolved["cells"] if c["size"] == 6)
    assert cell["set"]["covmatch"]["rho"] is not None and cell["set"]["covmatch"]["lr_encoder"] is not None
    assert cell["set"]["covmatch"]["iterations"] == 3 and cell["set"]["eval"]["epochs"] == 2
    assert cell["set"]["eval"]["lr_decay_epoch"] is None  # derived from the epochs: left to derive
    printed = tmp_path / "resolved.yaml"
    printed.write_text(text)
    from_file = build_experiment(load_experiment(printed), {"results": str(tmp_path / "res")}, cache_dir=cache_dir)
    expected = flag_identities(cache_dir, tmp_path / "res", methods=["random", "covmatch"], datasets=["shapes-mini"],
                               sizes=[4, 6], seeds=[0], protocols=["auto", "frozen-text"],
                               overrides={"covmatch": {"iterations": "3"}, "eval": {"epochs": "2"}})
    assert identities(from_file.runs) == expected
    assert {v for _, _, v in expected} == {"epochs=2"}  # the labels survive too, not just the ids


# ---- presets ------------------------------------------------------------------------------------------
PRESETS = {  # file -> (source prefix in published_results.csv, protocol)
    "mtt-vl-flickr30k.yaml": ("MTT-VL paper", "frozen-text-mtt", ["flickr30k"]),
    "mtt-vl-coco.yaml": ("MTT-VL paper", "frozen-text-mtt", ["coco"]),
    "lors.yaml": ("LoRS paper", "frozen-text", ["flickr30k", "coco"]),
    "covmatch-table2.yaml": ("CovMatch paper", "trainable-text", ["flickr30k", "coco"]),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_plans_the_published_table(cache_dir, tmp_path, name):
    """Without the paper's weights or the datasets here: the plan reports them unknown and still plans."""
    from mmdd_bench.method import METHODS

    source, protocol, datasets = PRESETS[name]
    file = load_experiment(CONFIGS / name)
    assert file.experiment.paper and file.experiment.table and file.experiment.protocol
    missing = [m for m in file.methods if m not in METHODS.names()]
    assert not missing, f"{name} runs {missing}, which are not registered methods (the lors branch adds them)"
    experiment = build_experiment(file, {"results": str(tmp_path)}, cache_dir=cache_dir)
    (run,) = experiment.runs
    planner, resources = planner_for(run)
    cells = planner.plan()
    assert "backbone paper" in resources.unknown or not resources.unknown
    published = published_results()
    rows = published[published["source"].str.startswith(source) & published["dataset"].isin(datasets)
                     & (published["protocol"] == protocol) & pd.notna(published["size"])]
    runnable = rows[rows["method"].isin(METHODS.names())]
    grid = {(c.dataset, c.method, c.size) for c in cells}
    assert grid == {(r.dataset, r.method, int(r.size)) for r in runnable.itertuples()}
    assert {c.protocols for c in cells} == {(protocol,)}
    assert {c.seed for c in cells} == {0, 1, 2} and len(cells) == 3 * len(grid)
    not_here = set(rows["method"]) - set(METHODS.names())
    assert all(m in " ".join(file.experiment.notes) for m in not_here)  # the file says what it leaves out


def test_the_ablation_preset_plans_its_variants_beside_the_table_2_cell(cache_dir, tmp_path):
    file = load_experiment(CONFIGS / "covmatch-ablations.yaml")
    experiment = build_experiment(file, {"results": str(tmp_path)}, cache_dir=cache_dir)
    variants = []
    for run in experiment.runs:
        planner, _ = planner_for(run)
        cells = planner.plan()
        assert {(c.dataset, c.method, c.size) for c in cells} == {("flickr30k", "covmatch", 100)}
        variants.append({(planner.cell_plan(c).evals[0].spec.variant, c.protocols) for c in cells})
    assert variants == [{("", ("trainable-text",))}, {("text_trainable=False", ("frozen-text",))},
                        {("lam=0.0", ("trainable-text",))}, {("online_update=False", ("trainable-text",))}]
    published = published_results()
    assert ((published["method"] == "covmatch") & (published["dataset"] == "flickr30k") & (published["size"] == 100)
            & (published["protocol"] == "trainable-text")).sum() == 1


def test_the_embedded_preset_is_the_reproduce_script(cache_dir, tmp_path):
    script = (CONFIGS.parent / "scripts" / "reproduce_embedded.sh").read_text()
    file = load_experiment(CONFIGS / "shapes-embedded.yaml")
    assert script.count("mmdd-bench run ") == 1 and "CONFIG:-configs/shapes-embedded.yaml" in script
    for name in ("shapes-embedded.yaml", "scenes-embedded.yaml"):
        file = load_experiment(CONFIGS / name)
        assert {m for run in file.runs for m in run.methods} >= {"random", "herding", "k-center", "forgetting",
                                                                "covmatch", "mtt-vl", "tesla-vl", "lors", "full-data"}
    dry = main(["run", "--config", str(CONFIGS / "shapes-embedded.yaml"), "--dry-run", "--json", "--results",
                str(tmp_path), "--cache-dir", str(cache_dir)])
    assert dry == 0


def test_the_scenes_preset_cuts_students_never_epochs_sizes_or_seeds(cache_dir, tmp_path):
    """Issue 16's grid: 100 / 200 / 500 pairs and 3 seeds for every method; the recorded cut (1 student per seed,
    each protocol's epochs) reaches every evaluation of the sets, and never a ceiling's own settings."""
    experiment = build_experiment(load_experiment(CONFIGS / "scenes-embedded.yaml"), {"results": str(tmp_path)},
                                  cache_dir=cache_dir)
    seen, protocols = {}, set()
    for run in experiment.runs:
        assert run.datasets == ["scenes"] and run.seeds in ([0, 1, 2], [0])
        cut = run.overrides.get("eval", {})
        if run.methods == ["full-data"]:
            assert not cut  # the ceilings keep methods/full_data.py's EMBEDDED_EVAL, uncut
            continue
        assert {k: int(v) for k, v in cut.items()} == {"n_students": 1}, run.methods
        protocols.update(run.protocols)
        for method in run.methods:
            seen.setdefault(method, set()).update(run.sizes)
    assert {"trainable-text", "frozen-text", "frozen-text-mtt", "frozen-encoders"} <= protocols
    for method in ("random", "herding", "k-center", "forgetting", "covmatch", "mtt-vl", "tesla-vl", "lors"):
        assert seen[method] >= {100, 200, 500}, method


def test_dry_run_json_of_a_preset_lists_cells_with_unknown_ids(cache_dir, tmp_path, capsys):
    assert main(["run", "--config", str(CONFIGS / "covmatch-table2.yaml"), "--dry-run", "--json", "--results",
                 str(tmp_path), "--cache-dir", str(cache_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["cells"]) == 4 * 3 * 2 * 3 and out["unknown"]  # methods x sizes x datasets x seeds
    assert all(c["action"] == "unknown" and c["evals"][0]["run_id"] is None for c in out["cells"])
    assert not (tmp_path / "runs").exists()


def test_methods_flag_picks_from_each_run_of_a_file_of_runs(cache_dir, tmp_path):
    """`--methods covmatch` on a file of runs means that file's CovMatch cells: a run of other methods is dropped,
    never turned into CovMatch at its sizes (the sizes of random's own run, say)."""
    path = tmp_path / "exp.yaml"
    path.write_text("datasets: [shapes-mini]\nsizes: [4]\nruns:\n"
                    "  - {methods: [random, covmatch]}\n"
                    "  - {methods: [random], sizes: [8, 16]}\n"
                    "  - {methods: [covmatch], set: {covmatch: {online_update: false}}}\n")
    runs = build_experiment(load_experiment(path), {"results": str(tmp_path), "methods": ["covmatch"]},
                            cache_dir=cache_dir).runs
    assert [(r.methods, r.sizes) for r in runs] == [(["covmatch"], [4]), (["covmatch"], [4])]
    (random_only,) = build_experiment(load_experiment(path), {"results": str(tmp_path), "methods": ["random"],
                                                              "sizes": [8]}, cache_dir=cache_dir).runs
    assert (random_only.methods, random_only.sizes) == (["random"], [8])  # --sizes picks too (next test)
    with pytest.raises(UsageError, match="none of its runs has any of --methods herding"):
        build_experiment(load_experiment(path), {"results": str(tmp_path), "methods": ["herding"]}, cache_dir=cache_dir)
    flat = tmp_path / "flat.yaml"
    flat.write_text("methods: [random]\ndatasets: [shapes-mini]\nsizes: [4]\n")
    (run,) = build_experiment(load_experiment(flat), {"results": str(tmp_path), "methods": ["herding"]},
                              cache_dir=cache_dir).runs
    assert run.methods == ["herding"]  # a flat file: flags override, as before


def test_sizes_flag_picks_from_each_run_of_a_file_of_runs(cache_dir, tmp_path):
    """`--sizes 16` on a file of runs means that file's N=16 cells: an ablation run pinned to N=4 is dropped,
    never expanded to 16; seeds and the like still override; a flat file's sizes are replaced as before."""
    path = tmp_path / "exp.yaml"
    path.write_text("datasets: [shapes-mini]\nsizes: [4, 8, 16]\nseeds: [0]\nruns:\n"
                    "  - {methods: [random, covmatch]}\n"
                    "  - {methods: [covmatch], sizes: [4], set: {covmatch: {online_update: false}}}\n")
    runs = build_experiment(load_experiment(path), {"results": str(tmp_path), "sizes": [16, 8], "seeds": [3]},
                            cache_dir=cache_dir).runs
    assert [(r.methods, r.sizes, r.seeds) for r in runs] == [(["random", "covmatch"], [8, 16], [3])]
    (main_run, pinned) = build_experiment(load_experiment(path), {"results": str(tmp_path), "sizes": [4]},
                                          cache_dir=cache_dir).runs
    assert (pinned.sizes, main_run.sizes) == ([4], [4])
    assert pinned.overrides["covmatch"]["online_update"] is False and not main_run.overrides.get("covmatch")
    with pytest.raises(UsageError, match=r"none of its runs has any of --sizes 500 \(its sizes: 4, 8, 16\)"):
        build_experiment(load_experiment(path), {"results": str(tmp_path), "sizes": [500]}, cache_dir=cache_dir)
    flat = tmp_path / "flat.yaml"
    flat.write_text("methods: [random]\ndatasets: [shapes-mini]\nsizes: [4]\n")
    (run,) = build_experiment(load_experiment(flat), {"results": str(tmp_path), "sizes": [500]},
                              cache_dir=cache_dir).runs
    assert run.sizes == [500]
