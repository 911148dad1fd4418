"""Loader for the BLIP Karpathy-split JSON files of Flickr30K and COCO (and the embedded ``shapes`` set,
which is written in the same format so that one code path is exercised everywhere).

Layout under the data root::

    DIR/flickr30k/annotations/flickr30k_{train,val,test}.json
    DIR/flickr30k/flickr30k-images/*.jpg      (Kaggle's flickr30k_images/[flickr30k_images/] works too)
    DIR/coco/annotations/coco_karpathy_{train,val,test}.json
    DIR/coco/{train2014,val2014}/*.jpg
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .integrity import content_digest
from .splits import RetrievalSplit, TrainSplit
from .text import pre_caption

# First path component in the JSON -> folder names that users commonly have instead.
IMAGE_FOLDER_ALIASES = {
    "flickr30k-images": ["flickr30k_images", "flickr30k_images/flickr30k_images"],
}


def _read_json(path: Path) -> list:
    if not path.is_file():
        raise DataError(
            f"missing annotation file {path}. Expected a BLIP Karpathy-split JSON there "
            f"(see README: 'Datasets'); point --data-root or MMDD_BENCH_DATA at the folder that holds it."
        )
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-download the Karpathy "
                        "annotation file or convert it to UTF-8.") from None
    except RecursionError:
        raise DataError(f"{path} nests JSON too deeply to be an annotation file (a list of flat entries).") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); re-download the Karpathy annotation file.") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of entries, got {type(data).__name__}.")
    if not data:
        raise DataError(f"{path}: the split is empty; expected at least one entry.")
    return data


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class ImageResolver:
    """Resolves JSON image paths against the dataset folder. When the JSON's first folder is absent, the
    known aliases are tried with the first image and the one that holds it is used for the whole split."""

    def __init__(self, dataset_dir: Path) -> None:
        self.dataset_dir = dataset_dir
        self._prefix_map: dict[str, str] = {}
        self._real_folders: dict[Path, Path] = {}

    def __call__(self, rel: str) -> Path:
        """The image file of a JSON path, confined to the dataset folder: no absolute paths, no ``..``, and a
        symlinked *file* must resolve inside its image folder (a symlinked image *folder* is fine)."""
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts:
            raise DataError(f"image path {rel!r} leaves the dataset folder {self.dataset_dir}; image paths must be "
                            "relative to it, without '..'.")
        path = self._resolve(rel)
        folder = self.dataset_dir if len(parts) == 1 else self.dataset_dir / self._prefix_map[parts[0]]
        if folder not in self._real_folders:
            self._real_folders[folder] = folder.resolve()
        real = Path(os.path.realpath(path))
        if self._real_folders[folder] not in real.parents:
            raise DataError(f"image {path} resolves to {real}, outside its folder {folder}; replace the symlink "
                            "with the image file.")
        return path

    def _resolve(self, rel: str) -> Path:
        first, _, rest = rel.partition("/")
        if not rest:
            return self.dataset_dir / rel
        if first not in self._prefix_map:
            chosen = first
            if not (self.dataset_dir / first / rest).exists():
                for alias in IMAGE_FOLDER_ALIASES.get(first, []):
                    if (self.dataset_dir / alias / rest).is_file():
                        chosen = alias
                        break
            self._prefix_map[first] = chosen
        return self.dataset_dir / self._prefix_map[first] / rest


def _check_images(paths: list[Path], json_path: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DataError(
            f"{len(missing)} of {len(paths)} images listed in {json_path} are missing (e.g. {shown}). "
            "Image paths in the JSON resolve relative to the dataset folder; check --data-root."
        )


def _entry_error(json_path: Path, index: int, expected: str) -> DataError:
    return DataError(f"{json_path}: entry {index} is malformed; expected {expected}.")


def _split_fingerprint(json_path: Path, image_paths: list[Path], cache_dir: Path | None) -> str:
    """The annotation file and the images' bytes: new images, new identities and caches."""
    return hashlib.sha256(f"{_fingerprint(json_path)}|{content_digest(image_paths, cache_dir)}".encode()).hexdigest()[:16]


def load_train_split(json_path: Path, dataset_dir: Path, cache_dir: Path | None = None) -> TrainSplit:
    """Train JSON: a list of ``{"image": path, "caption": str, ...}``, one entry per pair."""
    entries = _read_json(json_path)
    resolve = ImageResolver(dataset_dir)
    image_index: dict[str, int] = {}
    image_paths: list[Path] = []
    captions: list[str] = []
    pair_image: list[int] = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str) and isinstance(entry.get("caption"), str)):
            raise _entry_error(json_path, i, '{"image": str, "caption": str}')
        rel = entry["image"]
        if rel not in image_index:
            image_index[rel] = len(image_paths)
            image_paths.append(resolve(rel))
        captions.append(pre_caption(entry["caption"]))
        pair_image.append(image_index[rel])
    _check_images(image_paths, json_path)
    return TrainSplit(image_paths, captions, np.asarray(pair_image, dtype=np.int64),
                      _split_fingerprint(json_path, image_paths, cache_dir))


def load_retrieval_split(json_path: Path, dataset_dir: Path, cache_dir: Path | None = None) -> RetrievalSplit:
    """Val/test JSON: a list of ``{"image": path, "caption": [str, ...]}``, one entry per image."""
    entries = _read_json(json_path)
    resolve = ImageResolver(dataset_dir)
    image_paths: list[Path] = []
    captions: list[str] = []
    img2txt: list[list[int]] = []
    txt2img: list[int] = []
    for i, entry in enumerate(entries):
        caps = entry.get("caption") if isinstance(entry, dict) else None
        if isinstance(caps, str):
            caps = [caps]
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str) and caps
                and all(isinstance(c, str) for c in caps)):
            raise _entry_error(json_path, i, '{"image": str, "caption": [str, ...]} with at least one caption')
        image_paths.append(resolve(entry["image"]))
        img2txt.append(list(range(len(captions), len(captions) + len(caps))))
        captions.extend(pre_caption(c) for c in caps)
        txt2img.extend([i] * len(caps))
    _check_images(image_paths, json_path)
    return RetrievalSplit(image_paths, captions, img2txt, np.asarray(txt2img, dtype=np.int64),
                          _split_fingerprint(json_path, image_paths, cache_dir))
