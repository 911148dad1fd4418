"""``trainable-text`` (CovMatch's protocol): both encoders and both projection heads train."""

from __future__ import annotations

import torch

from ..data.splits import Dataset, RetrievalSplit
from ..distilled import DistilledSet
from ..encoders.backbone import Backbone, encode_captions
from ..encoders.heads import DualEncoder
from .base import Protocol, TextBatches


class TrainableTextProtocol(Protocol):
    name = "trainable-text"
    # 2: students' head dropout from each student's own generator.
    version = "2"
    accepts = ("captions", "token_embeddings")
    text_trainable = True
    image_head = True
    description = "fresh pretrained image + text encoders, random projections, all trainable (CovMatch)"
    # Students train every tower at the protocol's lrs with InfoNCE: learned lrs and similarities are not read.
    inactive_params = frozenset({"use_learned_lrs", "use_learned_similarity", "student_loss"})

    def student_text(self, distilled: DistilledSet, dataset: Dataset, backbone: Backbone, device: torch.device,
                     cache_dir) -> tuple[TextBatches, None]:
        if distilled.text_kind == "captions":
            captions = dataset.train.captions if distilled.reference is not None else distilled.captions
            ids, mask = backbone.tokenize(captions)
            ids, mask = ids.to(device), mask.to(device)
            return (lambda m, idx, keep=None: m.text_features_from_tokens(ids[idx], mask[idx], keep)[1]), None
        emb = distilled.text_embeddings.to(device)
        mask = distilled.attention_mask.to(device)
        return (lambda m, idx, keep=None: m.text_features_from_embeddings(emb[idx], mask[idx], keep)[1]), None

    def test_text_features(self, model: DualEncoder, split: RetrievalSplit, backbone: Backbone,
                           device: torch.device, cache: dict) -> torch.Tensor:
        return encode_captions(lambda i, m: model.text_features_from_tokens(i, m)[1], backbone, split.captions, device)
