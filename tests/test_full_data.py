"""``full-data``, the ceiling: the whole training split by reference, scored under every protocol that reads
it; and ``--protocol all``."""

import json

import pandas as pd

from mmdd_bench.cli import main
from mmdd_bench.distilled import DistilledSet
from mmdd_bench.records import read_records

QUICK = ["--datasets", "shapes-mini", "--set", "eval.epochs=1", "--set", "eval.n_students=1", "--quiet"]


def test_full_data_is_the_split_by_reference_under_every_protocol(tmp_path, cache_dir, mini):
    args = ["run", "--cache-dir", str(cache_dir), "--results", str(tmp_path), *QUICK, "--methods", "full-data,random",
            "--sizes", "4", "--protocol", "all"]
    assert main(args) == 0
    recs = [r for r in read_records(tmp_path) if r.method == "full-data"]
    assert sorted(r.protocol for r in recs) == ["frozen-encoders", "frozen-text", "frozen-text-mtt", "trainable-text"]
    for r in recs:
        assert r.size == r.n_pairs == r.budget_pairs == mini.train.n_pairs and r.storage_bytes is None
        assert r.deterministic and r.metrics["mean"]["r_mean"] > 0
    (artifact,) = {r.artifact for r in recs}
    header = json.loads((tmp_path / f"{artifact}.json").read_text())
    assert header["reference"] == "train" and header["captions"] == []  # no copy of the data in the artifact
    assert (tmp_path / f"{artifact}.safetensors").stat().st_size < 4096
    assert len(DistilledSet.load(tmp_path / artifact)) == mini.train.n_pairs
    # random's captions are read by every protocol too: distilled once, four records.
    random = [r for r in read_records(tmp_path) if r.method == "random"]
    assert len(random) == 4 and len({r.distill_id for r in random}) == 1
    board = pd.read_csv(tmp_path / "leaderboard" / "leaderboard.csv", keep_default_na=False)
    assert set(board[board["method"] == "full-data"]["size"]) == {mini.train.n_pairs}


def test_protocol_all_skips_protocols_that_cannot_read_the_set(tmp_path, cache_dir):
    assert main(["run", "--cache-dir", str(cache_dir), "--results", str(tmp_path), *QUICK, "--methods", "mtt-vl",
                 "--sizes", "4", "--protocol", "all", "--debug"]) == 0
    assert sorted(r.protocol for r in read_records(tmp_path)) == ["frozen-encoders", "frozen-text", "frozen-text-mtt"]
