"""A backbone's identity without building it: its name, its weights id, its image size and its default
learning rates. The planner needs only this, so a plan (and a dry run) never loads a model.

The paper-setting backbones (``PAPER_IMAGE_ENCODERS``: ``paper``, and the usual transfer targets
``paper-nfresnet50`` and ``paper-vit``) hash their weight files into their weights id (the timm checkpoint and
BERT's weights, wherever they come from: the ``MMDD_BENCH_*`` variables or the Hugging Face cache), so two
checkpoints never share an id in records, expert trajectories and feature caches. A file is hashed once:
the digest is cached by path, size and modification time under ``<cache>/weights/digests.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ..errors import UsageError, WeightsError
from ..progress import ProgressFn
from .towers import text_tower_of

BERT_NAME = "bert-base-uncased"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what transformers and timm load, in their order
TINY_FAMILY = ("tiny", "tiny-vit", "tiny-scenes")  # the embedded backbones (encoders/tiny.py): one text tower


@dataclass(frozen=True)
class PaperImageEncoder:
    """A timm ImageNet image encoder of the paper setting, and where its local weights come from."""

    timm_name: str
    weights_env: str  # a checkpoint file; else timm's default weights in the local Hugging Face cache
    global_pool: str  # timm's pooling of the final feature map (a ViT keeps its CLS token)
    description: str


# The papers' image encoder and the two targets their transfer tables use. All three share ``paper``'s text
# tower (bert-base-uncased, CLS; towers.py), so any paper-setting set can be scored with any of them.
PAPER_IMAGE_ENCODERS = {
    "paper": PaperImageEncoder("nfnet_l0", "MMDD_BENCH_NFNET_WEIGHTS", "avg",
                               "nfnet_l0 (timm, ImageNet) + bert-base-uncased; the papers' setting (GPU)"),
    "paper-nfresnet50": PaperImageEncoder("nf_resnet50", "MMDD_BENCH_NFRESNET50_WEIGHTS", "avg",
                                          "nf_resnet50 (timm, ImageNet) + paper's text tower; a transfer target (GPU)"),
    "paper-vit": PaperImageEncoder("vit_base_patch16_224", "MMDD_BENCH_VIT_WEIGHTS", "token",
                                   "vit_base_patch16_224 (timm, ImageNet-21k -> 1k) + paper's text tower; a transfer "
                                   "target (GPU)"),
}


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    weights_id: str
    image_size: int
    lr_encoder: float
    lr_projection: float

    @property
    def text_encoder_id(self) -> str:
        return f"{self.name}:{self.weights_id}"

    @property
    def text_tower_id(self) -> str:
        return text_tower_of(self.name, self.weights_id)


def file_digest(path: Path, cache_dir: Path) -> str:
    """sha256 (first 12 hex digits) of a weight file, remembered by (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    index = Path(cache_dir) / "weights" / "digests.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(index) + ".lock"):
        try:
            known = json.loads(index.read_text()) if index.is_file() else {}
        except (OSError, ValueError):
            known = {}
        if key not in known:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    digest.update(block)
            known[key] = digest.hexdigest()[:12]
            tmp = index.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(known, indent=0))
            os.replace(tmp, index)
        return known[key]


def _first_weight_file(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def bert_weights_file() -> Path:
    source = os.environ.get("MMDD_BENCH_BERT")
    if source:
        found = _first_weight_file(Path(source))
        if found is None:
            raise WeightsError(f"MMDD_BENCH_BERT={source} holds no {' or '.join(WEIGHT_FILES)}; point it at a folder "
                               "with bert-base-uncased's config, tokenizer and weights.")
        return found
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(BERT_NAME, local_files_only=True))
    except Exception as exc:  # not in the local Hugging Face cache
        raise WeightsError(f"cannot find {BERT_NAME} in the local Hugging Face cache ({type(exc).__name__}). Put it "
                           "there, or set MMDD_BENCH_BERT to a folder holding its config, tokenizer and weights.") from None
    found = _first_weight_file(folder)
    if found is None:
        raise WeightsError(f"the cached {BERT_NAME} at {folder} holds no weights file ({' or '.join(WEIGHT_FILES)})")
    return found


def image_weights_file(backbone: str) -> Path:
    """The local checkpoint of a paper-setting backbone's image encoder: its ``MMDD_BENCH_*_WEIGHTS`` file, else
    timm's default weights in the local Hugging Face cache."""
    encoder = PAPER_IMAGE_ENCODERS[backbone]
    source = os.environ.get(encoder.weights_env)
    if source:
        if not Path(source).is_file():
            raise WeightsError(f"{encoder.weights_env}={source} is not a file; point it at a {encoder.timm_name} "
                               "checkpoint (.safetensors, .pth or .bin).")
        return Path(source)
    import timm
    from huggingface_hub import try_to_load_from_cache

    repo = timm.models.get_pretrained_cfg(encoder.timm_name).hf_hub_id
    for name in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    raise WeightsError(f"cannot find {encoder.timm_name} weights ({repo}) in the local Hugging Face cache. Put them "
                       f"there or set {encoder.weights_env} to a checkpoint file.")


def paper_weights_id(cache_dir: Path, backbone: str = "paper") -> str:
    timm_name = PAPER_IMAGE_ENCODERS[backbone].timm_name
    return (f"{timm_name}-{file_digest(image_weights_file(backbone), cache_dir)}"
            f"+{BERT_NAME}-{file_digest(bert_weights_file(), cache_dir)}")


def describe_backbone(name: str, cache_dir: Path, pretrained: bool = True,
                      progress: ProgressFn | None = None) -> BackboneSpec:
    """What the planner needs of a backbone, without building it."""
    if name in TINY_FAMILY:
        from .tiny import IMAGE_SIZE, tiny_weights_id

        weights = tiny_weights_id(cache_dir, progress, backbone=name) if pretrained else "random"
        return BackboneSpec(name, weights, IMAGE_SIZE, 0.01, 0.1)
    if name in PAPER_IMAGE_ENCODERS:
        return BackboneSpec(name, paper_weights_id(cache_dir, name) if pretrained else "random", 224, 0.01, 0.1)
    if name.startswith("clip-"):
        from .clip import describe_clip

        return describe_clip(name)
    raise unknown_backbone(name)


def unknown_backbone(name: str) -> UsageError:
    return UsageError(f"unknown backbone {name!r}; choose one of: {', '.join((*PAPER_IMAGE_ENCODERS, *TINY_FAMILY))}, "
                      "clip-<open_clip model>[@tag].")


__all__ = ["PAPER_IMAGE_ENCODERS", "TINY_FAMILY", "BackboneSpec", "PaperImageEncoder", "describe_backbone", "file_digest", "paper_weights_id", "unknown_backbone"]
