"""``check_method`` is the plugin contract: it must catch plugins that break it, field by field."""

import numpy as np
import pytest
import torch

from mmdd_bench.method import METHODS, Method
from mmdd_bench.pairs import real_pairs
from mmdd_bench.testing import check_method


@pytest.fixture
def register(monkeypatch):
    def add(cls):
        monkeypatch.setitem(METHODS._entries, cls.name, cls)
        return cls.name
    return add


class SeededPairs(Method):
    name = "contract-seeded"
    default_protocol = "trainable-text"

    def distill(self, ctx, params):
        rng = np.random.default_rng(ctx.seed)
        return real_pairs(ctx, rng.choice(ctx.dataset.train.n_pairs, ctx.size, replace=False), self.name)


def test_a_well_behaved_plugin_passes(register, cache_dir):
    check_method(register(SeededPairs), cache_dir)


def test_ignoring_the_seed_fails_unless_declared_deterministic(register, cache_dir):
    class FirstPairs(Method):
        name = "contract-first"
        default_protocol = "trainable-text"

        def distill(self, ctx, params):
            return real_pairs(ctx, np.arange(ctx.size), self.name)

    with pytest.raises(AssertionError, match="same set for seeds 0 and 1"):
        check_method(register(FirstPairs), cache_dir)

    class DeclaredFirstPairs(FirstPairs):
        name = "contract-first-declared"
        deterministic = True

    check_method(register(DeclaredFirstPairs), cache_dir)

    class LyingDeterministic(SeededPairs):
        name = "contract-liar"
        deterministic = True

    with pytest.raises(AssertionError, match="declared deterministic"):
        check_method(register(LyingDeterministic), cache_dir)


def test_equality_covers_extras_and_mask(register, cache_dir):
    calls = {"n": 0}

    class DriftingLr(SeededPairs):
        name = "contract-drifting-lr"

        def distill(self, ctx, params):
            calls["n"] += 1
            out = super().distill(ctx, params)
            out.extras["lr_image"] = torch.tensor(0.1 * calls["n"])  # differs between two runs of one seed
            return out

    with pytest.raises(AssertionError, match=r"extras.lr_image"):
        check_method(register(DriftingLr), cache_dir)


def test_a_plugin_that_reads_test_data_fails(register, cache_dir):
    class Peeking(SeededPairs):
        name = "contract-peeking"

        def distill(self, ctx, params):
            _ = ctx.dataset.test.captions  # selecting pairs by test data would leak it into the set
            return super().distill(ctx, params)

    from mmdd_bench.data.splits import SplitAccessError

    with pytest.raises(SplitAccessError, match="test split"):
        check_method(register(Peeking), cache_dir)


def test_a_plugin_must_return_the_text_kind_it_declares(register, cache_dir):
    class WrongKind(SeededPairs):
        name = "contract-wrong-kind"

        def text_kind(self, params):
            return "sentence_embeddings"

    with pytest.raises(AssertionError, match="declares sentence_embeddings"):
        check_method(register(WrongKind), cache_dir)


def test_the_harness_records_a_peeking_plugin_as_failed(register, cache_dir, tmp_path):
    from mmdd_bench.cli import main
    from mmdd_bench.records import read_records

    class Peeking(SeededPairs):
        name = "contract-peeking-run"

        def distill(self, ctx, params):
            _ = ctx.dataset.val
            return super().distill(ctx, params)

    register(Peeking)
    assert main(["run", "--datasets", "shapes-mini", "--methods", "contract-peeking-run", "--sizes", "3", "--cache-dir",
                 str(cache_dir), "--results", str(tmp_path), "--quiet"]) == 1
    (rec,) = read_records(tmp_path)
    assert rec.status == "failed" and "broke the plugin contract" in rec.error and "val split" in rec.error
