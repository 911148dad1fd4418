"""The embedded ``scenes`` dataset: scenes of two or three objects whose captions depend on binding and order.

``shapes`` captions rarely depend on word order, so a frozen bag-of-words sentence feature loses nothing there
and freezing the text encoder costs nothing. Flickr30K is not like that (its two protocols' full-data ceilings
differ by about 20 points). Here every scene holds two or three objects on a 3 x 3 grid, drawn from a few shapes
and colours so that other scenes often hold the same words in other bindings, and most captions say which
object has which colour, size or place, how objects relate (left of, above, larger than) or how many there are
of what ("two circles and a square"), in varied templates and paraphrases. "a red circle to the left of a blue
square" and "a blue circle to the left of a red square" hold the same words: only a text encoder that reads
their order tells the two scenes apart.

Scenes are drawn deterministically from a seed and written in the Karpathy on-disk format (JSON + PNG), like
``shapes``, so the harness reads them through the loader of Flickr30K and COCO.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..progress import ProgressFn
from .generated import ensure_folder

GENERATOR_VERSION = "1"
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 220, 50),
           "purple": (150, 60, 200), "white": (245, 245, 245)}
BACKGROUNDS = {"black": (15, 15, 15), "gray": (120, 120, 120), "brown": (110, 75, 45), "teal": (30, 110, 110)}
SIZES = {"small": 0.5, "large": 0.85}  # object diameter as a fraction of a grid cell
GRID = 3  # the scene is a GRID x GRID grid of cells; objects sit in distinct cells
OBJECT_COUNTS = ((2, 0.55), (3, 0.45))
CELL_NAMES = {(0, 0): "the top left corner", (1, 0): "the top middle", (2, 0): "the top right corner",
              (0, 1): "the middle left", (1, 1): "the centre", (2, 1): "the middle right",
              (0, 2): "the bottom left corner", (1, 2): "the bottom middle", (2, 2): "the bottom right corner"}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
# Paraphrases: each caption draws one, so the same fact is written several ways.
SHAPE_WORDS = {"circle": ("circle", "disc", "round shape"), "square": ("square", "box"),
               "triangle": ("triangle",), "cross": ("cross", "plus sign")}
SHAPE_PLURALS = {"circle": "circles", "disc": "discs", "round shape": "round shapes", "square": "squares",
                 "box": "boxes", "triangle": "triangles", "cross": "crosses", "plus sign": "plus signs"}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
RELATION_WORDS = {"left": ("to the left of", "left of", "on the left of"),
                  "right": ("to the right of", "right of", "on the right of"),
                  "above": ("above", "over", "on top of"), "below": ("below", "under", "beneath")}
COMPARISON_WORDS = {"larger": ("larger than", "bigger than"), "smaller": ("smaller than",)}
# Per-cell labels of the tiny-scenes image encoder's pretraining (index 0 = an empty cell).
CELL_LABELS = {"shape": ("empty", *SHAPES), "colour": ("empty", *COLOURS), "size": ("empty", *SIZES)}


@dataclass(frozen=True)
class ScenesConfig:
    n_train: int
    n_val: int
    n_test: int
    image_size: int = 32
    captions_per_image: int = 5
    seed: int = 0

    def key(self) -> str:
        return (f"v{GENERATOR_VERSION}-tr{self.n_train}-va{self.n_val}-te{self.n_test}-"
                f"px{self.image_size}-c{self.captions_per_image}-s{self.seed}")


SCENES_CONFIGS = {
    # val as large as test, so that retrieval measured on val (calibration, hyperparameters) has test's gallery.
    "scenes": ScenesConfig(n_train=5000, n_val=1000, n_test=1000),
    # A small variant for smoke tests; not a benchmark.
    "scenes-mini": ScenesConfig(n_train=400, n_val=100, n_test=200),
}


# ---- scenes ---------------------------------------------------------------------------------------------
def sample_scene(rng: np.random.Generator) -> dict:
    counts, probs = zip(*OBJECT_COUNTS, strict=True)
    n = int(rng.choice(counts, p=probs))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    objects = [{"shape": str(rng.choice(SHAPES)), "colour": str(rng.choice(list(COLOURS))),
                "size": str(rng.choice(list(SIZES))), "col": int(c % GRID), "row": int(c // GRID)} for c in cells]
    return {"background": str(rng.choice(list(BACKGROUNDS))), "objects": objects}


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        s = r * 0.85  # a square of the circle's area reads as the same size
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=colour)
    else:  # cross
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)


def render_scene(scene: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw at 4x and downsample, with background noise and jittered colours, sizes and places."""
    big = size * 4
    cell = big / GRID
    bg = np.asarray(BACKGROUNDS[scene["background"]], dtype=np.float32)
    canvas = Image.fromarray(np.clip(bg + rng.normal(0, 12, (big, big, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for obj in scene["objects"]:
        r = SIZES[obj["size"]] * cell / 2 * rng.uniform(0.9, 1.1)
        slack = max(cell / 2 - r, 0.0) * 0.6
        cx = (obj["col"] + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (obj["row"] + 0.5) * cell + rng.uniform(-slack, slack)
        colour = tuple(int(np.clip(c + rng.normal(0, 10), 0, 255)) for c in COLOURS[obj["colour"]])
        _draw_object(draw, obj["shape"], cx, cy, r, colour)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX))


def cell_labels(scene: dict) -> dict[str, int]:
    """Per-cell shape, colour and size (0 = empty), background and object count: the pretraining targets of
    an image encoder that must see which object has which attribute where."""
    labels = {f"cell{i}_{k}": 0 for i in range(GRID * GRID) for k in CELL_LABELS}
    for obj in scene["objects"]:
        i = obj["row"] * GRID + obj["col"]
        for k, names in CELL_LABELS.items():
            labels[f"cell{i}_{k}"] = names.index(obj[k])
    labels["background"] = list(BACKGROUNDS).index(scene["background"])
    labels["count"] = len(scene["objects"]) - OBJECT_COUNTS[0][0]
    return labels


# The labels of ``cell_labels``, in a fixed order, with their classes: what ``encoders/pretrain.py`` fits one
# linear head to each of, as it does for ``shapes.ATTRIBUTES``.
ATTRIBUTES = {**{f"cell{i}_{k}": list(v) for i in range(GRID * GRID) for k, v in CELL_LABELS.items()},
              "background": list(BACKGROUNDS), "count": [n for n, _ in OBJECT_COUNTS]}


def generate_labelled_images(n: int, image_size: int, seed: int,
                             progress: ProgressFn | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """In-memory scenes with their cell labels, from a seed stream disjoint from every dataset split (the
    splits use streams [seed, 0..2]); no caption is made, so pretraining sees images only."""
    rng = np.random.default_rng([seed, 104729])
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    labels: dict[str, list[int]] = {k: [] for k in ATTRIBUTES}
    for i in range(n):
        scene = sample_scene(rng)
        images[i] = render_scene(scene, image_size, rng)
        for k, v in cell_labels(scene).items():
            labels[k].append(v)
        if progress and ((i + 1) % 100 == 0 or i + 1 == n):
            progress("drawing pretraining scenes", i + 1, n)
    return images, {k: np.asarray(v, dtype=np.int64) for k, v in labels.items()}


# ---- captions -------------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _shape_word(rng: np.random.Generator, shape: str) -> str:
    return _pick(rng, SHAPE_WORDS[shape])


def _phrase(rng: np.random.Generator, obj: dict, article: str = "a", size: bool | None = None) -> str:
    """``a [small] red circle``; the size is said with probability 0.4 unless ``size`` says."""
    with_size = rng.random() < 0.4 if size is None else size
    words = [article] + ([_pick(rng, SIZE_WORDS[obj["size"]])] if with_size else [])
    return " ".join([*words, obj["colour"], _shape_word(rng, obj["shape"])])


def _relations(a: dict, b: dict) -> list[str]:
    """Where ``a`` is relative to ``b`` (left/right by column, above/below by row)."""
    out = []
    if a["col"] != b["col"]:
        out.append("left" if a["col"] < b["col"] else "right")
    if a["row"] != b["row"]:
        out.append("above" if a["row"] < b["row"] else "below")
    return out


CONVERSE = {"left": "right", "right": "left", "above": "below", "below": "above", "larger": "smaller",
            "smaller": "larger"}


def _pair(rng: np.random.Generator, objs: list[dict]) -> tuple[dict, dict]:
    i, j = rng.choice(len(objs), size=2, replace=False)
    return objs[int(i)], objs[int(j)]


def _with_background(rng: np.random.Generator, text: str, bg: str) -> str:
    if rng.random() < 0.3:
        return f"{text} on a {bg} background"
    return text


def caption_relation(scene: dict, rng: np.random.Generator) -> str:
    a, b = _pair(rng, scene["objects"])
    rel = _pick(rng, _relations(a, b))
    if rng.random() < 0.5:  # the converse says the same: "b is right of a"
        a, b, rel = b, a, CONVERSE[rel]
    text = f"{_phrase(rng, a)} {_pick(rng, RELATION_WORDS[rel])} {_phrase(rng, b)}"
    if rng.random() < 0.3:
        text = "there is " + text
    return _with_background(rng, text, scene["background"])


def caption_binding(scene: dict, rng: np.random.Generator) -> str:
    a, b = _pair(rng, scene["objects"])
    sa, sb = _shape_word(rng, a["shape"]), _shape_word(rng, b["shape"])
    if a["shape"] == b["shape"]:
        if a["colour"] == b["colour"]:
            rest = "one other shape" if len(scene["objects"]) == 3 else "nothing else"
            return f"two {a['colour']} {SHAPE_PLURALS[sa]} and {rest}"
        return f"one {sa} is {a['colour']} and the other {sa} is {b['colour']}"
    form = int(rng.integers(3 if a["colour"] != b["colour"] else 2))
    if form == 0:
        return f"the {sa} is {a['colour']} and the {sb} is {b['colour']}"
    if form == 1:
        return f"a {a['colour']} {sa} and a {b['colour']} {sb}"
    return f"the {a['colour']} shape is a {sa}, the {b['colour']} one a {sb}"


def caption_size(scene: dict, rng: np.random.Generator) -> str:
    objs = scene["objects"]
    pairs = [(a, b) for a in objs for b in objs if a["size"] == "large" and b["size"] == "small"]
    if not pairs:
        size = _pick(rng, SIZE_WORDS[objs[0]["size"]])
        return f"{NUMBER_WORDS[len(objs)]} {size} shapes, all the same size, on a {scene['background']} background"
    a, b = pairs[int(rng.integers(len(pairs)))]
    if rng.random() < 0.5:
        return f"the {a['colour']} {_shape_word(rng, a['shape'])} is {_pick(rng, COMPARISON_WORDS['larger'])} " \
               f"the {b['colour']} {_shape_word(rng, b['shape'])}"
    return f"the {b['colour']} {_shape_word(rng, b['shape'])} is {_pick(rng, COMPARISON_WORDS['smaller'])} " \
           f"the {a['colour']} {_shape_word(rng, a['shape'])}"


def caption_order(scene: dict, rng: np.random.Generator) -> str:
    """Objects listed in reading order along an axis on which they all differ."""
    objs = scene["objects"]
    axes = [axis for axis in ("col", "row") if len({o[axis] for o in objs}) == len(objs)]
    if not axes:
        return caption_relation(scene, rng)
    axis = _pick(rng, axes)
    ordered = sorted(objs, key=lambda o: o[axis])
    phrases = [_phrase(rng, o) for o in ordered]
    listed = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    lead = _pick(rng, ("from left to right", "left to right") if axis == "col" else ("from top to bottom",
                                                                                      "top to bottom"))
    return f"{lead}: {listed}"


def caption_count(scene: dict, rng: np.random.Generator) -> str:
    objs = scene["objects"]
    n = len(objs)
    if rng.random() < 0.5:  # how many of which shape: "two circles and a square"
        words = {s: _shape_word(rng, s) for s in SHAPES}
        counts = {s: sum(o["shape"] == s for o in objs) for s in SHAPES}
        parts = [f"{NUMBER_WORDS[k]} {SHAPE_PLURALS[words[s]]}" if k > 1 else f"a {words[s]}"
                 for s, k in sorted(counts.items(), key=lambda sk: -sk[1]) if k]
        text = " and ".join(parts) if len(parts) < 3 else f"{parts[0]}, {parts[1]} and {parts[2]}"
        return _with_background(rng, text, scene["background"])
    colour = str(objs[int(rng.integers(n))]["colour"])
    k = sum(o["colour"] == colour for o in objs)
    if k == n:
        return f"{NUMBER_WORDS[n]} shapes, all of them {colour}"
    return f"{NUMBER_WORDS[n]} shapes, {NUMBER_WORDS[k]} of them {colour}"


def caption_where(scene: dict, rng: np.random.Generator) -> str:
    objs = scene["objects"]
    chosen = objs if len(objs) == 2 or rng.random() < 0.5 else list(_pair(rng, objs))
    parts = [f"{_phrase(rng, o)} in {CELL_NAMES[(o['col'], o['row'])]}" for o in chosen]
    return " and ".join(parts) if len(parts) == 2 else f"{parts[0]}, {parts[1]} and {parts[2]}"


def caption_which(scene: dict, rng: np.random.Generator) -> str:
    a, b = _pair(rng, scene["objects"])
    rel = _pick(rng, _relations(a, b))
    form = int(rng.integers(2))
    if form == 0:
        return f"the shape {_pick(rng, RELATION_WORDS[rel])} the {b['colour']} {_shape_word(rng, b['shape'])} " \
               f"is {_phrase(rng, a, size=False)}"
    return f"the {a['colour']} {_shape_word(rng, a['shape'])} is {_pick(rng, RELATION_WORDS[rel])} " \
           f"the {_shape_word(rng, b['shape'])}"


def caption_background(scene: dict, rng: np.random.Generator) -> str:
    objs = scene["objects"]
    largest = [o for o in objs if o["size"] == "large"]
    n = NUMBER_WORDS[len(objs)]
    if largest and len(largest) < len(objs):
        return f"{n} shapes on {scene['background']}, the biggest is {_phrase(rng, largest[0], size=False)}"
    a, b = _pair(rng, objs)
    rel = _pick(rng, _relations(a, b))
    return f"a {scene['background']} picture with {_phrase(rng, a)} {_pick(rng, RELATION_WORDS[rel])} " \
           f"{_phrase(rng, b)}"


TEMPLATES: tuple[Callable[[dict, np.random.Generator], str], ...] = (
    caption_relation, caption_binding, caption_size, caption_order, caption_count, caption_where,
    caption_which, caption_background,
)


def make_captions(scene: dict, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` true captions of the scene, from ``n`` distinct templates."""
    order = rng.permutation(len(TEMPLATES))[:n]
    return [TEMPLATES[i](scene, rng) for i in order]


# ---- files ----------------------------------------------------------------------------------------------
def _write_split(out: Path, split: str, n: int, cfg: ScenesConfig, stream: int,
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
    (out / "annotations" / f"scenes_{split}.json").write_text(json.dumps(entries))


def ensure_generated(name: str, cache_dir: Path, progress: ProgressFn | None = None) -> Path:
    """Generate the dataset once under the cache (atomically: a temp folder renamed into place)."""
    cfg = SCENES_CONFIGS[name]

    def build(tmp: Path) -> None:
        (tmp / "annotations").mkdir()
        (tmp / "images").mkdir()
        for stream, (split, n) in enumerate([("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)]):
            _write_split(tmp, split, n, cfg, stream, progress, f"generating {name} {split} images")

    return ensure_folder(cache_dir / "datasets" / f"scenes-{cfg.key()}", "annotations/scenes_test.json", build)
