"""Text towers with one interface: token ids -> input embeddings -> sentence feature.

Splitting the embedding layer from the rest is what lets CovMatch learn synthetic text as token-embedding
sequences and still run them through a trainable encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from . import packed_bert


class TextEncoder(nn.Module):
    dim: int

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encode_embeddings(self.embed_tokens(ids), mask)


class BertTextEncoder(TextEncoder):
    """A Hugging Face BERT-family model. The sentence feature is the CLS token of ``last_hidden_state``
    (``pooling="cls"``, the papers' choice for BERT-base) or the masked mean of all tokens
    (``pooling="mean"``, what sentence-transformers models such as MiniLM were trained to give; their CLS
    output is nearly constant across sentences). ``inputs_embeds`` replaces only the word embeddings:
    position and token-type embeddings stay inside. A plain BERT runs without its padding
    (``packed_bert``: the same features, about half the work on padded caption batches)."""

    def __init__(self, model: nn.Module, pooling: str = "cls") -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.model = model
        self.pooling = pooling
        self.dim = model.config.hidden_size
        self.packed = packed_bert.supports(model)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def encode_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.packed:
            hidden = packed_bert.last_hidden_state(self.model, embeds, mask)
        else:
            hidden = self.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class OpenCLIPTextEncoder(TextEncoder):
    """open_clip's text tower, run from token embeddings. The feature is taken at the end-of-text token,
    which is the last position the mask marks valid (open_clip pads after EOT)."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
        proj = self.text_projection
        if proj is None:
            self.dim = clip_model.transformer.width
        else:
            self.dim = proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids)

    def encode_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = embeds.shape[1]
        x = embeds + self.positional_embedding[:length].to(embeds.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        eot = mask.long().sum(dim=1).clamp(min=1) - 1
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = self.text_projection
        if proj is None:
            return pooled
        return pooled @ proj if isinstance(proj, torch.Tensor) else proj(pooled)
