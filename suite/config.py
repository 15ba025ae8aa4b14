"""Typed configuration: dataclasses whose fields carry help text and bounds, built from YAML and `--set`.

Every task and optimizer declares its configuration as a dataclass made of `param(...)` fields.
`build_config` turns plain values (from YAML, from the command line as strings, or from a sweep)
into that dataclass, checking types, bounds and choices, and raising `ConfigError` naming the
field, the bad value and what is allowed. Nothing here knows any task or optimizer.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from spam_bench.suite.errors import ConfigError

C = TypeVar("C")
_MISSING = dataclasses.MISSING
# Numbers typed on a command line: ASCII digits only. Python's int() and float() also take other
# scripts' digits ('٣' is 3) and digit-group underscores ('1_0' is 10), so two spellings that look
# nothing alike would name the same run (and one that looks like a typo would silently run).
_ASCII_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
# Every int a config holds ends up in torch or numpy, whose ints are 64-bit; bounding them here also
# keeps products of two fields (estimates, messages) small enough to print.
_INT_LIMIT = 2**63
_ASCII_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)", re.ASCII | re.I
)


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
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str) and not _ASCII_INT.fullmatch(value.strip()):
                raise ValueError
            number = int(value)
            if not -_INT_LIMIT < number < _INT_LIMIT:
                raise ConfigError(name, value, "an int with |value| < 2**63 (what torch's int64 holds)")
            return number
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str) and not _ASCII_FLOAT.fullmatch(value.strip()):
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
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):
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


def shown_field(key: Any) -> str:
    """A user-typed key as an error's field: as typed when it prints as one line, else its repr
    (a key holding a line break or a control character would break the one-line error)."""
    text = str(key)
    return text if text.isprintable() else repr(text)


@functools.lru_cache(maxsize=512)
def _type_hints(cls: type) -> dict[str, Any]:
    """A config class's field types. Cached: evaluating string annotations compiles each one, and a
    sweep builds two configs per run it plans (classes are immutable here: dataclasses of `param`s)."""
    return typing.get_type_hints(cls)


def build_config(cls: type[C], values: Mapping[str, Any], *, prefix: str = "") -> C:
    """Build dataclass `cls` from `values`, validating every field; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls))}
    hints = _type_hints(cast(Any, cls))
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(shown_field(prefix + unknown[0]), values[unknown[0]], "keys " + ", ".join(sorted(fields)))
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
    """A YAML mapping of field: value (a copy the caller may change).

    Why the cache: `resolve` reads the scale's file for every run it resolves, and a sweep resolves each
    combination twice (suite/sweep.py), so planning a few hundred runs spent most of its time in
    PyYAML's pure-Python parser. The cache is keyed by the file's identity and modification time, so an
    edited scale file is read again."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    if key not in _YAML_CACHE:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ConfigError(str(path), type(data).__name__, "a YAML mapping of field: value")
        if len(_YAML_CACHE) >= _YAML_CACHE_SIZE:
            _YAML_CACHE.clear()
        _YAML_CACHE[key] = data
    return copy.deepcopy(_YAML_CACHE[key])


_YAML_CACHE: dict[tuple[str, int, int, int], dict[str, Any]] = {}
_YAML_CACHE_SIZE = 256  # scale files are few; a bound keeps a long-lived notebook from growing it


def parse_assignments(items: list[str] | None, flag: str = "--set") -> dict[str, str]:
    """Parse `key=value` strings; values stay strings until `build_config` types them.

    A key given twice is refused rather than "the last one wins": the two values disagree, and which
    one the user meant cannot be told from the command line (a sweep's --set list is often edited).
    """
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(flag, item, "key=value")
        if key.strip() in out:
            raise ConfigError(flag, item, f"each key once ({key.strip()} is already {out[key.strip()]!r})")
        out[key.strip()] = value.strip()
    return out


def machine_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def human_bytes(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number readable (error messages). Estimates
    from absurd sizes can be ints beyond any float: those are given as a power of ten."""
    if n >= 2**100:
        return f"about 1e{int(math.log10(n))} B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits_memory(config: Any, estimate: Callable[[Any], int], fields: Sequence[str], what: str) -> None:
    """Refuse a config whose memory estimate exceeds this machine's physical memory (from a task's
    `validate()`), naming the size field whose default would shrink the estimate most.

    `estimate(config)` must be a lower bound in bytes (what any run of it must hold at once), so only
    sizes that cannot possibly run are refused, in one line and before anything is written, instead of
    an allocation traceback minutes later. A sweep's driver is checked against its own memory, which is
    why the bound is deliberately low: a cluster node may have more, but not 1000x more.
    """
    have, need = machine_memory(), estimate(config)
    if have is None or need <= have:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not _MISSING}
    candidates = [name for name in fields if name in defaults] or list(fields)
    culprit = min(
        candidates,
        key=lambda name: estimate(dataclasses.replace(config, **{name: defaults[name]})) if name in defaults else need,
    )
    raise ConfigError(
        culprit,
        getattr(config, culprit),
        f"a size that fits in memory: {what} needs at least {human_bytes(need)}, "
        f"more than this machine's {human_bytes(have)}",
    )
