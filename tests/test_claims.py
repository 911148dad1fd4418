"""The claims table (issue 16, item 3): every comparison paired by seed, and a verdict per claim."""

import pytest
from test_records import make_record
from test_reports import metrics

from mmdd_bench.reports.claims import claims_markdown, claims_table
from mmdd_bench.reports.leaderboard import records_frame
from mmdd_bench.reports.writer import write_leaderboards


def _rows(method, values, protocol="trainable-text", size=100, **kw):
    return [make_record(f"{method}-{protocol}-{size}-{kw.get('variant', '')}-{kw.get('eval_variant', '')}-"
                        f"{kw.get('distilled_backbone', '')}-{s}", method=method, protocol=protocol, size=size, seed=s,
                        metrics=metrics(v), **kw) for s, v in enumerate(values)]


def _records():
    recs = _rows("covmatch", [30.0, 31.0, 32.5])
    recs += _rows("random", [20.0, 21.0, 22.0]) + _rows("herding", [29.0, 31.5, 31.0])  # herding: CI contains 0
    recs += _rows("covmatch", [25.0, 26.0, 27.0], variant="online_update=False")  # the online update helps
    recs += _rows("random", [35.0, 36.0, 37.0], size=500)  # CovMatch-100 loses to random-500
    recs += _rows("covmatch", [9.0, 9.0, 9.0], distilled_backbone="tiny-vit")  # a transfer: left out
    recs += _rows("random", [50.0, 50.0, 50.0], eval_variant="tune_lrs=True")  # aided: left out
    recs += _rows("lors", [10.0, 11.0, 12.0], protocol="frozen-text")
    recs += _rows("random", [15.0, 16.0, 17.0], protocol="frozen-text")
    recs += _rows("covmatch", [28.0, 29.0, 30.0], protocol="frozen-text")
    return recs


def test_each_claim_gets_its_paired_comparisons_and_a_verdict():
    table = claims_table(records_frame(_records()))
    by = {(r["claim"], r["comparison"]): r for _, r in table.iterrows()}
    online = by[("the online update helps CovMatch", "covmatch N=100 vs covmatch (online_update=False) N=100")]
    assert online["gain"] == pytest.approx((5 + 5 + 5.5) / 3) and online["gain_ci_low"] > 0 and online["n_seeds"] == 3
    vs_random = by[("CovMatch beats every baseline at every size", "covmatch N=100 vs random N=100")]
    assert vs_random["gain"] == pytest.approx((10 + 10 + 10.5) / 3)  # paired by seed, not the transfer rows
    lors = by[("CovMatch beats every baseline at every size", "covmatch N=100 vs lors N=100")]
    assert lors["protocol"] == "frozen-text" and lors["gain"] == 18.0  # under LoRS's own protocol
    assert by[("LoRS and MTT-VL beat the coresets", "lors N=100 vs random N=100")]["gain"] == -5.0
    text = claims_markdown(table, "shapes", "tiny")
    summary = text.split("## Every comparison")[0]
    verdicts = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in summary.splitlines()
                if line.startswith("| ") and not line.startswith("| claim")}
    assert verdicts["CovMatch beats every baseline at every size"] == "not shown"  # herding's interval holds 0
    assert verdicts["the online update helps CovMatch"] == "holds"
    assert verdicts["CovMatch-100 beats random-500"] == "fails"
    assert verdicts["LoRS and MTT-VL beat the coresets"] == "fails"
    assert verdicts["trainable-text beats frozen-text for CovMatch"] == "not measured"


def test_claims_files_are_written_only_with_comparisons_and_names_are_escaped(tmp_path):
    for rec in _rows("covmatch", [30.0, 31.0], dataset="sha|pes") + _rows("random", [20.0, 21.0], dataset="sha|pes"):
        rec.save(tmp_path / "r")
    written = write_leaderboards(tmp_path / "r", plots=False)
    (claims_md,) = [p for p in written if p.name.endswith(".claims.md")]
    assert "sha\\|pes" in claims_md.read_text() and (tmp_path / "r" / "leaderboard" / "claims.csv").is_file()
    for rec in _rows("random", [20.0, 21.0]):  # random alone: no claim has both sides
        rec.save(tmp_path / "s")
    assert not [p for p in write_leaderboards(tmp_path / "s", plots=False) if "claims" in p.name]


def test_the_page_shows_the_claims_escaped(tmp_path):
    from mmdd_bench.reports.html import write_page
    from mmdd_bench.reports.leaderboard import leaderboard

    frame = records_frame(_rows("covmatch", [30.0, 31.0], backbone="<b>") + _rows("random", [20.0, 21.0], backbone="<b>"))
    page = write_page(tmp_path, leaderboard(frame), {}, [], claims=claims_table(frame)).read_text()
    assert "The papers' claims" in page and "&lt;b&gt;" in page and "<b>" not in page.split("<body>")[1]
    assert "CovMatch beats every baseline at every size" in page and "not measured" in page


def test_a_students_only_cut_is_compared_like_with_like_and_named():
    """scenes scores trainable-text with one student: such rows enter, paired only with rows scored the same way;
    an epochs cut (biased) never enters."""
    cut = {"eval_variant": "n_students=1"}
    recs = _rows("covmatch", [30.0, 31.0, 32.0], **cut) + _rows("random", [20.0, 21.0, 22.0], **cut)
    recs += _rows("random", [90.0, 90.0, 90.0])  # the default evaluation of random: not paired with the cut rows
    recs += _rows("herding", [10.0, 10.0, 10.0], eval_variant="epochs=20,n_students=1")  # biased: left out
    recs += _rows("herding", [12.0, 12.0, 12.0], eval_variant="epochs=20")
    recs += _rows("covmatch", [40.0, 40.0, 40.0], eval_variant="epochs=20")  # would pair with herding's if let in
    recs += _rows("covmatch", [25.0, 26.0, 27.0], protocol="frozen-text", variant="text_trainable=False")
    table = claims_table(records_frame(recs))
    by = {(r["claim"], r["comparison"]): r for _, r in table.iterrows()}
    vs_random = by[("CovMatch beats every baseline at every size", "covmatch N=100 vs random N=100")]
    assert vs_random["gain"] == pytest.approx(10.0) and vs_random["protocol"] == "trainable-text (n_students=1)"
    assert not [c for c in by if "herding" in c[1]]
    frozen = by[("trainable-text beats frozen-text for CovMatch",
                 "covmatch N=100 vs covmatch (text_trainable=False) N=100")]
    assert frozen["protocol"] == "trainable-text (n_students=1) vs frozen-text" and frozen["gain"] == pytest.approx(5.0)


def test_rows_of_an_older_default_never_speak_for_the_method_nor_mix_seeds():
    """Records made under an older code default share CovMatch's label; the newest settings' rows are its
    default, whole, and the older rows (which cover a seed the newer ones lack) never fill in a seed."""
    old = [make_record(f"old-{s}", method="covmatch", protocol="trainable-text", size=100, seed=s,
                       method_params={"lr_encoder": None}, finished_utc="2026-12-01T00:00:00+00:00",
                       metrics=metrics(v)) for s, v in enumerate([90.0, 90.0, 90.0, 90.0])]
    new = [make_record(f"new-{s}", method="covmatch", protocol="trainable-text", size=100, seed=s,
                       method_params={"lr_encoder": 0.003}, finished_utc="2026-12-02T00:00:00+00:00",
                       metrics=metrics(v)) for s, v in enumerate([30.0, 31.0, 32.5])]
    recs = old + new + _rows("random", [20.0, 21.0, 22.0, 23.0])
    table = claims_table(records_frame(recs))
    row = table[table["comparison"] == "covmatch N=100 vs random N=100"].iloc[0]
    assert row["gain"] == pytest.approx((10 + 10 + 10.5) / 3) and row["n_seeds"] == 3


def test_an_older_method_default_never_chooses_the_evaluation_either():
    """A row's older method settings (here the frozen-text ablation before a change of its iterations) scored with
    the default evaluation must not outrank the newest settings' students-only cut: the newest settings speak for
    the row, and only then is the default evaluation preferred to a cut."""
    cut = {"eval_variant": "n_students=1"}
    recs = _rows("covmatch", [30.0, 31.0, 32.0], **cut)
    old = [make_record(f"old-ablation-{s}", method="covmatch", protocol="frozen-text", size=100, seed=s,
                       variant="text_trainable=False", method_params={"iterations": 100},
                       finished_utc="2026-12-01T00:00:00+00:00", metrics=metrics(90.0)) for s in range(3)]
    new = [make_record(f"new-ablation-{s}", method="covmatch", protocol="frozen-text", size=100, seed=s,
                       variant="text_trainable=False", method_params={"iterations": 50}, eval_variant="n_students=1",
                       finished_utc="2026-12-02T00:00:00+00:00", metrics=metrics(v)) for s, v in enumerate([25.0, 26.0, 27.0])]
    table = claims_table(records_frame(recs + old + new))
    row = table[table["claim"] == "trainable-text beats frozen-text for CovMatch"].iloc[0]
    assert row["gain"] == pytest.approx(5.0) and row["protocol"] == "trainable-text (n_students=1) vs frozen-text (n_students=1)"
