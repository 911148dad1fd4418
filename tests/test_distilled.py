import pickle

import pytest
import torch

from mmdd_bench.distilled import DistilledSet
from mmdd_bench.errors import DataError


def sets():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(3, 3, 8, 8, generator=g)
    return [
        DistilledSet(imgs, "captions", captions=["a", "b c", "ü"], extras={"source_pairs": torch.arange(3)}),
        DistilledSet(imgs, "sentence_embeddings", text_embeddings=torch.randn(3, 5, generator=g), encoder_id="e",
                     extras={"lr_image": torch.tensor(0.1), "lr_text": torch.tensor(0.2)}),
        DistilledSet(imgs, "token_embeddings", text_embeddings=torch.randn(3, 4, 5, generator=g),
                     attention_mask=torch.tensor([[1, 1, 0, 0]] * 3), encoder_id="e", meta={"method": "x"}),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_roundtrip_is_lossless(tmp_path, index):
    d = sets()[index]
    d.save(tmp_path / "art")
    back = DistilledSet.load(tmp_path / "art.json")
    assert torch.equal(back.images, d.images) and back.text_kind == d.text_kind
    assert back.captions == d.captions and back.meta == d.meta and back.encoder_id == d.encoder_id
    for a, b in [(back.text_embeddings, d.text_embeddings), (back.attention_mask, d.attention_mask)]:
        assert (a is None and b is None) or torch.equal(a, b)
    assert back.extras.keys() == d.extras.keys()
    assert all(torch.equal(back.extras[k], d.extras[k]) for k in d.extras)
    assert back.storage_bytes() == d.storage_bytes() > d.images.numel() * 4 - 1


def test_validation_errors():
    imgs = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="captions"):
        DistilledSet(imgs, "captions", captions=["one"])
    with pytest.raises(ValueError, match="encoder_id"):
        DistilledSet(imgs, "sentence_embeddings", text_embeddings=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="attention_mask"):
        DistilledSet(imgs, "token_embeddings", text_embeddings=torch.zeros(2, 3, 4), encoder_id="e")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_MARKER",))


def test_pickle_in_place_of_an_artifact_is_refused_and_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps({"images": _Evil()}))
    (tmp_path / "evil.json").write_text('{"format": "mmdd-bench distilled set", "text_kind": "captions"}')
    with pytest.raises(DataError, match="safetensors"):
        DistilledSet.load(tmp_path / "evil.json")
    assert not (tmp_path / "PWNED_MARKER").exists()
    (tmp_path / "evil.json").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(DataError, match="not a distilled-set header"):
        DistilledSet.load(tmp_path / "evil.json")
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_truncated_artifact_is_a_clear_error(tmp_path):
    sets()[2].save(tmp_path / "art")
    data = (tmp_path / "art.safetensors").read_bytes()
    (tmp_path / "art.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable safetensors"):
        DistilledSet.load(tmp_path / "art")
    (tmp_path / "art.json").write_text('{"format": "mmdd-bench distilled set"')
    with pytest.raises(DataError, match="invalid JSON"):
        DistilledSet.load(tmp_path / "art")


def _lowrank_set(n=5, r=2, budget=None, pixels=8):
    g = torch.Generator().manual_seed(3)
    return DistilledSet(torch.randn(n, 3, pixels, pixels, generator=g), "sentence_embeddings",
                        text_embeddings=torch.randn(n, 6, generator=g), encoder_id="e", budget_pairs=budget,
                        extras={"sim_diag": torch.rand(n, generator=g), "sim_left": torch.randn(n, r, generator=g),
                                "sim_right": torch.randn(n, r, generator=g), "sim_scale": torch.tensor(0.7)},
                        meta={"similarity": {"kind": "lowrank", "rank": r}, "student_loss": "wbce"})


def test_similarity_and_budget_round_trip_losslessly(tmp_path):
    d = _lowrank_set(budget=6)
    back = DistilledSet.load(d.save(tmp_path / "lors"))
    assert back.budget_pairs == 6 and len(back) == 5 and back.meta == d.meta
    for k in ("sim_diag", "sim_left", "sim_right", "sim_scale"):
        assert torch.equal(back.extras[k], d.extras[k]), k
    assert torch.equal(back.similarity(), d.similarity())
    # Sets made before budgets existed (no budget_pairs in the header) load with budget = their length.
    plain = sets()[1]
    header = plain.save(tmp_path / "plain")
    assert "budget_pairs" not in header.read_text()
    assert DistilledSet.load(header).budget_pairs == 3


def test_low_rank_block_equals_the_full_matrix_slice_and_scatters_gradients():
    d = _lowrank_set(n=7, r=3)
    a, L, R, scale = (d.extras[k].double().requires_grad_(True) for k in ("sim_diag", "sim_left", "sim_right", "sim_scale"))
    from mmdd_bench.distilled import similarity_block

    full = torch.diag(a) + scale * L @ R.T
    idx = torch.tensor([5, 1, 3])
    block = similarity_block(a, L, R, scale, idx)
    assert torch.allclose(block, full[idx][:, idx], atol=0, rtol=1e-15)
    assert torch.allclose(d.similarity(idx), d.similarity()[idx][:, idx])
    weights = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = torch.autograd.grad((weights * block).sum(), (a, L, R, scale))
    want = torch.autograd.grad((weights * full[idx][:, idx]).sum(), (a, L, R, scale))
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-12, atol=1e-15)
    assert got[1][[0, 2, 4, 6]].abs().sum() == 0 and got[1][idx].abs().sum() > 0  # only the batch's rows


def test_similarity_extras_are_validated():
    n = 4
    base = {"images": torch.zeros(n, 3, 4, 4), "text_kind": "sentence_embeddings",
            "text_embeddings": torch.zeros(n, 3), "encoder_id": "e"}
    with pytest.raises(ValueError, match="missing"):
        DistilledSet(**base, extras={"sim_diag": torch.ones(n), "sim_left": torch.zeros(n, 2)})
    with pytest.raises(ValueError, match="sim_left, sim_right"):
        DistilledSet(**base, extras={"sim_diag": torch.ones(n), "sim_left": torch.zeros(n, 2),
                                     "sim_right": torch.zeros(n, 3), "sim_scale": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="sim_full"):
        DistilledSet(**base, extras={"sim_full": torch.eye(n + 1)})
    with pytest.raises(ValueError, match="budget_pairs"):
        DistilledSet(**base, budget_pairs=n - 1)
    full = DistilledSet(**base, extras={"sim_full": 2 * torch.eye(n)})
    assert torch.equal(full.similarity(torch.tensor([2, 0])), 2 * torch.eye(2))
    assert DistilledSet(**base).similarity() is None and not DistilledSet(**base).has_similarity


def test_budget_accepts_fewer_pairs_only_when_the_similarity_fits_in_the_freed_pairs():
    from mmdd_bench.distilled import BudgetError, check_budget

    pair = 3 * 8 * 8 * 4 + 6 * 4  # bytes of one pair: image + sentence embedding
    small = _lowrank_set(n=5, r=2, budget=6)
    assert small.similarity_bytes() == 4 * (5 + 2 * 5 * 2 + 1) < pair
    assert small.bytes_per_pair() == pair
    check_budget(small, 6)  # LoRS: N-1 pairs plus S for a budget of N
    with pytest.raises(BudgetError, match="budget of 6 pairs, asked for 5"):
        check_budget(small, 5)
    big = _lowrank_set(n=5, r=40, budget=6)  # 4 * (5 + 400 + 1) bytes > one pair
    with pytest.raises(BudgetError, match="freed pair"):
        check_budget(big, 6)
    check_budget(_lowrank_set(n=5, r=40, budget=8), 8)  # three freed pairs hold it
    check_budget(sets()[0], 3)  # an ordinary set: its length is its budget
    with pytest.raises(BudgetError, match="budget of 3"):
        check_budget(sets()[0], 4)
