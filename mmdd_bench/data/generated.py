"""Writing a generated dataset into the cache once, atomically, even when several processes ask at once."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def ensure_folder(target: Path, sentinel: str, build: Callable[[Path], None]) -> Path:
    """``target`` once ``target/sentinel`` exists; else ``build`` fills a temp folder that is renamed into
    place under a file lock, so a reader never sees a half-written dataset."""
    if (target / sentinel).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / sentinel).is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name.split('-')[0]}-", dir=target.parent))
        try:
            build(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
