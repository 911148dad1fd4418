"""What makes the image caches trustworthy: content fingerprints of image files, checksums of the decoded
stores, space reserved before a store is written, and images decoded under a pixel cap.

- A split's fingerprint covers its images' *content*, not only the annotation file: replacing every image
  (by black ones, say) gives new run ids and new caches. Each file's sha256 is computed once and
  remembered by (path, size, modification time) in ``<cache>/images/contents.json``, so later loads only
  ``stat`` the files, and the fingerprint is the same on every machine that holds the same bytes.
- A decoded store carries a ``.sha256`` of its bytes, checked when it is opened; a store that fails (a
  bit flip, a zeroed page, a truncated copy) is moved aside with a warning and decoded again.
- Space for a store is reserved with ``posix_fallocate`` before anything is written, so a full disk is a
  clear error naming the folder, never a SIGBUS when a memory-mapped page cannot be backed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from ..errors import DataError
from .validate import MAX_IMAGE_PIXELS


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def content_digest(paths: Iterable[Path], cache_dir: Path | None) -> str:
    """One digest of every file's bytes, in order. Per-file digests are memoised in the cache."""
    paths = list(paths)
    memo_path = Path(cache_dir) / "images" / "contents.json" if cache_dir is not None else None
    known: dict[str, str] = {}
    if memo_path is not None and memo_path.is_file():
        try:
            known = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            known = {}
    total = hashlib.sha256()
    added = False
    for path in paths:
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {exc.strerror}") from None
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in known:
            known[key] = _sha256_file(path)
            added = True
        total.update(known[key].encode())
    if added and memo_path is not None:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(memo_path) + ".lock"):
            try:
                merged = {**json.loads(memo_path.read_text()), **known} if memo_path.is_file() else known
            except (OSError, ValueError):
                merged = known
            tmp = memo_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(merged))
            os.replace(tmp, memo_path)
    return total.hexdigest()[:16]


def no_space(folder: Path, nbytes: int, what: str) -> DataError:
    return DataError(f"not enough space for the {what} in {folder}: it needs {nbytes / 2**20:.0f} MiB and "
                     f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB are free; free some, or point "
                     "MMDD_BENCH_CACHE / --cache-dir elsewhere.")


def reserve(path: Path, what: str) -> None:
    """Allocate every block of an existing (sparse) file now, so a full disk fails here with a DataError
    instead of killing a later write through a memory map with SIGBUS."""
    nbytes = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, max(nbytes, 1))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise no_space(path.parent, nbytes, what) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def write_checksum(path: Path) -> None:
    sidecar = path.with_name(path.name + ".sha256")
    tmp = sidecar.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(_sha256_file(path))
    os.replace(tmp, sidecar)


def verified(path: Path, what: str) -> bool:
    """True when ``path`` matches its checksum; a store that does not (or cannot be read) is moved aside."""
    sidecar = path.with_name(path.name + ".sha256")
    if not path.is_file():
        return False
    try:
        ok = sidecar.is_file() and sidecar.read_text().strip() == _sha256_file(path)
    except OSError:
        ok = False
    if not ok:
        bad = path.with_name(f"{path.name}.bad-{int(time.time())}")
        os.replace(path, bad)
        sidecar.unlink(missing_ok=True)
        warnings.warn(f"{what} {path} does not match its checksum (corrupt or incomplete); moved it to {bad.name} "
                      "and decoding the images again", stacklevel=3)
    return ok


def open_image(path: Path) -> Image.Image:
    """An image file opened under the pixel cap: a decompression bomb is a DataError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                img.close()
                raise DataError(f"image {path} has {img.size[0]}x{img.size[1]} pixels, above the {MAX_IMAGE_PIXELS:,} "
                                "a photograph needs (a decompression bomb?); replace or remove it and its JSON entries.")
            return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"image {path} has too many pixels to decode safely; replace or remove it and its JSON "
                        "entries.") from None


def memmap_array(path: Path, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A new uint8 ``.npy`` memory map of ``shape`` at ``path``, its space checked and reserved first."""
    nbytes = int(np.prod(shape))
    if nbytes > shutil.disk_usage(path.parent).free:
        raise no_space(path.parent, nbytes, what)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    try:
        reserve(path, what)
    except BaseException:
        del array
        raise
    return array


__all__ = ["content_digest", "memmap_array", "open_image", "reserve", "verified", "write_checksum"]
