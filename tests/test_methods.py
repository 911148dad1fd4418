import numpy as np
import pytest
import torch

from mmdd_bench.method import DistillContext, get_method
from mmdd_bench.testing import check_method


@pytest.mark.parametrize("name,params", [("random", {}), ("herding", {}), ("covmatch", {"iterations": 3}),
                                         ("covmatch", {"iterations": 2, "text_trainable": False})])
def test_contract(name, params, cache_dir):
    check_method(name, cache_dir, params=params)


def test_random_differs_by_seed_and_uses_distinct_images(mini, tiny, cache_dir):
    m = get_method("random")
    a = m.distill(DistillContext(mini, tiny, 30, 0, torch.device("cpu"), cache_dir), None)
    b = m.distill(DistillContext(mini, tiny, 30, 1, torch.device("cpu"), cache_dir), None)
    assert a.captions != b.captions
    imgs = mini.train.pair_image[a.extras["source_pairs"].numpy()]
    assert len(set(imgs.tolist())) == 30



def test_herding_mean_error_is_small():
    from mmdd_bench.methods.herding import herd

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(500, 8, generator=g)
    chosen = herd(feats, 20)
    assert len(set(chosen)) == 20
    herd_err = (feats[chosen].mean(0) - feats.mean(0)).norm()
    rng = np.random.default_rng(0)
    rand_err = np.mean([(feats[rng.choice(500, 20, replace=False)].mean(0) - feats.mean(0)).norm().item()
                        for _ in range(20)])
    assert herd_err < 0.5 * rand_err


def test_every_built_in_method_declares_the_text_kind_it_produces():
    from mmdd_bench.distilled import TEXT_KINDS
    from mmdd_bench.method import METHODS

    want = {"random": "captions", "herding": "captions", "k-center": "captions", "forgetting": "captions",
            "covmatch": "token_embeddings", "mtt-vl": "sentence_embeddings", "tesla-vl": "sentence_embeddings",
            "lors": "sentence_embeddings"}
    assert set(want) <= set(METHODS.names())
    for name, kind in want.items():
        method = get_method(name)
        assert method.text_kind(method.default_params(100, "shapes")) == kind in TEXT_KINDS, name
    covmatch = get_method("covmatch")
    frozen = covmatch.default_params(100, "shapes")
    frozen.text_trainable = False
    assert covmatch.text_kind(frozen) == "sentence_embeddings"

    from mmdd_bench.method import Method

    class Undeclared(Method):  # a coreset plugin need not declare it: raw captions are the default
        name = "undeclared"

    assert Undeclared().text_kind(None) == "captions"
