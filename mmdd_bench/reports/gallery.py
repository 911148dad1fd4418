"""A gallery of a distilled set, like the papers' figures: the synthetic images in a grid, each captioned
with its text. Learned text embeddings are decoded as the nearest real training caption in the same
frozen encoder space (cosine similarity); raw captions print as they are."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..data.splits import TrainSplit  # noqa: E402
from ..distilled import DistilledSet  # noqa: E402
from ..encoders.backbone import Backbone  # noqa: E402


@torch.no_grad()
def decode_text(distilled: DistilledSet, train: TrainSplit, train_text_features: torch.Tensor,
                backbone: Backbone) -> list[str]:
    if distilled.text_kind == "captions":
        return list(distilled.captions)
    encoder = backbone.text_encoder.cpu().eval()
    if distilled.text_kind == "token_embeddings":
        feats = encoder.encode_embeddings(distilled.text_embeddings, distilled.attention_mask)
    else:
        feats = distilled.text_embeddings
    sims = F.normalize(feats.float(), dim=-1) @ F.normalize(train_text_features.float(), dim=-1).T
    return [f"~ {train.captions[i]}" for i in sims.argmax(1).tolist()]


def render_gallery(distilled: DistilledSet, captions: list[str], out: Path, max_items: int = 24, cols: int = 6) -> Path:
    n = min(len(distilled), max_items)
    rows = (n + cols - 1) // cols
    mean = torch.tensor(distilled.meta.get("image_mean", [0.5, 0.5, 0.5])).view(3, 1, 1)
    std = torch.tensor(distilled.meta.get("image_std", [0.5, 0.5, 0.5])).view(3, 1, 1)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = (distilled.images[k].float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(img, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(captions[k], 24)[:4]), fontsize=6)
    meta = distilled.meta
    fig.suptitle(f"{meta.get('method', '?')} N={len(distilled)} seed={meta.get('seed', '?')} on "
                 f"{meta.get('dataset', '?')} ({distilled.text_kind})", fontsize=9, y=1.02)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}{out.suffix}")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out)
    return out


def render_artifact(artifact: Path, out: Path, max_items: int, data_root: str | None, cache_dir: Path,
                    device: torch.device) -> Path:
    """Load a saved set, decode its text against the real training captions it came from, render it."""
    from ..data import load_dataset
    from ..data.images import ImageStore
    from ..encoders import build_backbone
    from ..errors import MMDDError
    from ..features import train_features

    distilled = DistilledSet.load(artifact)
    if distilled.reference is not None:
        raise MMDDError(f"{artifact} is the whole training split by reference ({distilled.meta.get('method', '?')}): "
                        "it has no images of its own to show")
    captions = distilled.captions
    if distilled.text_kind != "captions":
        meta = distilled.meta
        if not meta.get("dataset") or not meta.get("backbone"):
            raise MMDDError(f"{artifact} does not name its dataset and backbone; cannot decode its text.")
        ds = load_dataset(meta["dataset"], data_root, cache_dir)
        bb = build_backbone(meta["backbone"], cache_dir)
        store = ImageStore(ds.train.image_paths, bb.image_size, cache_dir, ds.train.fingerprint, bb.mean, bb.std)
        _, text_feats = train_features(ds.train, store, bb, device, cache_dir)
        captions = decode_text(distilled, ds.train, text_feats, bb)
    return render_gallery(distilled, captions, out, max_items=max_items)
