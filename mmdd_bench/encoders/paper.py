"""``paper``: timm ``nfnet_l0`` (ImageNet, 2304-d) + ``bert-base-uncased`` (CLS, 768-d), as in the papers.

Weights come from local files only: ``MMDD_BENCH_NFNET_WEIGHTS`` (a timm checkpoint file) and
``MMDD_BENCH_BERT`` (a folder with config, tokenizer and weights), or else the Hugging Face cache that
``timm``/``transformers`` would use with ``HF_HUB_OFFLINE=1``. A miss is an error, never a random init.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import WeightsError
from .backbone import Backbone, HFTokenizer
from .identity import BERT_NAME, NFNET_NAME, paper_weights_id
from .text import BertTextEncoder

MAX_TOKENS = 32


def build_paper(cache_dir: Path, pretrained: bool = True, image_size: int = 224) -> Backbone:
    import timm
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    bert_source = os.environ.get("MMDD_BENCH_BERT", BERT_NAME)
    nfnet_file = os.environ.get("MMDD_BENCH_NFNET_WEIGHTS")
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
    kwargs = {"num_classes": 0, "global_pool": "avg"}
    if pretrained and nfnet_file:
        if not Path(nfnet_file).is_file():
            raise WeightsError(f"MMDD_BENCH_NFNET_WEIGHTS={nfnet_file} is not a file.")
        kwargs["pretrained_cfg_overlay"] = {"file": nfnet_file}
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            image = timm.create_model(NFNET_NAME, pretrained=pretrained, **kwargs)
    except Exception as exc:  # timm raises hub/OS errors of several kinds when weights are absent
        raise WeightsError(
            f"cannot load pretrained {NFNET_NAME} weights locally ({exc.__class__.__name__}: {exc}). Put them "
            "in the Hugging Face cache or set MMDD_BENCH_NFNET_WEIGHTS to a checkpoint file."
        ) from exc
    return Backbone(
        name="paper",
        image_encoder=image,
        text_encoder=BertTextEncoder(text_model),
        tokenizer=HFTokenizer(tokenizer, MAX_TOKENS),
        image_size=image_size,
        image_dim=image.num_features,
        # The weight files themselves, hashed: two checkpoints never share an id in records and caches.
        weights_id=paper_weights_id(cache_dir) if pretrained else "random",
    )
