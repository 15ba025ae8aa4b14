"""`--config FILE.yaml` and `--scale FILE.yaml`: run settings kept in files instead of long command lines.

A config file is a YAML mapping of what `--set` takes, plus, for sweeps, what their flags take:

    steps: 2000                # a task field, as --set steps=2000
    opt.beta2: 0.95            # an optimizer hyperparameter, as --set opt.beta2=0.95
    seeds: 0-4                 # sweep: as --seeds (also a list: [0, 1, 2])
    opt: spam,adamw            # sweep/tune: the optimizers, as --opt (also a list)
    grid: {lr: [1e-3, 3e-3]}   # sweep: axes, as --grid lr=1e-3,3e-3
    track: wandb,mlflow        # trackers, as --track (track_every: as --track-every)

`opt` holding a mapping instead (`opt: {beta2: 0.95}`) is the nested spelling of `opt.*` keys.

The command line wins: `--set`, `--grid` and the flags are layered over the file. The file's task and
`opt.*` keys go through the same validation as `--set`, so an unknown key fails with the same one
line. A run made from a file is the same run (the same run_id) as one made from the equivalent flags.

A scale file (`--scale my-scale.yaml`) holds a complete task configuration, as a task's own
`configs/<scale>.yaml` does. The run records its scale as the file's stem plus a hash of its values,
so a changed file names new runs and an unchanged one (even moved or reformatted) finds its runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spam_bench.suite.config import json_ready
from spam_bench.suite.errors import ConfigError

# Keys with a meaning of their own (not a task field) per command; everything else is a `--set` key.
META_KEYS = {
    "run": ("track", "track_every"),
    "sweep": ("seeds", "grid", "opt", "track", "track_every"),
    "tune": ("opt", "track", "track_every"),
}
SCALE_SUFFIXES = (".yaml", ".yml")


@dataclass
class FileConfig:
    """A config file's content, sorted by where it goes; values keep their YAML types."""

    sets: dict[str, Any] = field(default_factory=dict)  # task fields and opt.<name>, as --set
    seeds: str | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    optimizers: list[str] | None = None
    track: list[str] | None = None
    track_every: Any = None


def _read_mapping(path: Path, flag: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(flag, str(path), "an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(flag, str(path), f"valid YAML (parse error{line})") from None
    if not isinstance(data, dict):
        raise ConfigError(flag, str(path), "a YAML mapping of key: value")
    return {str(k): v for k, v in data.items()}


def _names(key: str, value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else None
    names = [str(v).strip() for v in items or [] if str(v).strip()]
    if not names:
        raise ConfigError(key, value, "a comma-separated string or a list of names")
    return names


def load_config(path: str | Path, command: str) -> FileConfig:
    """Read `--config` for `command` (run, sweep or tune); structural errors are one-line ConfigErrors,
    field names and values are checked later by `resolve`, exactly as `--set` values are."""
    data = _read_mapping(Path(path), "--config")
    meta = META_KEYS[command]
    out = FileConfig()
    for key, value in data.items():
        if key == "opt" and isinstance(value, Mapping):
            out.sets.update({f"opt.{k}": v for k, v in value.items()})
        elif key == "opt" and "opt" not in meta:
            raise ConfigError("opt", value, "a mapping of optimizer hyperparameters; choose the optimizer with --opt")
        elif key not in meta:
            out.sets[key] = value
        elif key == "opt":
            out.optimizers = _names("opt", value)
        elif key == "track":
            out.track = _names("track", value)
        elif key == "track_every":
            out.track_every = value
        elif key == "seeds":
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            out.seeds = str(value)
        elif key == "grid":
            if not isinstance(value, Mapping):
                raise ConfigError("grid", value, "a mapping of key: [value, ...]")
            for axis, values in value.items():
                options = [v.strip() for v in values.split(",")] if isinstance(values, str) else values
                if not isinstance(options, list) or not options or any(v is None or v == "" for v in options):
                    raise ConfigError(f"grid.{axis}", values, "a non-empty list of values (or v1,v2,...)")
                out.grid[str(axis)] = options
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "scale"


def scale_name(path: Path, values: Mapping[str, Any]) -> str:
    """`<stem>-<hash of the values>`: stable across moves and reformatting, new when a value changes."""
    blob = json.dumps(json_ready(dict(values)), sort_keys=True, separators=(",", ":"), default=str)
    return f"{_slug(path.stem)}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def register_scale(task: Any, name: str, values: Mapping[str, Any]) -> None:
    """Make `name` a scale of this task object in this process (a sweep's trials call it again where
    they run). The task's own scales are untouched; its `scales()` and `scale_values()` learn one more."""
    extra: dict[str, dict[str, Any]] | None = getattr(task, "_user_scales", None)
    if extra is None:
        extra = {}
        own_scales, own_values = task.scales, task.scale_values

        def scales() -> list[str]:
            return sorted({*own_scales(), *extra})

        def scale_values(scale: str) -> dict[str, Any]:
            return dict(extra[scale]) if scale in extra else own_values(scale)

        try:
            for attr, value in (("_user_scales", extra), ("scales", scales), ("scale_values", scale_values)):
                object.__setattr__(task, attr, value)
        except (AttributeError, TypeError):
            raise ConfigError(
                "scale", name, f"a scale name of task {getattr(task, 'name', task)} (it takes no scale files)"
            ) from None
    extra[name] = dict(values)


def user_scales(task: Any) -> dict[str, dict[str, Any]]:
    """The scale files registered for this task object in this process: name -> values."""
    return dict(getattr(task, "_user_scales", None) or {})


def use_scale(task: Any, scale: str) -> str:
    """`--scale`: a scale name passes through; a path to a .yaml file becomes a scale of the task
    (registered here) and its name is returned, for the spec."""
    if not str(scale).endswith(SCALE_SUFFIXES):
        return scale
    path = Path(scale)
    if not path.is_file():
        own = ", ".join(task.scales())
        raise ConfigError("scale", scale, f"{own}, or an existing .yaml file")
    values = _read_mapping(path, "scale")
    name = scale_name(path, values)
    register_scale(task, name, values)
    return name
