"""A BERT forward that skips padding: every token-wise layer runs on the real tokens only.

Captions in a batch are padded to the longest one. The scenes captions average 13.6 tokens and a batch of
128 pads to about 29, so more than half of a padded forward (and backward) is spent on padding. Here the
dense layers, GELU, LayerNorm and residuals run on the packed real tokens; only the attention itself (about
1% of the work at these lengths) sees the padded layout, through the very ``scaled_dot_product_attention``
call and mask Hugging Face's ``sdpa`` path makes. Dropout is drawn on the padded shapes Hugging Face's
layers draw it on, from the same stream and in the same order, so a training forward draws the same masks.

What it preserves (tests/test_packed_text.py): the eval forward equals Hugging Face's bit for bit on CPU;
a training forward from the same seed does too; gradients agree to float round-off (their sums run over
fewer rows). It is not a different model: results of text-trainable training change by round-off only.
Anything this module does not recognise (another architecture, eager attention, a decoder, chunked
feed-forward) runs Hugging Face's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def supports(model: nn.Module) -> bool:
    """Whether ``model`` is a plain BERT encoder this forward reproduces (else Hugging Face's is used)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) != "bert":
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "chunk_size_feed_forward", 0):
        return False
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    if not hasattr(model, "_create_attention_masks"):  # the mask builder Hugging Face's forward uses (transformers 5)
        return False
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    return layers is not None and all(_is_plain_layer(layer) for layer in layers)


def _is_plain_layer(layer: nn.Module) -> bool:
    attention = getattr(layer, "attention", None)
    return (attention is not None and not getattr(attention, "is_cross_attention", False)
            and all(hasattr(attention.self, name) for name in ("query", "key", "value", "scaling", "attention_head_size"))
            and hasattr(layer, "intermediate") and hasattr(layer, "output"))


def last_hidden_state(model: nn.Module, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state`` at the real tokens; zeros at
    padded positions (which no pooling reads). Falls back to Hugging Face's forward without padding."""
    if bool(mask.all()):  # no padding in this batch: nothing to skip (decided before any dropout is drawn)
        return model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    x = model.embeddings(inputs_embeds=embeds)
    attn_mask, _ = model._create_attention_masks(attention_mask=mask, encoder_attention_mask=None,
                                                 embedding_output=x, encoder_hidden_states=None, cache=None)
    batch, length, width = x.shape
    rows = mask.reshape(-1).nonzero().squeeze(1)

    def pack(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch * length, -1).index_select(0, rows)

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t.new_zeros(batch * length, t.shape[-1]).index_copy(0, rows, t).view(batch, length, -1)

    def dropout(module: nn.Dropout, t: torch.Tensor) -> torch.Tensor:
        # Drawn on the padded shape, as Hugging Face's layer draws it: the same masks at the real tokens.
        return pack(module(unpack(t))) if module.training and module.p > 0 else t

    h = pack(x)
    for layer in model.encoder.layer:
        attention = layer.attention.self
        heads, size = attention.num_attention_heads, attention.attention_head_size
        q, k, v = (unpack(proj(h)).view(batch, length, heads, size).transpose(1, 2)
                   for proj in (attention.query, attention.key, attention.value))
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=attention.dropout.p if attention.training else 0.0,
            scale=attention.scaling)
        context = pack(context.transpose(1, 2))
        out = layer.attention.output
        h = out.LayerNorm(dropout(out.dropout, out.dense(context)) + h)
        ffn = layer.output
        h = ffn.LayerNorm(dropout(ffn.dropout, ffn.dense(layer.intermediate(h))) + h)
    return unpack(h)
