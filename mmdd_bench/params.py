"""Typed parameters: dataclass defaults overridden by ``--set scope.name=value`` strings, type-checked."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, TypeVar

from .errors import UsageError

P = TypeVar("P")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(value: Any, typ: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            if typ is bool:
                low = value.lower()
                if low not in _TRUE | _FALSE:
                    raise ValueError(value)
                return low in _TRUE
            if typ is int:
                return int(value)
            if typ is float:
                return float(value)
            if typ is str:
                return value
        except ValueError:
            raise UsageError(f"{where}: expected {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool) and not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UsageError(f"{where}: expected {typ.__name__}, got {value!r}")
    return value


def apply_overrides(params: P, overrides: dict[str, Any], scope: str = "") -> P:
    """Return a copy of ``params`` (a dataclass) with ``overrides`` applied; unknown names are errors."""
    fields = {f.name: f for f in dataclasses.fields(params)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(type(params))
    aliases = getattr(type(params), "ALIASES", {})
    changes = {}
    for name, value in overrides.items():
        name = aliases.get(name, name)
        where = f"{scope}.{name}" if scope else name
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise UsageError(f"unknown parameter {where!r}.{hint} Known: {', '.join(fields)}.")
        changes[name] = _convert(value, hints[name], where)
    new = dataclasses.replace(params, **changes)  # type: ignore[type-var]
    validate = getattr(new, "validate", None)
    if validate:
        validate()
    return new


def parse_set_options(items: list[str]) -> dict[str, dict[str, str]]:
    """``["covmatch.rho=2", "eval.epochs=5"]`` -> ``{"covmatch": {"rho": "2"}, "eval": {"epochs": "5"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        scope, dot, name = key.partition(".")
        if not sep or not dot or not scope or not name:
            raise UsageError(f"--set {item!r}: expected SCOPE.NAME=VALUE, e.g. covmatch.rho=2 or eval.epochs=10")
        out.setdefault(scope, {})[name] = value
    return out


def identity_dict(params) -> dict:
    """The parameters that define a result. Fields marked ``metadata={"operational": True}`` (how often to
    checkpoint) are left out, so changing them never invalidates finished work; fields marked
    ``{"omit_default": True}`` (speed switches added later) count only when set, so results made before
    they existed keep their identity."""
    out = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if f.metadata.get("operational") or (f.metadata.get("omit_default") and value == f.default):
            continue
        out[f.name] = value
    return out
