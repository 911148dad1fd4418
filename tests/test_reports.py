import numpy as np
import pandas as pd
import pytest
from test_records import make_record

from mmdd_bench.reports.leaderboard import leaderboard, records_frame, to_markdown
from mmdd_bench.reports.published import published_for, published_results
from mmdd_bench.reports.writer import write_leaderboards


def metrics(value: float) -> dict:
    names = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "r_mean"]
    return {"mean": {m: value for m in names}, "std": {m: 0.0 for m in names}, "per_student": []}


def test_leaderboard_mean_std_over_seeds_and_gain(tmp_path):
    recs = [make_record(f"r{s}", seed=s, metrics=metrics(10.0 + s)) for s in range(3)]
    recs += [make_record(f"c{s}", seed=s, method="covmatch", metrics=metrics(20.0 + 2 * s)) for s in range(3)]
    recs += [make_record("bad", seed=9, status="failed", metrics=metrics(99.0))]  # never enters
    board = leaderboard(records_frame(recs))
    assert list(board["method"]) == ["covmatch", "random"]  # sorted by r_mean within a size
    cov = board[board["method"] == "covmatch"].iloc[0]
    assert cov["n_seeds"] == 3 and cov["r_mean"] == 22.0 and cov["r_mean_std"] == 2.0
    assert cov["gain_vs_random"] == 11.0


def test_records_with_different_settings_never_merge_and_baselines_stay_honest(tmp_path):
    """Same label (no --set) but different code defaults: two rows, each labelled with its settings; random
    under an ambiguous baseline gives no gain; an eval variant that only concerns learned lrs compares with
    random's default evaluation."""
    recs = [make_record(f"c{s}", seed=s, method="covmatch", method_params={"iterations": 100}, metrics=metrics(20.0))
            for s in range(2)]
    recs += [make_record(f"o{s}", seed=s, method="covmatch", method_params={"iterations": 200}, metrics=metrics(30.0))
             for s in range(2)]
    recs += [make_record(f"r{s}", seed=s, metrics=metrics(10.0)) for s in range(2)]
    recs += [make_record(f"m{s}", seed=s, method="mtt-vl", eval_variant="use_learned_lrs=False", metrics=metrics(12.0))
             for s in range(2)]
    board = leaderboard(records_frame(recs))
    cov = board[board["method"] == "covmatch"]
    assert sorted(cov["r_mean"]) == [20.0, 30.0] and cov["settings"].nunique() == 2 and set(cov["n_seeds"]) == {2}
    assert sorted(cov["gain_vs_random"]) == [10.0, 20.0]
    assert board[board["method"] == "mtt-vl"]["gain_vs_random"].iloc[0] == 2.0  # vs random's default eval
    no_sim = [make_record(f"l{s}", seed=s, method="lors", eval_variant="use_learned_similarity=False",
                          metrics=metrics(11.0)) for s in range(2)]
    lors = leaderboard(records_frame(recs + no_sim)).set_index("method").loc["lors"]
    assert lors["gain_vs_random"] == 1.0  # random carries no similarity either: its default evaluation
    md = to_markdown(board)
    # only the clashing label is disambiguated, by the parameter that differs
    assert md.count("[iterations=") == 2 and "| covmatch | [iterations=100] |" in md and "| random |  |" in md
    for r in recs:
        r.save(tmp_path)
    written = {p.name for p in write_leaderboards(tmp_path)}  # plots label the two covmatch series apart
    assert "shapes__tiny__frozen-text__r_mean_vs_size.png" in written

    # Two random rows with different settings: which one is the baseline is unknowable, so no gain at all.
    recs += [make_record(f"q{s}", seed=s, method_params={"other": 1}, metrics=metrics(11.0)) for s in range(2)]
    board = leaderboard(records_frame(recs))
    assert board["gain_vs_random"].isna().all()

    # An eval variant that changes random's scoring too gets no borrowed baseline.
    other = [make_record("e0", method="covmatch", eval_variant="epochs=2", metrics=metrics(5.0)),
             make_record("r0", metrics=metrics(10.0))]
    board = leaderboard(records_frame(other))
    assert board[board["method"] == "covmatch"]["gain_vs_random"].isna().all()


def test_write_leaderboards_with_published_and_plots(tmp_path):
    for s in range(2):
        make_record(f"r{s}", seed=s, dataset="flickr30k", backbone="paper", protocol="trainable-text", size=100,
                    metrics=metrics(9.0 + s)).save(tmp_path)
    paths = write_leaderboards(tmp_path)
    names = {p.name for p in paths}
    assert "flickr30k__paper__trainable-text.md" in names
    assert "flickr30k__paper__trainable-text__r_mean_vs_size.png" in names
    assert "flickr30k__paper__trainable-text__r_mean_vs_size.svg" in names
    md = (tmp_path / "leaderboard" / "flickr30k__paper__trainable-text.md").read_text()
    assert "Published" in md and "CovMatch paper" in md and "| random |  |  | 100 | 2 |" in md
    assert pd.read_csv(tmp_path / "leaderboard" / "leaderboard.csv")["n_seeds"].tolist() == [2]
    svg = tmp_path / "leaderboard" / "flickr30k__paper__trainable-text__r_mean_vs_size.svg"
    first = svg.read_bytes()
    write_leaderboards(tmp_path)
    assert svg.read_bytes() == first  # a regenerated report leaves unchanged figures unchanged (git stays quiet)


def test_published_data_is_packaged():
    frame = published_results()
    assert {"source", "dataset", "protocol", "method", "size", "r_mean"} <= set(frame.columns)
    cov = published_for("flickr30k", "paper", "trainable-text")
    assert cov[(cov["method"] == "covmatch") & (cov["size"] == 100)]["r_mean"].iloc[0] == 30.5
    assert published_for("shapes", "tiny", "trainable-text").empty


def test_one_record_per_seed_keeps_the_newest_and_names_the_others(tmp_path):
    """A second record of seed 0 (an ``eval`` of the same artifact, a rerun) must not count as a fourth seed."""
    recs = [make_record(f"r{s}", seed=s, finished_utc=f"2026-01-0{s + 1}", metrics=metrics(10.0 + s)) for s in range(3)]
    board = leaderboard(records_frame(recs))
    assert board["n_seeds"].tolist() == [3] and board["r_mean"].tolist() == [11.0]
    again = make_record("again", seed=0, finished_utc="2026-02-01", metrics=metrics(40.0))
    with pytest.warns(UserWarning, match=r"kept the newest runs/again.json, left out runs/r0.json"):
        board = leaderboard(records_frame([*recs, again]))
    assert board["n_seeds"].tolist() == [3] and board["r_mean"].tolist() == [(40.0 + 11.0 + 12.0) / 3]


def test_rows_are_keyed_by_weights_and_splits():
    a = [make_record(f"a{s}", seed=s, backbone_weights="tiny-digest-1", metrics=metrics(10.0)) for s in range(2)]
    b = [make_record(f"b{s}", seed=s, backbone_weights="tiny-digest-2", metrics=metrics(20.0)) for s in range(2)]
    c = [make_record(f"c{s}", seed=s, backbone_weights="tiny-digest-1", dataset_fingerprints={"test": "other"},
                     metrics=metrics(30.0)) for s in range(2)]
    board = leaderboard(records_frame(a + b + c))
    assert sorted(board["r_mean"]) == [10.0, 20.0, 30.0] and set(board["n_seeds"]) == {2}
    assert board["settings"].nunique() == 3


def test_one_seed_has_no_std_rather_than_zero(tmp_path):
    make_record("r0", metrics=metrics(10.0)).save(tmp_path)
    write_leaderboards(tmp_path, plots=False)
    board = pd.read_csv(tmp_path / "leaderboard" / "leaderboard.csv")
    assert board["n_seeds"].tolist() == [1] and board["r_mean_std"].isna().all() and board["r_mean_ci_low"].isna().all()
    md = (tmp_path / "leaderboard" / "shapes__tiny__frozen-text.md").read_text()
    assert "± 0.00" not in md and "| 10.00 |" in md


def test_intervals_and_the_near_random_flag(tmp_path):
    """Clearly better than random (every seed gains 10): no flag; gains of -1, +3, +1: the interval holds 0."""
    recs = [make_record(f"r{s}", seed=s, metrics=metrics(10.0 + s)) for s in range(3)]
    recs += [make_record(f"c{s}", seed=s, method="covmatch", metrics=metrics(20.0 + s)) for s in range(3)]
    recs += [make_record(f"h{s}", seed=s, method="herding", deterministic=True, metrics=metrics(v))
             for s, v in enumerate([9.0, 14.0, 13.0])]
    board = leaderboard(records_frame(recs)).set_index("method")
    assert board.loc["covmatch", "vs_random"] == "" and board.loc["covmatch", "gain_ci_low"] == 10.0
    assert board.loc["herding", "vs_random"] == "~ random"
    assert board.loc["herding", "gain_ci_low"] <= 0 <= board.loc["herding", "gain_ci_high"]
    assert board.loc["random", "r_mean_ci_low"] == 10.0 and board.loc["random", "r_mean_ci_high"] == 12.0
    assert bool(board.loc["herding", "deterministic"]) and not bool(board.loc["covmatch", "deterministic"])
    again = leaderboard(records_frame(recs)).set_index("method")  # seeded: the same records, the same table
    pd.testing.assert_frame_equal(board, again)
    for r in recs:
        r.save(tmp_path)
    write_leaderboards(tmp_path, plots=False)
    md = (tmp_path / "leaderboard" / "shapes__tiny__frozen-text.md").read_text()
    assert "| herding † |" in md and "~ random" in md and "deterministic method" in md
    assert "+10.00 [+10.00, +10.00]" in md
    csv = pd.read_csv(tmp_path / "leaderboard" / "leaderboard.csv", keep_default_na=False)
    assert set(csv["vs_random"]) == {"", "~ random"}


def test_crafted_record_fields_never_write_outside_the_results_folder(tmp_path):
    """Group names come from record fields: a protocol of '/../../victim/README' must stay a file name."""
    results = tmp_path / "results"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "README").write_text("keep me")
    hostile = ["/../../victim/README", "../../victim", "a/b", "..", ".hidden", "coco.v1", "coco.v2", "x__y"]
    for i, name in enumerate(hostile):
        make_record(f"h{i}", dataset=name, protocol=name, metrics=metrics(10.0)).save(results)
    paths = write_leaderboards(results)
    assert (victim / "README").read_text() == "keep me" and sorted(p.name for p in victim.iterdir()) == ["README"]
    for path in paths:
        assert path.resolve().parent == (results / "leaderboard").resolve(), path
    assert len({p.name for p in paths}) == len(paths)  # no two groups share a file
    names = {p.name for p in paths}
    assert "coco.v1__tiny__coco.v1.csv" in names and "coco.v2__tiny__coco.v2.csv" in names  # a dot is no suffix
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and results not in p.parents and p.parent != victim]


def test_gain_at_equal_storage_interpolates_random_and_never_extrapolates():
    """A set whose pairs cost 3x random's bytes is compared with random at 3x the pairs (interpolated in log size)."""
    recs = [make_record(f"r{n}{s}", seed=s, size=n, storage_bytes=1000 * n, metrics=metrics(v))
            for n, v in [(10, 10.0), (40, 30.0)] for s in range(2)]
    recs += [make_record(f"c{s}", seed=s, method="covmatch", size=10, storage_bytes=20_000, metrics=metrics(25.0))
             for s in range(2)]
    recs += [make_record(f"big{s}", seed=s, method="mtt-vl", size=10, storage_bytes=80_000, metrics=metrics(40.0))
             for s in range(2)]
    board = leaderboard(records_frame(recs)).set_index("method")
    cov = board.loc["covmatch"]
    assert cov["pairs_equal_bytes"] == 20.0 and cov["random_equal_bytes"] == 20.0  # halfway in log size: 10 -> 40
    assert cov["gain_equal_bytes"] == 5.0 and cov["gain_vs_random"] == 15.0
    assert np.isnan(board.loc["mtt-vl", "random_equal_bytes"])  # 80 pairs: outside the measured 10..40
    random_rows = board.loc["random"]
    assert (random_rows["gain_equal_bytes"] == 0).all()


def test_share_of_ceiling_uses_the_full_data_row_of_the_same_protocol():
    recs = [make_record(f"f{s}", seed=s, method="full-data", size=1000, deterministic=True, metrics=metrics(50.0),
                        eval_variant="epochs=10") for s in range(2)]
    recs += [make_record(f"r{s}", seed=s, metrics=metrics(10.0)) for s in range(2)]
    recs += [make_record(f"t{s}", seed=s, protocol="trainable-text", metrics=metrics(20.0)) for s in range(2)]
    board = leaderboard(records_frame(recs)).set_index(["method", "protocol"])
    assert board.loc[("random", "frozen-text"), "share_of_ceiling"] == 20.0  # 10 of the frozen-text ceiling 50
    assert board.loc[("full-data", "frozen-text"), "share_of_ceiling"] == 100.0
    assert np.isnan(board.loc[("random", "trainable-text"), "share_of_ceiling"])  # no trainable-text ceiling run
    assert "| 20% |" in to_markdown(board.reset_index())


def matrix_records() -> list:
    """random and covmatch under two protocols at one size, with the frozen-text ceiling."""
    recs = []
    for proto, rand, cov in [("frozen-text", [10.0, 11.0, 12.0], [14.0, 15.0, 16.0]),
                             ("trainable-text", [15.0, 16.0, 17.0], [15.0, 17.0, 16.0])]:
        recs += [make_record(f"r{proto}{s}", seed=s, protocol=proto, metrics=metrics(v)) for s, v in enumerate(rand)]
        recs += [make_record(f"c{proto}{s}", seed=s, method="covmatch", protocol=proto, metrics=metrics(v))
                 for s, v in enumerate(cov)]
    recs += [make_record("f0", method="full-data", size=1000, metrics=metrics(40.0))]
    return recs


def test_protocol_matrix_separates_method_from_protocol(tmp_path):
    from mmdd_bench.reports.matrix import matrix_markdown, protocol_matrix, random_lifts

    board = leaderboard(records_frame(matrix_records()))
    matrix = protocol_matrix(board).set_index(["method", "protocol"])
    assert set(matrix.index) == {("random", "frozen-text"), ("random", "trainable-text"),
                                 ("covmatch", "frozen-text"), ("covmatch", "trainable-text")}  # no ceiling cell
    assert matrix.loc[("covmatch", "frozen-text"), "gain_vs_random"] == 4.0
    assert matrix.loc[("covmatch", "trainable-text"), "gain_vs_random"] == 0.0
    assert matrix.loc[("covmatch", "trainable-text"), "vs_random"] == "~ random"
    # covmatch under trainable-text "leads" covmatch under frozen-text by 1 point; random's lift is 5: all protocol.
    assert random_lifts(protocol_matrix(board)) == [
        "N=10: random scores +5.00 under trainable-text over frozen-text; a method scored under trainable-text "
        "leads one scored under frozen-text by this much before either distils anything."]
    md = matrix_markdown(board, "shapes", "tiny")
    assert "| method | frozen-text | trainable-text |" in md
    assert "| covmatch | 15.00 (+4.00 [+4.00, +4.00]), 38% | 16.00 (+0.00 [-1.00, +1.00] ~) |" in md
    assert "| ceiling (full-data) | 40.00 |  |" in md
    for r in matrix_records():
        r.save(tmp_path)
    paths = {p.name for p in write_leaderboards(tmp_path, plots=False)}
    assert {"shapes__tiny.protocol-matrix.md", "protocol-matrix.csv", "published-protocol-share.md"} <= paths
    assert (tmp_path / "leaderboard" / "shapes__tiny.protocol-matrix.md").read_text() == md


def test_protocol_matrix_gives_an_older_default_its_own_row_and_leaves_out_what_it_cannot_name():
    from mmdd_bench.reports.matrix import matrix_markdown, protocol_matrix

    recs = matrix_records() + [make_record("old", method="covmatch", method_version="0", metrics=metrics(30.0))]
    matrix = protocol_matrix(leaderboard(records_frame(recs)))
    cells = set(zip(matrix["label"], matrix["protocol"], strict=True))
    # Today's covmatch keeps one name under both protocols; the old version's set is its own row.
    assert {("covmatch [method_version=v1]", "frozen-text"), ("covmatch [method_version=v1]", "trainable-text"),
            ("covmatch [method_version=v0]", "frozen-text")} <= cells
    assert not {label for label, _ in cells if label == "covmatch"}
    md = matrix_markdown(leaderboard(records_frame(recs)), "shapes", "tiny")
    assert "| covmatch [method_version=v0] | 30.00 (+20.00), 75% |  |" in md  # paired with seed 0 (random 10)
    # Records that differ only in how they were scored cannot be told apart by the distillation: left out.
    same_set = matrix_records() + [make_record("n1", method="covmatch", protocol_params={"n_students": 1},
                                               metrics=metrics(30.0))]
    matrix = protocol_matrix(leaderboard(records_frame(same_set)))
    cells = set(zip(matrix["label"], matrix["protocol"], strict=True))
    assert ("covmatch", "frozen-text") not in cells and ("covmatch", "trainable-text") in cells


def test_published_share_of_the_lead_that_is_protocol():
    """The issue's figures: on Flickr30K CovMatch leads LoRS by 3.1 / 4.9 / 6.8 and random's lift is 2.9 / 4.5 / 8.5."""
    from mmdd_bench.reports.matrix import published_protocol_share

    share = published_protocol_share(published_results()).set_index(["dataset", "size"])
    assert share.loc[("flickr30k", 100), "lead"] == 3.12 and share.loc[("flickr30k", 100), "random_lift"] == 2.87
    assert share.loc[("flickr30k", 500), "lead"] == 6.82 and share.loc[("flickr30k", 500), "random_lift"] == 8.52
    assert share.loc[("flickr30k", 200), "share_of_lead"] == 92.0
    assert len(share) == 6  # both datasets at 100 / 200 / 500


def test_protocol_matrix_keeps_todays_cut_evaluation_beside_an_older_defaults_full_one():
    """The default evaluation is preferred over a students-only cut of the *same* set; an older method default
    scored with the default evaluation must not push today's set, scored with the cut, out of the matrix."""
    from mmdd_bench.reports.matrix import protocol_matrix

    cut = {"eval_variant": "n_students=1", "protocol_params": {"n_students": 1}}
    recs = [make_record(f"old{s}", seed=s, method="covmatch", method_version="0", metrics=metrics(30.0)) for s in range(3)]
    recs += [make_record(f"new{s}", seed=s, method="covmatch", metrics=metrics(20.0 + s), **cut) for s in range(3)]
    recs += [make_record(f"r{s}", seed=s, metrics=metrics(10.0 + s), **cut) for s in range(3)]
    matrix = protocol_matrix(leaderboard(records_frame(recs))).set_index(["label", "protocol"])
    today = matrix.loc[("covmatch [method_version=v1]", "frozen-text")]
    assert today["eval_variant"] == "n_students=1" and today["gain_vs_random"] == 10.0
    assert matrix.loc[("covmatch [method_version=v0]", "frozen-text"), "eval_variant"] == ""
