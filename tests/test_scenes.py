"""The embedded ``scenes`` dataset and its ``tiny-scenes`` backbone (issue 16, item 1)."""

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdd_bench.data import DATASETS, EMBEDDED, load_dataset
from mmdd_bench.data import scenes as sc
from mmdd_bench.distilled import DistilledSet
from mmdd_bench.errors import UsageError
from mmdd_bench.protocols.compat import check_text


@pytest.fixture(scope="module")
def scenes_mini(cache_dir):
    return load_dataset("scenes-mini", None, cache_dir)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_scenes_is_deterministic_and_karpathy_formatted(scenes_mini, cache_dir, tmp_path):
    cfg = sc.SCENES_CONFIGS["scenes-mini"]
    ds = scenes_mini
    assert len(ds.train.image_paths) == cfg.n_train and ds.train.n_pairs == 5 * cfg.n_train
    assert len(ds.val.image_paths) == cfg.n_val and len(ds.test.image_paths) == cfg.n_test
    assert all(len(c) == 5 for c in ds.test.img2txt) and all(len(c) == 5 for c in ds.val.img2txt)
    assert ds.default_backbone == "tiny-scenes" and not ds.hflip  # captions say left and right
    assert {"scenes", "scenes-mini"} <= EMBEDDED and DATASETS["scenes"][1] == "tiny-scenes"
    # generated twice from scratch: the same files, byte for byte (annotations and every PNG)
    again = sc.ensure_generated("scenes-mini", tmp_path)
    assert again.name == ds.root.name and _tree_digest(again) == _tree_digest(ds.root)
    # the benchmark's own size (checked without generating it)
    full = sc.SCENES_CONFIGS["scenes"]
    assert (full.n_train, full.n_val, full.n_test, full.image_size) == (5000, 1000, 1000, 32)


def test_captions_are_varied_and_fit_the_text_tower(scenes_mini):
    caps = scenes_mini.train.captions
    assert len(set(caps)) > 0.5 * len(caps)
    assert max(len(c.split()) for c in caps) <= 30  # pre_caption keeps 30 words; none is cut
    # every template is used, and relations / bindings / counts are said in several ways
    for words in (("left of", "right of"), ("above", "below", "over", "under", "beneath", "on top of"),
                  ("larger than", "bigger than", "smaller than"), ("from left to right", "from top to bottom"),
                  ("two", "three"), ("box", "square"), ("disc", "circle")):
        assert all(any(w in c for c in caps) for w in words), words


def _two_object_scene() -> dict:
    return {"background": "gray", "objects": [
        {"shape": "circle", "colour": "red", "size": "large", "col": 0, "row": 1},
        {"shape": "square", "colour": "blue", "size": "small", "col": 2, "row": 1}]}


def _swap_colours(scene: dict) -> dict:
    swapped = copy.deepcopy(scene)
    a, b = swapped["objects"]
    a["colour"], b["colour"] = b["colour"], a["colour"]
    return swapped


@pytest.mark.parametrize("template", [t for t in sc.TEMPLATES if t is not sc.caption_count], ids=lambda t: t.__name__)
def test_a_colour_swap_changes_the_caption_and_the_image(template):
    """Swapping two objects' colours changes the image and, with the same draws, the caption of every
    template that names colours; for the binding and relation templates the words stay the same: only their
    order tells the two scenes apart."""
    scene, swapped = _two_object_scene(), _swap_colours(_two_object_scene())
    same_words = 0
    for seed in range(20):
        cap = template(scene, np.random.default_rng(seed))
        cap_swapped = template(swapped, np.random.default_rng(seed))
        assert cap != cap_swapped, (template.__name__, cap)
        same_words += sorted(cap.split()) == sorted(cap_swapped.split())
    if template in (sc.caption_relation, sc.caption_binding, sc.caption_order, sc.caption_where):
        assert same_words > 0  # a bag of words cannot tell these two scenes apart
    image = sc.render_scene(scene, 32, np.random.default_rng(0))
    image_swapped = sc.render_scene(swapped, 32, np.random.default_rng(0))
    assert image.shape == (32, 32, 3) and not np.array_equal(image, image_swapped)


def test_counts_bind_numbers_to_shapes():
    """"two circles and a square" and "two squares and a circle": the same scene but for which shape is
    doubled."""
    scene = _two_object_scene()
    scene["objects"].append({"shape": "circle", "colour": "red", "size": "small", "col": 1, "row": 0})
    other = copy.deepcopy(scene)
    for obj in other["objects"]:
        obj["shape"] = {"circle": "square", "square": "circle"}[obj["shape"]]
    differ = 0
    for seed in range(20):
        cap, cap_other = (sc.caption_count(s, np.random.default_rng(seed)) for s in (scene, other))
        if "of them" not in cap:  # the shape-count form; the colour-count form says the same of both
            assert cap != cap_other and cap.split()[0] == "two", cap
            differ += 1
    assert differ > 0


def test_relations_are_true_of_the_scene():
    """The red circle is left of the blue square: every relation caption says so, directly or conversely."""
    scene = _two_object_scene()
    for seed in range(40):
        cap = sc.caption_relation(scene, np.random.default_rng(seed))
        red, blue = cap.index("red"), cap.index("blue")
        assert ("left" in cap and red < blue) or ("right" in cap and blue < red), cap
    for seed in range(20):
        cap = sc.caption_size(scene, np.random.default_rng(seed))
        assert ("red" in cap.split(" is ")[0]) == ("larger" in cap or "bigger" in cap), cap


def test_pretraining_labels_say_which_cell_holds_what():
    scene = _two_object_scene()
    labels = sc.cell_labels(scene)
    assert labels["cell3_shape"] == sc.CELL_LABELS["shape"].index("circle")
    assert labels["cell5_colour"] == sc.CELL_LABELS["colour"].index("blue")
    assert labels["cell0_shape"] == 0 and labels["count"] == 0
    assert list(labels) == list(sc.ATTRIBUTES) and len(sc.ATTRIBUTES) == 29
    assert all(0 <= labels[k] < len(v) for k, v in sc.ATTRIBUTES.items())
    swapped = sc.cell_labels(_swap_colours(scene))
    assert swapped["cell3_colour"] == labels["cell5_colour"] and swapped != labels
    images, batch_labels = sc.generate_labelled_images(3, 32, seed=0)
    assert images.shape == (3, 32, 32, 3) and all(len(v) == 3 for v in batch_labels.values())


def test_tiny_scenes_backbone_ships_its_pinned_image_encoder(cache_dir):
    from mmdd_bench.encoders import BACKBONE_NAMES, build_backbone, describe_backbone
    from mmdd_bench.encoders.tiny import IMAGE_TOWERS, TinyConvNet, packaged_image_encoder

    tower = IMAGE_TOWERS["tiny-scenes"]
    bb = build_backbone("tiny-scenes", cache_dir)
    assert bb.name == "tiny-scenes" and "tiny-scenes" in BACKBONE_NAMES and isinstance(bb.image_encoder, TinyConvNet)
    assert bb.image_size == 32 and bb.image_dim == 256 and bb.text_dim == 384
    assert bb.weights_id == f"tiny-scenes-convnet-v1-n20000-e8-s0-{tower.packaged_sha256[:12]}+all-MiniLM-L6-v2[:6]"
    assert describe_backbone("tiny-scenes", cache_dir).weights_id == bb.weights_id
    assert len(bb.text_encoder.model.encoder.layer) == 6 and bb.info["text_layers"] == 6
    tiny = build_backbone("tiny", cache_dir)
    assert tiny.weights_id != bb.weights_id  # other image weights: sets and records never mix them up
    # all six MiniLM layers against tiny's one: another text tower, so tiny's embeddings are refused here
    assert tiny.text_tower_id != bb.text_tower_id and len(tiny.text_encoder.model.encoder.layer) == 1
    tiny_set = DistilledSet(torch.zeros(1, 3, 32, 32), "sentence_embeddings", text_embeddings=torch.zeros(1, 384),
                            encoder_id=tiny.text_encoder_id)
    with pytest.raises(UsageError, match="share a text tower"):
        check_text(tiny_set, bb)
    net, _ = packaged_image_encoder("tiny-scenes")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in bb.image_encoder.state_dict().items())
    assert not all(torch.equal(v, tiny.image_encoder.state_dict()[k]) for k, v in bb.image_encoder.state_dict().items())


def test_tampered_tiny_scenes_weights_are_refused(monkeypatch):
    import dataclasses

    from mmdd_bench.encoders import tiny
    from mmdd_bench.errors import WeightsError

    tower = tiny.IMAGE_TOWERS["tiny-scenes"]
    monkeypatch.setitem(tiny.IMAGE_TOWERS, "tiny-scenes", dataclasses.replace(tower, packaged_sha256="0" * 64))
    with pytest.raises(WeightsError, match="tiny-scenes image encoder's weights .* do not match their pinned sha256"):
        tiny.packaged_image_encoder("tiny-scenes")


def test_tiny_scenes_pretrains_on_cell_labels_here(tmp_path, monkeypatch):
    """The fallback (MMDD_BENCH_TINY_PRETRAIN=1), shrunk: the scenes recipe runs, is deterministic, and names
    its weights after its own budget."""
    import dataclasses

    from mmdd_bench.encoders import tiny

    tower = dataclasses.replace(tiny.IMAGE_TOWERS["tiny-scenes"], images=200, epochs=1)
    monkeypatch.setitem(tiny.IMAGE_TOWERS, "tiny-scenes", tower)
    net, weights = tiny.pretrained_image_encoder(tmp_path / "a", backbone="tiny-scenes")
    again, weights_again = tiny.pretrained_image_encoder(tmp_path / "b", backbone="tiny-scenes")
    assert weights.startswith("tiny-scenes-convnet-v1-n200-e1-s0-") and weights == weights_again
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())
