"""The BERT forward without padding (encoders/packed_bert.py) gives Hugging Face's features: the same bits in
eval and in training (the same dropout masks), gradients to round-off; what it does not know, it leaves to
Hugging Face."""

import pytest
import torch
import transformers

from mmdd_bench.encoders import packed_bert
from mmdd_bench.encoders.text import BertTextEncoder


def small_bert(attn: str = "sdpa", **config) -> transformers.BertModel:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16, **config)
    cfg._attn_implementation = attn
    return transformers.BertModel(cfg, add_pooling_layer=False)


def padded_batch(batch: int = 6, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (batch, length), generator=gen)
    lengths = torch.tensor([length, 3, 7, 1, 9, 5][:batch])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def forward_and_grads(model, fn, ids, mask, seed):
    model.zero_grad()
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    torch.manual_seed(seed)
    hidden = fn(embeds, mask) * mask.unsqueeze(-1)
    hidden.square().sum().backward()
    grads = {"inputs": embeds.grad, **{n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}
    return hidden.detach(), grads


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_packed_forward_is_hugging_face_bit_for_bit_and_gradients_agree(mode):
    model = small_bert()
    assert packed_bert.supports(model)
    getattr(model, mode)()
    ids, mask = padded_batch()
    hf = forward_and_grads(model, lambda e, m: model(inputs_embeds=e, attention_mask=m).last_hidden_state, ids, mask, 7)
    packed = forward_and_grads(model, lambda e, m: packed_bert.last_hidden_state(model, e, m), ids, mask, 7)
    assert torch.equal(hf[0], packed[0])  # in training too: the same dropout masks at the real tokens
    scale = max(g.abs().max() for g in hf[1].values())
    assert hf[1].keys() == packed[1].keys()
    for name, grad in hf[1].items():
        assert torch.allclose(grad, packed[1][name], rtol=1e-4, atol=1e-6 * scale), name
    # Padded positions come back as zeros and get no gradient, as Hugging Face's padding gets none.
    assert not packed[0][mask == 0].any()
    assert not packed[1]["inputs"][mask == 0].any()


def test_dropout_differs_across_seeds_so_the_equality_above_means_something():
    model = small_bert().train()
    ids, mask = padded_batch()
    a = forward_and_grads(model, lambda e, m: packed_bert.last_hidden_state(model, e, m), ids, mask, 7)[0]
    b = forward_and_grads(model, lambda e, m: packed_bert.last_hidden_state(model, e, m), ids, mask, 8)[0]
    assert not torch.equal(a, b)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_encoder_uses_the_packed_forward_with_the_same_features(pooling):
    encoder = BertTextEncoder(small_bert(), pooling=pooling).eval()
    assert encoder.packed
    ids, mask = padded_batch()
    with torch.no_grad():
        packed = encoder(ids, mask)
        encoder.packed = False
        reference = encoder(ids, mask)
    assert torch.equal(packed, reference)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_batch_without_padding_runs_hugging_face_forward(mode):
    """In training too: the same dropout draws, none spent before handing over."""
    model = getattr(small_bert(), mode)()
    ids, _ = padded_batch()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        torch.manual_seed(3)
        packed = packed_bert.last_hidden_state(model, embeds, mask)
        torch.manual_seed(3)
        assert torch.equal(packed, model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state)


@pytest.mark.parametrize("model", [
    pytest.param(lambda: small_bert(attn="eager"), id="eager attention"),
    pytest.param(lambda: small_bert(is_decoder=True), id="decoder"),
    pytest.param(lambda: small_bert(chunk_size_feed_forward=4), id="chunked feed-forward"),
    pytest.param(lambda: transformers.DistilBertModel(transformers.DistilBertConfig(
        vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=64, max_position_embeddings=16)), id="other architecture"),
])
def test_what_it_does_not_reproduce_is_left_to_hugging_face(model):
    model = model()
    assert not packed_bert.supports(model)
    if isinstance(model, transformers.BertModel):
        assert not BertTextEncoder(model).packed
