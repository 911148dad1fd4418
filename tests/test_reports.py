import pandas as pd
from test_records import make_record

from mmdd_bench.reports.leaderboard import leaderboard, records_frame, to_markdown, write_leaderboards
from mmdd_bench.reports.published import published_for, published_results


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
    md = to_markdown(board)
    assert md.count("[settings ") == 2 and "| random |  |" in md  # only the clashing label is disambiguated
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


def test_published_data_is_packaged():
    frame = published_results()
    assert {"source", "dataset", "protocol", "method", "size", "r_mean"} <= set(frame.columns)
    cov = published_for("flickr30k", "paper", "trainable-text")
    assert cov[(cov["method"] == "covmatch") & (cov["size"] == 100)]["r_mean"].iloc[0] == 30.5
    assert published_for("shapes", "tiny", "trainable-text").empty
