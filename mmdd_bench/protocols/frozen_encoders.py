"""``frozen-encoders`` (RepBlend's evaluation, NeurIPS 2025): both pretrained encoders frozen, both projection
heads trained.

What the frozen towers give never changes, so it is computed once: the set's images and text through the
frozen encoders once per evaluation, the test split's images and captions once per (split, backbone) and
cached on disk (``features.split_features``); a student epoch costs two heads on features, nothing more.

Choices: the heads start as ``trainable-text``'s heads of the same student seed (the same init); they train at
the protocol's projection lr (a set's learned step sizes are for an image encoder and a text projection that
train elsewhere, so they are not read here); a set's learned similarity and soft-label loss are used as under
``frozen-text``. Selection is the final epoch, or val.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.images import ImageStore
from ..data.splits import Dataset, RetrievalSplit
from ..distilled import DistilledSet
from ..encoders.backbone import Backbone
from ..encoders.heads import DualEncoder, ProjectionHead
from ..features import split_features, train_features
from ..metrics import retrieval_metrics
from .base import EvalParams
from .frozen_text import FrozenTextProtocol


class FrozenEncodersProtocol(FrozenTextProtocol):
    name = "frozen-encoders"
    version = "1"
    accepts = ("captions", "sentence_embeddings", "token_embeddings")
    text_trainable = False
    image_head = True
    description = "both pretrained encoders frozen, both projection heads trained on their features (RepBlend)"
    inactive_params = frozenset({"use_learned_lrs", "lr_encoder"})  # nothing but the heads trains

    def build_student(self, backbone: Backbone, seed: int, device: torch.device) -> DualEncoder:
        devices = [] if torch.device(device).type == "cpu" else [torch.device(device)]
        with torch.random.fork_rng(devices=devices):  # the same heads as Backbone.dual_encoder's for this seed
            torch.manual_seed(seed)
            image_head = ProjectionHead(backbone.image_dim, backbone.projection_dim)
            text_head = ProjectionHead(backbone.text_dim, backbone.projection_dim)
        return DualEncoder(nn.Identity(), nn.Identity(), image_head, text_head).to(device)

    @torch.no_grad()
    def student_images(self, distilled: DistilledSet, dataset: Dataset, backbone: Backbone, device: torch.device,
                       cache_dir) -> torch.Tensor:
        """The frozen image encoder's features of the set's images, once (of the split's, for a reference)."""
        if distilled.reference is not None:
            store = ImageStore(dataset.train.image_paths, backbone.image_size, cache_dir, dataset.train.fingerprint,
                               backbone.mean, backbone.std)
            image = train_features(dataset.train, store, backbone, device, cache_dir)[0]
            return image[torch.as_tensor(dataset.train.pair_image)].to(device)
        encoder = backbone.image_encoder.to(device).eval()
        chunks = np.array_split(np.arange(len(distilled)), max(1, len(distilled) // 256))
        return torch.cat([encoder(distilled.images[torch.as_tensor(c)].to(device)).float() for c in chunks])

    def learning_rates(self, distilled: DistilledSet, backbone: Backbone, params: EvalParams) -> tuple[dict[str, float], list[str]]:
        params = self.resolve_params(params, backbone)
        notes = ["only the projection heads train, on the frozen encoders' features"]
        if distilled.has_learned_lrs:
            notes.append("the set's learned step sizes are not used: no image encoder or text projection trains here")
        return {"encoder": params.lr_encoder, "projection": params.lr_projection}, notes

    @torch.no_grad()
    def score(self, model: DualEncoder, split: RetrievalSplit, store: ImageStore, backbone: Backbone,
              device: torch.device, cache: dict) -> dict[str, float]:
        model.eval()
        key = ("frozen-encoders", split.fingerprint)
        if key not in cache:  # the same features for every student (and, on disk, every run)
            cache[key] = (split_features(split, backbone, device, cache["cache_dir"], "image", images=store).to(device),
                          split_features(split, backbone, device, cache["cache_dir"], "text").to(device))
        image, text = cache[key]
        img = torch.nn.functional.normalize(model.image_head(image).float(), dim=-1)
        txt = torch.nn.functional.normalize(model.text_head(text).float(), dim=-1)
        return retrieval_metrics(img @ txt.T, split.img2txt)
