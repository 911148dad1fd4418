"""k-center and forgetting, the coreset baselines of the field's tables."""

import pytest
import torch

from mmdd_bench.features import joint_features
from mmdd_bench.method import DistillContext, get_method
from mmdd_bench.testing import check_method

CPU = torch.device("cpu")


def _brute_force_k_center(features: torch.Tensor, n: int, first: int) -> list[int]:
    """By the definition, from scratch at every step: the point whose nearest chosen centre is farthest."""
    x = features.double()
    chosen = [first]
    for _ in range(n - 1):
        to_centres = torch.cdist(x, x[chosen])  # [M, |chosen|]
        chosen.append(int(to_centres.min(1).values.argmax()))
    return chosen


def test_k_center_matches_brute_force_and_its_radius_never_grows(mini, tiny, cache_dir):
    from mmdd_bench.data.images import ImageStore
    from mmdd_bench.methods.kcenter import k_center

    images = ImageStore(mini.train.image_paths, tiny.image_size, cache_dir, mini.train.fingerprint, tiny.mean, tiny.std)
    feats = joint_features(mini.train, images, tiny, CPU, cache_dir)
    chosen, radius = k_center(feats, 25, first=17)
    assert chosen == _brute_force_k_center(feats, 25, first=17)
    assert len(set(chosen)) == 25
    assert all(b <= a for a, b in zip(radius, radius[1:], strict=False)) and radius[-1] < radius[0]
    # The radius is the covering radius of the chosen centres, measured independently.
    assert radius[-1] == pytest.approx(float(torch.cdist(feats.double(), feats[chosen].double()).min(1).values.max()),
                                       rel=1e-5)


def test_k_center_method_is_seeded_and_passes_the_contract(mini, tiny, cache_dir):
    d = check_method("k-center", cache_dir, size=8)
    assert d.text_kind == "captions" and d.meta["covering_radius"]["final"] < d.meta["covering_radius"]["first"]
    m = get_method("k-center")
    other = m.distill(DistillContext(mini, tiny, 8, 1, CPU, cache_dir), m.Params())
    assert other.extras["source_pairs"].tolist() != d.extras["source_pairs"].tolist()  # another seed, another start
    mean_start = [m.distill(DistillContext(mini, tiny, 8, s, CPU, cache_dir), m.Params(init="mean")) for s in (0, 1)]
    assert torch.equal(mean_start[0].extras["source_pairs"], mean_start[1].extras["source_pairs"])
    assert m.text_kind(m.Params()) == "captions" and m.default_protocol == "trainable-text"


def test_forgetting_counts_a_hand_made_correctness_sequence():
    from mmdd_bench.methods.forgetting import CRITERIA, ForgettingCounter, forgetting_order

    counter = ForgettingCounter(5)
    T, F = True, False

    def present(idx, i2t, t2i):
        i2t, t2i = torch.tensor(i2t), torch.tensor(t2i)
        counter.update(torch.tensor(idx), {"i2t": i2t, "t2i": t2i, "both": i2t & t2i, "either": i2t | t2i})

    present([0, 1, 2, 3], [T, T, F, F], [T, F, F, T])
    present([2, 0], [T, F], [T, T])             # pair 0 forgets i2t (and so "both")
    present([3, 1, 2, 0], [F, F, F, T], [F, T, F, F])  # 1 forgets i2t; 2 forgets both; 3 forgets t2i; 0 t2i
    present([0], [F], [F])                      # 0 forgets i2t again
    assert counter.events["i2t"].tolist() == [2, 1, 1, 0, 0]
    assert counter.events["t2i"].tolist() == [1, 0, 1, 1, 0]
    assert counter.events["both"].tolist() == [1, 0, 1, 0, 0]
    assert counter.events["either"].tolist() == [1, 0, 1, 1, 0]
    assert counter.ever_learned["both"].tolist() == [True, False, True, False, False]
    assert set(counter.events) == set(CRITERIA)
    # Never learned first (pairs 1, 3, 4 under "both"), then by events; ties in a seeded order.
    gen = torch.Generator().manual_seed(0)
    order = forgetting_order(counter.events["both"], counter.ever_learned["both"], "max", gen).tolist()
    assert set(order[:3]) == {1, 3, 4} and set(order[3:]) == {0, 2}
    order = forgetting_order(counter.events["i2t"], counter.ever_learned["i2t"], "ignore", gen).tolist()
    assert order[0] == 0 and set(order[1:3]) == {1, 2}
    orders = {tuple(forgetting_order(torch.zeros(50, dtype=torch.long), torch.ones(50, dtype=torch.bool), "max",
                                     torch.Generator().manual_seed(s)).tolist()) for s in (0, 1)}
    assert len(orders) == 2 and tuple(range(50)) not in orders  # ties: seeded, not index order


def test_forgetting_counts_are_nonzero_on_real_training_and_cached(mini, tiny, cache_dir, monkeypatch):
    """Guards the chained fancy-indexing trap: on a real run some pairs must have forgetting events."""
    import mmdd_bench.methods.forgetting as forgetting

    m = get_method("forgetting")
    params = m.Params(epochs=2)  # the contract test's settings: its cached run is this one
    ctx = DistillContext(mini, tiny, 10, 0, CPU, cache_dir)
    stats = forgetting._count(ctx, params)  # counted now, never from a cache
    cached = forgetting.forgetting_statistics(ctx, params)
    assert stats.keys() == cached.keys() and all(torch.equal(stats[k], cached[k]) for k in stats)
    for c in forgetting.CRITERIA:
        assert stats[f"events.{c}"].sum() > 0, c
        assert stats[f"ever_learned.{c}"].any(), c
    assert (stats["events.either"] <= 1).all()  # two presentations: at most one event
    d = m.distill(ctx, params)
    chosen = d.extras["source_pairs"]
    events, ever = stats["events.both"], stats["ever_learned.both"]
    never = int((~ever).sum())
    assert d.meta["forgetting"]["chosen_never_learned"] == min(10, never)
    if never < 10:  # after the never-learned, the most-forgotten pairs
        assert events[chosen][~ever[chosen]].numel() == never
        assert events[chosen][ever[chosen]].min() >= events[ever].sort(descending=True).values[10 - never - 1]

    def no_training(*args, **kwargs):
        raise AssertionError("the statistics should come from the cache")

    monkeypatch.setattr(forgetting, "train_real_epoch", no_training)
    again = m.distill(DistillContext(mini, tiny, 20, 0, CPU, cache_dir), params)  # another size: the same run
    assert again.extras["source_pairs"][:10].tolist() == chosen.tolist()


def test_forgetting_contract(cache_dir):
    d = check_method("forgetting", cache_dir, params={"epochs": 2}, size=6)
    assert d.text_kind == "captions"
