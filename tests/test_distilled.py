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
