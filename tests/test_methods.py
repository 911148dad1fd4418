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
