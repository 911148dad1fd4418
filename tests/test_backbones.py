import dataclasses

import pytest
import torch

from mmdd_bench.encoders import build_backbone
from mmdd_bench.errors import UsageError, WeightsError


def test_tiny_backbone_ships_its_pinned_image_encoder(tiny, cache_dir):
    from mmdd_bench.encoders.tiny import IMAGE_TOWERS

    assert tiny.image_size == 32 and tiny.image_dim == 256 and tiny.text_dim == 384
    assert "all-MiniLM-L6-v2" in tiny.weights_id and IMAGE_TOWERS["tiny"].packaged_sha256[:12] in tiny.weights_id
    assert IMAGE_TOWERS["tiny"].packaged_sha256.startswith("1e9ef81ec8de")  # the committed results' encoder
    again = build_backbone("tiny", cache_dir)
    assert again.weights_id == tiny.weights_id
    for k, v in again.image_encoder.state_dict().items():
        assert torch.equal(v, tiny.image_encoder.state_dict()[k])


def test_tampered_packaged_weights_are_refused(monkeypatch, tmp_path):
    import mmdd_bench.encoders.tiny as tiny_module

    towers = dict(tiny_module.IMAGE_TOWERS)
    towers["tiny"] = dataclasses.replace(towers["tiny"], packaged_sha256="0" * 64)
    monkeypatch.setattr(tiny_module, "IMAGE_TOWERS", towers)
    with pytest.raises(WeightsError, match="do not match their pinned sha256"):
        tiny_module.packaged_image_encoder()


def test_pretraining_fallback_repairs_a_corrupt_cached_file(monkeypatch, tmp_path):
    """With MMDD_BENCH_TINY_PRETRAIN=1 the weights are pretrained into the cache; a corrupt cached file is moved
    aside, named in a warning, and pretrained again (pretraining is replaced by a quick stand-in here)."""
    import mmdd_bench.encoders.tiny as tiny_module

    monkeypatch.setattr(tiny_module, "_pretrain", lambda tower, seed, progress=None: {
        k: v.contiguous() for k, v in tower.architecture().state_dict().items()})
    monkeypatch.setenv("MMDD_BENCH_TINY_PRETRAIN", "1")
    bb = build_backbone("tiny", tmp_path)
    (cached,) = (tmp_path / "weights").glob("tiny-convnet-*.safetensors")
    assert cached.stem in bb.weights_id
    cached.write_bytes(b"\x00" * 100)  # a truncated download, a full disk
    with pytest.warns(UserWarning, match="cannot be loaded.*moved it to"):
        again = build_backbone("tiny", tmp_path)
    assert again.weights_id.startswith(cached.stem) and list((tmp_path / "weights").glob("*.bad-*"))


def test_text_from_embeddings_equals_text_from_tokens(tiny):
    ids, mask = tiny.tokenize(["a red circle on the left", "two shapes"])
    enc = tiny.text_encoder
    assert torch.allclose(enc(ids, mask), enc.encode_embeddings(enc.embed_tokens(ids), mask))


def test_projection_heads_and_frozen_text_model(tiny):
    from mmdd_bench.encoders.heads import ProjectionHead

    full = tiny.dual_encoder(text_trainable=True, image_head=True, seed=0)
    assert isinstance(full.image_head, ProjectionHead) and isinstance(full.text_head, ProjectionHead)
    frozen = tiny.dual_encoder(text_trainable=False, image_head=False, seed=0)
    assert isinstance(frozen.image_head, torch.nn.Identity)
    assert not any(p.requires_grad for p in frozen.text_encoder.parameters())
    assert all(p.requires_grad for p in frozen.image_encoder.parameters())
    h, g = frozen.image_features(torch.zeros(2, 3, 32, 32))
    assert g.shape == (2, tiny.projection_dim) and torch.equal(h, g)


def test_unknown_backbone(cache_dir):
    with pytest.raises(UsageError, match="unknown backbone"):
        build_backbone("resnet", cache_dir)


def test_paper_backbone_without_local_weights_is_a_clear_error(cache_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("MMDD_BENCH_BERT", str(tmp_path / "no-bert-here"))
    with pytest.raises(WeightsError, match="MMDD_BENCH_BERT"):
        build_backbone("paper", cache_dir)


@pytest.mark.slow
def test_paper_architecture_with_random_weights_at_low_resolution(cache_dir):
    bb = build_backbone("paper", cache_dir, pretrained=False, image_size=64)
    assert bb.image_dim == 2304 and bb.text_dim == 768 and bb.weights_id == "random"
    model = bb.dual_encoder(text_trainable=True, image_head=True, seed=0)
    head = model.text_head
    assert [type(m).__name__ for m in head.children()] == ["Linear", "Linear", "Dropout", "LayerNorm"]
    assert head.projection.out_features == 2304
    h, g = model.image_features(torch.randn(2, 3, 64, 64))
    assert h.shape == (2, 2304) and g.shape == (2, 2304)
    ids, mask = bb.tokenize(["a dog runs", "two people sit on a bench"])
    ht, gt = model.text_features_from_tokens(ids, mask)
    assert ht.shape == (2, 768) and gt.shape == (2, 2304)


@pytest.mark.slow
def test_clip_backbone_embeddings_path_matches_open_clip(cache_dir):
    import open_clip

    bb = build_backbone("clip-RN50", cache_dir)  # no tag: random init, recorded as such
    assert bb.weights_id == "random" and bb.image_size == 224
    ref = open_clip.create_model("RN50")
    tok = open_clip.get_tokenizer("RN50")
    ids, mask = bb.tokenize(["a photo of a dog", "a cat"])
    ours = bb.text_encoder.encode_embeddings(bb.text_encoder.embed_tokens(ids), mask)
    assert ours.shape == (2, bb.text_dim)
    # same weights: copy ours into a reference model and compare with open_clip's own encode_text
    ref.token_embedding.load_state_dict(bb.text_encoder.token_embedding.state_dict())
    ref.transformer.load_state_dict(bb.text_encoder.transformer.state_dict())
    ref.ln_final.load_state_dict(bb.text_encoder.ln_final.state_dict())
    with torch.no_grad():
        ref.positional_embedding.copy_(bb.text_encoder.positional_embedding)
        ref.text_projection.copy_(bb.text_encoder.text_projection)
        expected = ref.encode_text(tok(["a photo of a dog", "a cat"]))
    assert torch.allclose(ours, expected, atol=1e-4)
