"""Typed parameters: dataclass defaults overridden by ``--set scope.name=value`` strings, type- and range-checked.

A parameter is declared with ``param(default, ge=..., gt=..., le=..., lt=..., choices=...)`` beside its
name, so its range is checked wherever a value comes from (``--set``, a config file, a plugin's defaults) and
before any work starts. ``None`` is the one "unset" sentinel: a resolver fills it from the backbone or the
dataset *before* the parameters are hashed, so a result's identity always holds the values actually used.

Identity (``identity_dict``) keeps only what can change a result: operational fields (checkpoint
frequency) never count, fields added later count only when set away from their default, and fields a
dataclass declares inactive for the current values (``inactive_fields``) are left out.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, TypeVar

from .errors import UsageError

P = TypeVar("P")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null", "default"}


def param(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, choices: tuple | None = None,
          operational: bool = False, omit_default: bool = False, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its valid range declared beside it (checked by ``check_ranges``)."""
    metadata = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}.items() if v is not None}
    if operational:
        metadata["operational"] = True
    if omit_default:
        metadata["omit_default"] = True
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _optional(typ: Any) -> tuple[Any, bool]:
    """``float | None`` -> (float, True); other types -> (typ, False)."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(typ)) == 2:
            return args[0], True
    return typ, False


def _convert(value: Any, typ: Any, where: str) -> Any:
    typ, nullable = _optional(typ)
    if value is None or (nullable and isinstance(value, str) and value.lower() in _NONE):
        if nullable:
            return None
        raise UsageError(f"{where}: expected {getattr(typ, '__name__', typ)}, got no value")
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


def check_ranges(params: Any, scope: str = "") -> None:
    """Every declared range (``param(ge=..., choices=...)``) holds; a clear UsageError names the first that does not."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        meta = f.metadata
        where = f"{scope}.{f.name}" if scope else f.name
        if value is None or not ({"ge", "gt", "le", "lt", "choices"} & meta.keys()):
            continue
        if "choices" in meta and value not in meta["choices"]:
            raise UsageError(f"{where} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"{where} must be a finite number, got {value!r}")
            for key, ok, text in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                                  ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
                if key in meta and not ok(value, meta[key]):
                    raise UsageError(f"{where} must be {text} {meta[key]}, got {value!r}")


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
    check_ranges(new, scope)
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


def identity_dict(params: Any) -> dict:
    """The parameters that define a result: operational fields (``param(operational=True)``) never count,
    fields marked ``omit_default`` (speed switches added later) count only when set, and fields the
    dataclass reports as inactive for its current values (``inactive_fields()``) are left out."""
    if params is None or not dataclasses.is_dataclass(params):
        return {}
    inactive = set(params.inactive_fields()) if hasattr(params, "inactive_fields") else set()
    out = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if f.name in inactive or f.metadata.get("operational") or (f.metadata.get("omit_default") and value == f.default):
            continue
        out[f.name] = value
    return out


def variant_label(params: Any, defaults: Any, derived: set[str] | frozenset[str] = frozenset()) -> str:
    """What sets these parameters apart from the defaults, ``name=value`` sorted; empty when nothing does.
    Only active, result-defining fields count, so an override equal to the default (or one the current values
    make inactive) is no variant. ``derived`` fields (left unset on both sides and filled by a resolver from
    other values, such as the decay epoch from the epochs) are consequences of the label, not part of it."""
    mine = identity_dict(params)
    return ",".join(f"{name}={value}" for name, value in sorted(mine.items())
                    if name not in derived and getattr(defaults, name, None) != value)


def unset_fields(*params: Any) -> set[str]:
    """Fields that are ``None`` (unset, to be resolved) in every one of ``params``."""
    return {f.name for f in dataclasses.fields(params[0]) if all(getattr(p, f.name) is None for p in params)}
