"""Typed configuration: dataclasses whose fields carry help text and bounds, built from YAML and `--set`.

Every task and optimizer declares its configuration as a dataclass made of `param(...)` fields.
`build_config` turns plain values (from YAML, from the command line as strings, or from a sweep)
into that dataclass, checking types, bounds and choices, and raising `ConfigError` naming the
field, the bad value and what is allowed. Nothing here knows any task or optimizer.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from spam_bench.suite.errors import ConfigError

C = TypeVar("C")
_MISSING = dataclasses.MISSING


def param(
    default: Any = _MISSING,
    help: str = "",
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A config field with its documentation and the bounds `build_config` enforces."""
    meta = {"help": help, "gt": gt, "ge": ge, "le": le, "lt": lt, "choices": choices}
    if isinstance(default, (list, dict, set)):
        frozen = default
        return dataclasses.field(default_factory=lambda: type(frozen)(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> help text, for `spambench list` and error messages."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _bounds_text(meta: Mapping[str, Any], type_name: str) -> str:
    parts = [
        f"{op} {meta[key]}"
        for key, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if meta.get(key) is not None
    ]
    return f"{type_name} " + " and ".join(parts) if parts else type_name


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _base_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert `value` (possibly a command-line string) to type `tp`, or raise ConfigError."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and _allows_none(tp)):
        if _allows_none(tp):
            return None
        raise ConfigError(name, value, _base_type(tp).__name__)
    base = _base_type(tp)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).replace("_", ""))
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
        if typing.get_origin(base) is tuple or base is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            args = typing.get_args(base)
            elem = args[0] if args else float
            return tuple(coerce(name, v.strip() if isinstance(v, str) else v, elem) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(name, value, getattr(base, "__name__", str(base))) from None
    return value


def _check_bounds(name: str, value: Any, meta: Mapping[str, Any], type_name: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(name, value, choices)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(name, value, _bounds_text(meta, "finite " + type_name))
        checks = (
            ("gt", lambda b: value > b),
            ("ge", lambda b: value >= b),
            ("lt", lambda b: value < b),
            ("le", lambda b: value <= b),
        )
        for key, ok in checks:
            bound = meta.get(key)
            if bound is not None and not ok(bound):
                raise ConfigError(name, value, _bounds_text(meta, type_name))


def build_config(cls: type[C], values: Mapping[str, Any], *, prefix: str = "") -> C:
    """Build dataclass `cls` from `values`, validating every field; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls))}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(prefix + unknown[0], values[unknown[0]], "keys " + ", ".join(sorted(fields)))
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            value = coerce(prefix + name, values[name], hints[name])
        elif f.default is not _MISSING:
            value = f.default
        elif f.default_factory is not _MISSING:
            value = f.default_factory()
        else:
            raise ConfigError(prefix + name, None, "a value (this field is required)")
        _check_bounds(prefix + name, value, f.metadata, getattr(_base_type(hints[name]), "__name__", "value"))
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), type(data).__name__, "a YAML mapping of field: value")
    return data


def parse_assignments(items: list[str] | None, flag: str = "--set") -> dict[str, str]:
    """Parse `key=value` strings; values stay strings until `build_config` types them."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(flag, item, "key=value")
        out[key.strip()] = value.strip()
    return out
