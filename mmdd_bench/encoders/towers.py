"""Text-tower identities: when two backbones' text embeddings live in one space.

A distilled set's sentence or token embeddings are features (or inputs) of one *text* tower; its image encoder
plays no part in them. So a set transfers to another backbone when that backbone's text tower is the same:
the same text weights, tokenizer, truncation and pooling. Backbones of one family (``TEXT_FAMILIES``) build
their text tower the same way and name its weights after the last ``+`` of their weights id
(``<image weights>+<text weights>``); two of them share a text tower exactly when that part matches.

Sets carry only ``encoder_id`` (``<backbone>:<weights id>``, ``Backbone.text_encoder_id``, which includes the
image weights and stays as it is: artifact, run and cache identities hash it), so the tower is derived from it
here, for old and new sets alike. Anything this module cannot parse (a jointly trained CLIP checkpoint, random
weights, an id from elsewhere) is its own tower: compatible with exactly that ``encoder_id``, as before.
"""

from __future__ import annotations

# Backbone name -> how its family builds the text tower (tokenizer, truncation, pooling), fixed in code.
TEXT_FAMILIES = {
    "tiny": "minilm/mean-pool/32-tokens",  # encoders/tiny.py: the first layers of all-MiniLM-L6-v2
    "tiny-vit": "minilm/mean-pool/32-tokens",  # the very same text tower as tiny's
    # all six MiniLM layers (tiny.TEXT_LAYERS_OF): its own family, so no hint offers it for tiny's one-layer sets
    "tiny-scenes": "minilm-6-layers/mean-pool/32-tokens",
    "paper": "bert/cls/32-tokens",  # encoders/paper.py: bert-base-uncased, CLS token
    "paper-nfresnet50": "bert/cls/32-tokens",  # paper's very text tower, another image encoder
    "paper-vit": "bert/cls/32-tokens",
}


def text_tower_of(backbone: str, weights_id: str) -> str:
    """The text tower of backbone ``backbone`` with weights ``weights_id``."""
    family = TEXT_FAMILIES.get(backbone)
    if family is None or "+" not in weights_id:
        return f"{backbone}:{weights_id}"
    return f"{family}:{weights_id.rsplit('+', 1)[1]}"


def text_tower_id(encoder_id: str) -> str:
    """The text tower an ``encoder_id`` (``<backbone>:<weights id>``) names; the id itself when unparseable."""
    backbone, sep, weights = encoder_id.partition(":")
    return text_tower_of(backbone, weights) if sep else encoder_id


__all__ = ["TEXT_FAMILIES", "text_tower_id", "text_tower_of"]
