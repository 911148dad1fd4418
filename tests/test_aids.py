"""Evaluation aids for sets that carry none: step sizes tuned on val, a full-data teacher's similarity."""

import json

import pytest
import torch

from mmdd_bench.distilled import DistilledSet
from mmdd_bench.params import apply_overrides
from mmdd_bench.protocols import aids, get_protocol

CPU = torch.device("cpu")


def quick(protocol, **kw):
    return apply_overrides(protocol.default_params("shapes-mini"), {"epochs": 2, "n_students": 1, **kw})


def real_set(mini, tiny, cache_dir, n=16, **extras):
    from mmdd_bench.data.images import ImageStore

    store = ImageStore(mini.train.image_paths, tiny.image_size, cache_dir, mini.train.fingerprint, tiny.mean, tiny.std)
    pairs = list(range(0, 5 * n, 5))
    return DistilledSet(store.batch(mini.train.pair_image[pairs]), "captions",
                        captions=[mini.train.captions[i] for i in pairs], extras=extras)


def test_tuned_lrs_come_from_val_only_and_the_grid(mini, tiny, cache_dir, monkeypatch):
    p = get_protocol("frozen-text")
    seen, trained = [], []
    score, train = p.score, p.train_student

    def spy_score(model, split, *args, **kw):
        seen.append(split.fingerprint)
        return score(model, split, *args, **kw)

    def spy_train(model, data, params, lrs, *args, **kw):
        trained.append(dict(lrs))
        return train(model, data, params, lrs, *args, **kw)

    monkeypatch.setattr(p, "score", spy_score)
    monkeypatch.setattr(p, "train_student", spy_train)
    result = p.evaluate(real_set(mini, tiny, cache_dir), mini, tiny, quick(p, tune_lrs=True), 0, CPU, cache_dir)
    n_search = len(aids.ENCODER_FACTORS) + len(aids.PROJECTION_FACTORS)
    assert seen[:n_search] == [mini.val.fingerprint] * n_search  # every candidate scored on val ...
    assert seen[n_search:] == [mini.test.fingerprint]  # ... and only the final student on test
    own = {"encoder": 0.003, "projection": 0.03}
    assert trained[0] == pytest.approx(own)  # the protocol's own lrs first (they win ties)
    assert {round(t["encoder"] / own["encoder"], 6) for t in trained[:len(aids.ENCODER_FACTORS)]} == set(aids.ENCODER_FACTORS)
    assert result.lrs in trained[:n_search] and trained[-1] == result.lrs  # the test student trains at the chosen
    assert result.aids == [aids.VAL_TUNED_LRS]
    assert any("chosen on val" in n for n in result.notes)


def test_tuned_lrs_replace_learned_ones_and_heads_only_search_the_projection(mini, tiny, cache_dir, monkeypatch):
    learned = {"lr_image": torch.tensor(0.5), "lr_text": torch.tensor(0.7)}
    d = real_set(mini, tiny, cache_dir, **learned)
    ft = get_protocol("frozen-text")
    plain = ft.evaluate(d, mini, tiny, quick(ft), 0, CPU, cache_dir)
    assert plain.aids == [aids.LEARNED_LRS] and plain.lrs == pytest.approx({"encoder": 0.5, "projection": 0.7})
    tuned = ft.evaluate(d, mini, tiny, quick(ft, tune_lrs=True), 0, CPU, cache_dir)
    assert tuned.aids == [aids.VAL_TUNED_LRS] and 0.5 not in tuned.lrs.values()
    assert any("replaced" in n for n in tuned.notes)

    fe = get_protocol("frozen-encoders")
    trained = []
    train = fe.train_student
    monkeypatch.setattr(fe, "train_student", lambda m, data, params, lrs, *a, **k: (trained.append(dict(lrs)), train(m, data, params, lrs, *a, **k))[1])
    fe.evaluate(d, mini, tiny, quick(fe, tune_lrs=True), 0, CPU, cache_dir)
    search = trained[:len(aids.ENCODER_FACTORS)]
    assert len({t["encoder"] for t in search}) == 1  # no encoder trains: only the projection lr moves
    assert {round(t["projection"] / 0.03, 6) for t in search} == set(aids.ENCODER_FACTORS)


def test_teacher_similarity_is_cached_and_gives_the_students_soft_targets(mini, tiny, cache_dir, tmp_path):
    d = real_set(mini, tiny, cache_dir)
    sim, key = aids.teacher_similarity(d, mini, tiny, CPU, tmp_path)
    assert sim.shape == (16, 16) and bool(((sim > 0) & (sim <= 1)).all())
    # the teacher's own pairs score highest on average: it learned something from the full split
    assert sim.diagonal().mean() > sim.mean()
    files = list((tmp_path / "teachers").glob("*.safetensors"))
    assert [f.stem for f in files] == [key]
    again, key2 = aids.teacher_similarity(d, mini, tiny, CPU, tmp_path)  # read back, not retrained
    assert key2 == key and torch.equal(again, sim)

    p = get_protocol("frozen-text")
    with_teacher = p.evaluate(d, mini, tiny, quick(p, teacher_similarity=True), 0, CPU, tmp_path)
    without = p.evaluate(d, mini, tiny, quick(p), 0, CPU, tmp_path)
    assert with_teacher.aids == [aids.TEACHER_SIMILARITY] and without.aids == []
    assert with_teacher.per_student != without.per_student
    assert any("teacher's similarity" in n and "cwcl" in n for n in with_teacher.notes)


def test_teacher_similarity_refuses_the_full_data_reference(mini, tiny, cache_dir):
    from mmdd_bench.distilled import REFERENCE_TRAIN
    from mmdd_bench.errors import UsageError

    ref = DistilledSet(torch.zeros(0, 3, 32, 32), "captions", captions=[], reference=REFERENCE_TRAIN,
                       budget_pairs=mini.train.n_pairs)
    with pytest.raises(UsageError, match="teacher_similarity"):
        aids.teacher_similarity(ref, mini, tiny, CPU, cache_dir)


def test_aids_keep_old_identities():
    p = get_protocol("frozen-text")
    params = p.default_params("shapes")
    assert "tune_lrs" not in p.identity(params) and "teacher_similarity" not in p.identity(params)
    assert p.identity(apply_overrides(params, {"tune_lrs": True}))["tune_lrs"] is True


# ---- the aids table ------------------------------------------------------------------------------------


def aids_records() -> list:
    """random with and without aids; herding given them; mtt-vl with its learned lrs and without; one record made
    before aids were named (left out)."""
    from test_records import make_record
    from test_reports import metrics

    def recs(method, aids, eval_variant, values, params=None):
        return [make_record(f"{method}{eval_variant}{s}", seed=s, method=method, eval_aids=aids, eval_variant=eval_variant,
                            protocol_params=params or {"v": eval_variant}, metrics=metrics(v))
                for s, v in enumerate(values)]

    return [*recs("random", [], "", [10.0, 11.0, 12.0]),
            *recs("random", ["val_tuned_lrs"], "tune_lrs=True", [13.0, 14.0, 15.0]),
            *recs("random", ["val_tuned_lrs", "teacher_similarity"], "teacher_similarity=True,tune_lrs=True", [16.0, 17.0, 18.0]),
            *recs("herding", [], "", [11.0, 12.0, 13.0]),
            *recs("herding", ["val_tuned_lrs", "teacher_similarity"], "teacher_similarity=True,tune_lrs=True", [16.5, 17.5, 18.5]),
            *recs("mtt-vl", ["learned_lrs"], "", [15.0, 16.0, 17.0]),
            *recs("mtt-vl", [], "use_learned_lrs=False", [9.0, 10.0, 11.0]),
            *recs("lors", None, "", [30.0, 30.0, 30.0]), *recs("lors", [], "x=1", [5.0, 5.0, 5.0])]


def test_aids_table_splits_the_gain_from_the_aids(tmp_path):
    from mmdd_bench.reports.aids import aids_markdown, aids_table
    from mmdd_bench.reports.leaderboard import records_frame
    from mmdd_bench.reports.writer import write_leaderboards

    table = aids_table(records_frame(aids_records())).set_index("method")
    assert set(table.index) == {"random", "herding", "mtt-vl"}  # lors: its aided records predate eval_aids
    mtt = table.loc["mtt-vl"]
    assert (mtt["aids"], mtt["r_mean_without"], mtt["r_mean_with"]) == ("learned_lrs", 10.0, 16.0)
    assert (mtt["gain_without"], mtt["gain_with"]) == (-1.0, 5.0)  # both against random without aids
    # a learned step size is compared with random's val-tuned one (same kind): 16 - 14; never with random's
    # two-aid evaluation (which would give -1) or its plain one (+5)
    assert (mtt["random_aids"], mtt["gain_same_aids"]) == ("val_tuned_lrs", 2.0)
    herd = table.loc["herding"]
    assert herd["random_aids"] == "val_tuned_lrs+teacher_similarity" and herd["gain_same_aids"] == 0.5
    assert herd["gain_with"] == 6.5 and herd["gain_without"] == 1.0
    # random given its aids: what the aids alone are worth
    assert table.loc["random", "gain_with"] == 6.0 and table.loc["random", "gain_same_aids"] == 0.0

    md = aids_markdown(aids_table(records_frame(aids_records())), "shapes", "tiny")
    assert "| mtt-vl | learned_lrs | 3 | 10.00 | 16.00 | -1.00 [-1.00, -1.00] | +5.00 [+5.00, +5.00] | 14.00 | " \
           "+2.00 [+2.00, +2.00] |" in md
    for r in aids_records():
        r.save(tmp_path)
    paths = {p.name for p in write_leaderboards(tmp_path, plots=False)}
    assert {"aids.csv", "shapes__tiny.aids.md"} <= paths
    assert (tmp_path / "leaderboard" / "shapes__tiny.aids.md").read_text() == md


def test_no_aids_table_without_records_scored_both_ways(tmp_path):
    from test_records import make_record
    from test_reports import metrics

    from mmdd_bench.reports.writer import write_leaderboards

    make_record("r0", eval_aids=[], metrics=metrics(10.0)).save(tmp_path)
    names = {p.name for p in write_leaderboards(tmp_path, plots=False)}
    assert "aids.csv" not in names and not any(n.endswith(".aids.md") for n in names)


def test_the_page_shows_the_aids_table_escaped(tmp_path):
    from mmdd_bench.reports.aids import aids_table
    from mmdd_bench.reports.html import write_page
    from mmdd_bench.reports.leaderboard import leaderboard, records_frame

    recs = aids_records()
    for r in recs:
        if r.method == "herding":
            r.method = "<b>herding</b>"
    frame = records_frame(recs)
    page = write_page(tmp_path, leaderboard(frame), {}, [], aids_table(frame)).read_text()
    assert "<h2>Evaluation aids</h2>" in page and "&lt;b&gt;herding&lt;/b&gt;" in page and "<b>herding" not in page
    assert "gain over random with the same aids" in page


def test_records_name_the_aids_and_old_records_leave_them_unknown(tmp_path):
    from mmdd_bench.protocols.base import EvalResult
    from mmdd_bench.records import RecordSpec, build_record, read_records

    spec = RecordSpec(run_id="a1", distill_id="d", dataset="shapes", dataset_fingerprints={}, method="random",
                      method_version="1", method_params={}, size=10, seed=0, backbone="tiny", backbone_weights="w",
                      protocol="frozen-text", protocol_version="2", protocol_params={})
    m = {"r_mean": 1.0}
    result = EvalResult([m], m, {"r_mean": None}, {}, [1], {"encoder": 0.1, "projection": 0.3}, 1.0, [],
                        [aids.VAL_TUNED_LRS, aids.TEACHER_SIMILARITY])
    build_record(spec, status="ok", started="t", device="cpu", result=result).save(tmp_path)
    # a record written before the field existed has no eval_aids key at all
    data = json.loads((tmp_path / "runs" / "a1.json").read_text())
    del data["eval_aids"]
    data["run_id"] = "a0"
    (tmp_path / "runs" / "a0.json").write_text(json.dumps(data))
    by_id = {r.run_id: r for r in read_records(tmp_path)}
    assert by_id["a1"].eval_aids == ["val_tuned_lrs", "teacher_similarity"] and by_id["a0"].eval_aids is None
