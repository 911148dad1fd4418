"""A small generic registry, modelled on timm's: decorator registration, lazy ``"module:attr"`` entries,
wildcard listing, did-you-mean errors, and third-party plugins found through an entry-point group.

Lazy entries keep ``import mmdd_bench`` cheap: a built-in method is imported only when it is used.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import UsageError

T = TypeVar("T")


def _load_reference(reference: str) -> Any:
    module_name, _, attr = reference.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Maps names to objects (or to ``"module:attr"`` strings resolved on first use)."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T | str] = {}
        self._entry_points_loaded = False

    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("my-method")`` (name defaults to the object's ``name``)."""

        def decorator(obj: T) -> T:
            key = name or getattr(obj, "name", None) or obj.__name__
            self.add(key, obj, override=override)
            return obj

        return decorator

    def add(self, name: str, obj: T | str, *, override: bool = False) -> None:
        existing = self._entries.get(name)
        if existing is not None and not override and existing is not obj and not isinstance(existing, str):
            raise UsageError(f"{self.kind} {name!r} is already registered; pass override=True to replace it")
        self._entries[name] = obj

    def add_lazy(self, name: str, reference: str) -> None:
        """Register ``"package.module:attr"``; the module is imported when the entry is first fetched."""
        self._entries.setdefault(name, reference)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or not self.entry_point_group:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            self._entries.setdefault(ep.name, ep.value)

    def names(self, pattern: str = "*") -> list[str]:
        self._load_entry_points()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        self._load_entry_points()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(
                f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names()) or '(none)'}."
            )
        entry = self._entries[name]
        if isinstance(entry, str):
            try:
                loaded = _load_reference(entry)
            except (ImportError, AttributeError) as exc:
                raise UsageError(f"{self.kind} {name!r} points to {entry!r}, which cannot be loaded: {exc}") from exc
            # A module that registers itself on import has already replaced the string.
            current = self._entries[name]
            self._entries[name] = current if not isinstance(current, str) else loaded
            entry = self._entries[name]
        return entry  # type: ignore[return-value]
