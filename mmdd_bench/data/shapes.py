"""The embedded ``shapes`` dataset: procedurally drawn scenes of coloured objects with compositional captions.

It is a synthetic sanity benchmark that needs no download; the paper's numbers come from Flickr30K/COCO.
Scenes are drawn deterministically from a seed and written in the Karpathy on-disk format (JSON + PNG), so
the harness reads them through the same loader as Flickr30K and COCO. Captions vary in template and in
which attributes they mention (count, shape, colour, size, position, background), so many images share
partial descriptions: retrieval among 1000 test images has hard negatives and leaves headroom.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..progress import ProgressFn
from .generated import ensure_folder

GENERATOR_VERSION = "1"
SHAPES = ["circle", "square", "triangle", "cross", "diamond"]
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 220, 50),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (245, 245, 245),
}
BACKGROUNDS = {"black": (15, 15, 15), "gray": (120, 120, 120), "brown": (110, 75, 45), "teal": (30, 110, 110)}
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
             "center": (0.5, 0.5), "top left": (0.25, 0.25), "bottom right": (0.75, 0.75)}
SIZES = {"small": 0.16, "large": 0.30}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
# Attribute vocabularies, also the label spaces of the tiny image encoder's pretraining task.
ATTRIBUTES = {"shape": SHAPES, "colour": list(COLOURS), "size": list(SIZES), "position": list(POSITIONS),
              "background": list(BACKGROUNDS), "count": [1, 2, 3]}


@dataclass(frozen=True)
class ShapesConfig:
    n_train: int
    n_val: int
    n_test: int
    image_size: int = 32
    captions_per_image: int = 5
    seed: int = 0

    def key(self) -> str:
        return (f"v{GENERATOR_VERSION}-tr{self.n_train}-va{self.n_val}-te{self.n_test}-"
                f"px{self.image_size}-c{self.captions_per_image}-s{self.seed}")


SHAPES_CONFIGS = {
    "shapes": ShapesConfig(n_train=5000, n_val=500, n_test=1000),
    # A small variant for smoke tests and quick demos; not a benchmark.
    "shapes-mini": ShapesConfig(n_train=400, n_val=100, n_test=200),
}


def sample_scene(rng: np.random.Generator) -> dict:
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    positions = rng.choice(list(POSITIONS), size=count, replace=False)
    objects = [
        {"shape": str(rng.choice(SHAPES)), "colour": str(rng.choice(list(COLOURS))),
         "size": str(rng.choice(list(SIZES))), "position": str(pos)}
        for pos in positions
    ]
    return {"background": str(rng.choice(list(BACKGROUNDS))), "objects": objects}


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    return None


def render_scene(scene: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw at 4x and downsample, with per-pixel background noise, so images are not trivially clean."""
    big = size * 4
    bg = np.asarray(BACKGROUNDS[scene["background"]], dtype=np.float32)
    canvas = Image.fromarray(np.clip(bg + rng.normal(0, 12, (big, big, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for obj in scene["objects"]:
        fx, fy = POSITIONS[obj["position"]]
        cx = (fx + rng.uniform(-0.05, 0.05)) * big
        cy = (fy + rng.uniform(-0.05, 0.05)) * big
        r = SIZES[obj["size"]] * big / 2 * rng.uniform(0.9, 1.1)
        colour = tuple(int(np.clip(c + rng.normal(0, 10), 0, 255)) for c in COLOURS[obj["colour"]])
        poly = _polygon(obj["shape"], cx, cy, r)
        if poly is not None:
            draw.polygon(poly, fill=colour)
        elif obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif obj["shape"] == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:  # cross
            w = r / 3
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX))


def _describe(obj: dict, rng: np.random.Generator, with_size: bool, with_pos: bool) -> str:
    words = ["a"]
    if with_size:
        words.append(obj["size"])
    words += [obj["colour"], obj["shape"]]
    if with_pos:
        words += ["on the" if obj["position"] in ("left", "right") else "at the", obj["position"]]
    return " ".join(words)


def make_captions(scene: dict, n: int, rng: np.random.Generator) -> list[str]:
    objs = scene["objects"]
    bg = scene["background"]
    count = COUNT_WORDS[len(objs)]
    plural = "" if len(objs) == 1 else "s"
    templates = [
        lambda: f"{_describe(objs[0], rng, True, True)} on a {bg} background",
        lambda: f"{count} shape{plural} on {bg}: " + " and ".join(_describe(o, rng, False, False) for o in objs),
        lambda: f"there {'is' if len(objs) == 1 else 'are'} {count} object{plural} in this {bg} picture",
        lambda: "an image with " + ", ".join(_describe(o, rng, True, False) for o in objs),
        lambda: f"{_describe(objs[-1], rng, False, True)} and a {bg} backdrop",
        lambda: f"a {bg} scene showing {count} {objs[0]['colour']} or other coloured shape{plural}",
        lambda: "somewhere " + _describe(objs[0], rng, True, False) + f" is drawn, {count} in total",
        lambda: f"the {objs[0]['shape']} is {objs[0]['colour']} and the background is {bg}",
        lambda: " ".join(_describe(o, rng, rng.random() < 0.5, True) for o in objs[:2]) + " .",
    ]
    order = rng.permutation(len(templates))[:n]
    return [templates[i]() for i in order]


def scene_labels(scene: dict) -> dict[str, int]:
    """Attribute labels of the first object plus scene-level ones, for encoder pretraining."""
    first = scene["objects"][0]
    return {
        "shape": SHAPES.index(first["shape"]),
        "colour": list(COLOURS).index(first["colour"]),
        "size": list(SIZES).index(first["size"]),
        "position": list(POSITIONS).index(first["position"]),
        "background": list(BACKGROUNDS).index(scene["background"]),
        "count": len(scene["objects"]) - 1,
    }


def generate_labelled_images(n: int, image_size: int, seed: int,
                             progress: ProgressFn | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """In-memory scenes with attribute labels; the tiny backbone pretrains its image encoder on these,
    from a seed stream disjoint from every dataset split."""
    rng = np.random.default_rng([seed, 7919])
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    labels: dict[str, list[int]] = {k: [] for k in ATTRIBUTES}
    for i in range(n):
        scene = sample_scene(rng)
        images[i] = render_scene(scene, image_size, rng)
        for k, v in scene_labels(scene).items():
            labels[k].append(v)
        if progress and ((i + 1) % 100 == 0 or i + 1 == n):
            progress("drawing pretraining scenes", i + 1, n)
    return images, {k: np.asarray(v, dtype=np.int64) for k, v in labels.items()}


def _write_split(out: Path, split: str, n: int, cfg: ShapesConfig, stream: int,
                 progress: ProgressFn | None = None, what: str = "") -> None:
    rng = np.random.default_rng([cfg.seed, stream])
    entries = []
    for i in range(n):
        scene = sample_scene(rng)
        rel = f"images/{split}_{i:06d}.png"
        Image.fromarray(render_scene(scene, cfg.image_size, rng)).save(out / rel)
        caps = make_captions(scene, cfg.captions_per_image, rng)
        if progress and ((i + 1) % 100 == 0 or i + 1 == n):
            progress(what or f"generating {split}", i + 1, n)
        if split == "train":
            entries += [{"image": rel, "caption": c, "image_id": f"{split}_{i}"} for c in caps]
        else:
            entries.append({"image": rel, "caption": caps})
    (out / "annotations" / f"shapes_{split}.json").write_text(json.dumps(entries))


def ensure_generated(name: str, cache_dir: Path, progress: ProgressFn | None = None) -> Path:
    """Generate the dataset once under the cache (atomically: a temp folder renamed into place)."""
    cfg = SHAPES_CONFIGS[name]

    def build(tmp: Path) -> None:
        (tmp / "annotations").mkdir()
        (tmp / "images").mkdir()
        for stream, (split, n) in enumerate([("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)]):
            _write_split(tmp, split, n, cfg, stream, progress, f"generating {name} {split} images")

    return ensure_folder(cache_dir / "datasets" / f"shapes-{cfg.key()}", "annotations/shapes_test.json", build)
