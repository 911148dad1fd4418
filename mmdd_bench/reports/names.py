"""Safe file names for report files.

They come from record fields (dataset, backbone, protocol, method), which are untrusted: each part is
reduced to a slug (letters, digits, ``.``, ``_``, ``-``; no leading dot), a part that had to be changed
gets a hash of the original so two groups never share a file, and every path is checked to stay inside
its folder before anything is written. Names are built by concatenation, never ``with_suffix``, so
``coco.v1`` and ``coco.v2`` stay apart.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(part: str) -> str:
    cleaned = _UNSAFE.sub("_", str(part)).lstrip(".").replace("__", "_") or "_"  # "__" separates the parts
    if cleaned != str(part):
        cleaned = f"{cleaned[:60]}-{hashlib.sha256(str(part).encode()).hexdigest()[:8]}"
    return cleaned


def group_stem(*parts: str) -> str:
    """``dataset__backbone__protocol`` made safe for a file name (see the module docstring)."""
    return "__".join(slug(p) for p in parts)


def confined(folder: Path, name: str) -> Path:
    """``folder / name``, refusing any name that would leave ``folder``."""
    path = folder / name
    if path.resolve().parent != folder.resolve() or "/" in name or "\\" in name:
        raise ValueError(f"refusing to write {name!r} outside {folder}")
    return path


__all__ = ["confined", "group_stem", "slug"]
