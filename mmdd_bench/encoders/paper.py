"""The paper setting: ``paper`` is timm ``nfnet_l0`` (ImageNet, 2304-d) + ``bert-base-uncased`` (CLS, 768-d), as
in the papers; ``paper-nfresnet50`` (2048-d) and ``paper-vit`` (``vit_base_patch16_224``, 768-d, CLS token) swap
the image encoder for the two their transfer tables use and keep the text tower, so a set distilled with one
is scored with another (``mmdd-bench eval ARTIFACT --backbone paper-vit``).

Weights come from local files only: the image encoder's ``MMDD_BENCH_*_WEIGHTS`` checkpoint file
(``identity.PAPER_IMAGE_ENCODERS``) and ``MMDD_BENCH_BERT`` (a folder with config, tokenizer and weights), or else
the Hugging Face cache that ``timm``/``transformers`` would use with ``HF_HUB_OFFLINE=1``. A miss is an error,
never a random init. All three normalise images as the papers' data pipeline (BLIP's) does, with CLIP's mean
and std, so one dataset cache serves them and transfers need no re-normalisation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import WeightsError
from .backbone import Backbone, HFTokenizer
from .identity import BERT_NAME, PAPER_IMAGE_ENCODERS, PaperImageEncoder, paper_weights_id
from .text import BertTextEncoder

MAX_TOKENS = 32


def build_paper(cache_dir: Path, pretrained: bool = True, image_size: int = 224, backbone: str = "paper") -> Backbone:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    bert_source = os.environ.get("MMDD_BENCH_BERT", BERT_NAME)
    if pretrained:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(bert_source)
            text_model = transformers.AutoModel.from_pretrained(bert_source, add_pooling_layer=False)
        except Exception as exc:  # OSError when absent; ValueError/KeyError/... for a folder that is not a BERT
            raise WeightsError(
                f"cannot load {bert_source!r} from local files ({exc.__class__.__name__}: {str(exc)[:200]}). Put "
                "bert-base-uncased in the Hugging Face cache, or set MMDD_BENCH_BERT to a folder holding its config, "
                "tokenizer and weights."
            ) from None
    else:
        # Architecture only (tests, cost benchmarks): BertConfig's defaults are bert-base-uncased's shape, and
        # all-MiniLM-L6-v2 ships the same uncased WordPiece vocabulary, so no download is needed.
        from .tiny import minilm_path

        tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
        with torch.random.fork_rng():  # the same random weights in every process ("random" is their id)
            torch.manual_seed(0)
            text_model = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False)
    encoder = PAPER_IMAGE_ENCODERS[backbone]
    image = _image_encoder(encoder, pretrained, image_size)
    return Backbone(
        name=backbone,
        image_encoder=image,
        text_encoder=BertTextEncoder(text_model),
        tokenizer=HFTokenizer(tokenizer, MAX_TOKENS),
        image_size=image_size,
        image_dim=image.num_features,
        # The weight files themselves, hashed: two checkpoints never share an id in records and caches.
        weights_id=paper_weights_id(cache_dir, backbone) if pretrained else "random",
        info={"image_encoder": encoder.timm_name},
    )


def _image_encoder(encoder: PaperImageEncoder, pretrained: bool, image_size: int) -> torch.nn.Module:
    """The timm encoder without its classifier, from local weights only; a ViT's position embeddings are
    resampled to ``image_size`` (timm does it when the size differs from the checkpoint's)."""
    import timm

    kwargs = {"num_classes": 0, "global_pool": encoder.global_pool}
    if encoder.timm_name.startswith("vit_"):
        kwargs["img_size"] = image_size
    weights_file = os.environ.get(encoder.weights_env)
    if pretrained and weights_file:
        if not Path(weights_file).is_file():
            raise WeightsError(f"{encoder.weights_env}={weights_file} is not a file; point it at a "
                               f"{encoder.timm_name} checkpoint.")
        kwargs["pretrained_cfg_overlay"] = {"file": weights_file}
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return timm.create_model(encoder.timm_name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # timm raises hub/OS/key errors of several kinds when weights are absent or wrong
        raise WeightsError(
            f"cannot load pretrained {encoder.timm_name} weights locally ({exc.__class__.__name__}: {str(exc)[:300]}). "
            f"Put them in the Hugging Face cache or set {encoder.weights_env} to a {encoder.timm_name} checkpoint file."
        ) from None
