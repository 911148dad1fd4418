import json

import pytest
from conftest import write_flickr

from mmdd_bench.data import load_dataset
from mmdd_bench.data.text import pre_caption
from mmdd_bench.errors import DataError, UsageError


def test_pre_caption_matches_published_rules():
    assert pre_caption('A  "Dog" (runs): fast!~ #1;*') == "a dog runs fast 1"
    assert pre_caption(" ".join(["w"] * 40)) == " ".join(["w"] * 30)


def test_flickr_loader_keeps_every_caption(tmp_path, cache_dir):
    write_flickr(tmp_path)
    ds = load_dataset("flickr30k", tmp_path, cache_dir)
    assert len(ds.train.image_paths) == 4 and ds.train.n_pairs == 8
    assert ds.train.captions[0] == "a dog number 0 runs take 0"
    assert [len(c) for c in ds.test.img2txt] == [6, 5, 5]
    assert len(ds.test.captions) == 16
    assert ds.test.txt2img.tolist() == [0] * 6 + [1] * 5 + [2] * 5
    assert ds.default_backbone == "paper"


def test_data_root_from_environment(tmp_path, cache_dir, monkeypatch):
    write_flickr(tmp_path)
    monkeypatch.setenv("MMDD_BENCH_DATA", str(tmp_path))
    assert load_dataset("flickr30k", None, cache_dir).name == "flickr30k"


@pytest.mark.parametrize("folder", ["flickr30k_images", "flickr30k_images/flickr30k_images"])
def test_kaggle_folder_names_are_accepted(tmp_path, cache_dir, folder):
    write_flickr(tmp_path, image_folder=folder)
    ds = load_dataset("flickr30k", tmp_path, cache_dir)
    assert all(p.is_file() for p in ds.test.image_paths)


def test_missing_root_and_folder(tmp_path, cache_dir, monkeypatch):
    monkeypatch.delenv("MMDD_BENCH_DATA", raising=False)
    with pytest.raises(UsageError, match="--data-root"):
        load_dataset("flickr30k", None, cache_dir)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("flickr30k", tmp_path / "nope", cache_dir)
    with pytest.raises(DataError, match="dataset folder"):
        load_dataset("coco", tmp_path, cache_dir)


def test_missing_and_malformed_json(tmp_path, cache_dir):
    ds = write_flickr(tmp_path)
    ann = ds / "annotations" / "flickr30k_test.json"
    ann.write_text("{not json")
    with pytest.raises(DataError, match=r"flickr30k_test\.json is not valid JSON"):
        load_dataset("flickr30k", tmp_path, cache_dir)
    ann.write_text(json.dumps([{"image": "flickr30k-images/te0.jpg"}]))
    with pytest.raises(DataError, match="entry 0 is malformed"):
        load_dataset("flickr30k", tmp_path, cache_dir)
    ann.write_text("[]")
    with pytest.raises(DataError, match="empty"):
        load_dataset("flickr30k", tmp_path, cache_dir)
    ann.unlink()
    with pytest.raises(DataError, match="missing annotation file .*flickr30k_test.json"):
        load_dataset("flickr30k", tmp_path, cache_dir)


def test_missing_image_is_named(tmp_path, cache_dir):
    ds = write_flickr(tmp_path)
    (ds / "flickr30k-images" / "te1.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images .* missing .*te1\.jpg"):
        load_dataset("flickr30k", tmp_path, cache_dir)


def test_unreadable_image_is_named(tmp_path, cache_dir):
    from mmdd_bench.data.images import ImageStore

    ds = write_flickr(tmp_path)
    (ds / "flickr30k-images" / "te2.jpg").write_bytes(b"not a jpeg")
    loaded = load_dataset("flickr30k", tmp_path, cache_dir)
    with pytest.raises(DataError, match=r"cannot read image .*te2\.jpg"):
        ImageStore(loaded.test.image_paths, 16, cache_dir, loaded.test.fingerprint, (0.5,) * 3, (0.5,) * 3)


def test_image_store_decodes_once_and_normalises(tmp_path, cache_dir):
    from mmdd_bench.data.images import ImageStore

    write_flickr(tmp_path)
    ds = load_dataset("flickr30k", tmp_path, cache_dir)
    store = ImageStore(ds.test.image_paths, 16, tmp_path / "c", ds.test.fingerprint, (0.5,) * 3, (0.5,) * 3)
    batch = store.batch([0, 2])
    assert batch.shape == (2, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
    files = list((tmp_path / "c" / "images").glob("*.u8"))
    assert len(files) == 1
    again = ImageStore(ds.test.image_paths, 16, tmp_path / "c", ds.test.fingerprint, (0.5,) * 3, (0.5,) * 3)
    assert (again.batch([0, 2]) == batch).all()


def test_shapes_is_deterministic_and_karpathy_formatted(mini, cache_dir):
    from mmdd_bench.data.shapes import SHAPES_CONFIGS

    cfg = SHAPES_CONFIGS["shapes-mini"]
    assert len(mini.train.image_paths) == cfg.n_train and mini.train.n_pairs == 5 * cfg.n_train
    assert len(mini.test.image_paths) == cfg.n_test and all(len(c) == 5 for c in mini.test.img2txt)
    assert mini.default_backbone == "tiny" and not mini.hflip
    # regenerating from scratch gives byte-identical annotations
    from mmdd_bench.data.shapes import ensure_generated

    other = ensure_generated("shapes-mini", cache_dir / "again")
    assert (other / "annotations" / "shapes_test.json").read_bytes() == (
        mini.root / "annotations" / "shapes_test.json").read_bytes()
    # captions are varied: many distinct templates and strings
    assert len(set(mini.test.captions)) > 0.6 * len(mini.test.captions)  # varied, with some shared


def test_unknown_dataset_suggests(cache_dir):
    with pytest.raises(UsageError, match="unknown dataset 'flicker'"):
        load_dataset("flicker", None, cache_dir)


def test_flickr_like_folders_load_as_flickr30k_deterministically(tmp_path, cache_dir):
    """The benchmarks' stand-in for Flickr30K: its loader reads it, five captions per image, Flickr's sizes."""
    from PIL import Image

    from mmdd_bench.data import load_dataset
    from mmdd_bench.data.photos import FLICKR_SIZES, write_flickr_like

    a = write_flickr_like(tmp_path / "a", n_train=6, n_val=2, n_test=3)
    b = write_flickr_like(tmp_path / "b", n_train=6, n_val=2, n_test=3)
    assert [p.read_bytes() for p in sorted(a.rglob("*.j*"))] == [p.read_bytes() for p in sorted(b.rglob("*.j*"))]
    assert write_flickr_like(tmp_path / "a", 99, 99, 99) == a  # made once: an existing folder is reused
    ds = load_dataset("flickr30k", tmp_path / "a", cache_dir)
    assert ds.train.n_pairs == 30 and len(ds.test.image_paths) == 3 and len(ds.val.image_paths) == 2
    assert {Image.open(p).size for p in ds.test.image_paths} <= set(FLICKR_SIZES)
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".flickr-like-")]  # no leftovers
