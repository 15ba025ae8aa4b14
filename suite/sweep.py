"""A sweep: optimizers x seeds x a grid of overrides, expanded into validated runs before any scheduler starts."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping
from typing import Any

from spam_bench.suite.config import parse_assignments
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.resolve import ResolvedRun, resolve

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0..4]; '0,3,7-9' -> [0, 3, 7, 8, 9]."""
    seeds: list[int] = []
    for part in str(text).split(","):
        m = _RANGE.match(part.strip())
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError("seeds", text, "ints >= 0 as ranges and lists, e.g. 0-4 or 0,2,5-7")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        seeds.extend(range(lo, hi + 1))
    return sorted(set(seeds))


def parse_grid(items: list[str] | None) -> dict[str, list[str]]:
    """Each `key=v1,v2,...` becomes one axis of the grid."""
    grid: dict[str, list[str]] = {}
    for key, values in parse_assignments(items, flag="--grid").items():
        options = [v.strip() for v in values.split(",")]
        if not all(options):
            raise ConfigError("--grid", f"{key}={values}", "key=value1,value2,... with no empty values")
        grid[key] = options
    return grid


def parse_list(text: str, field: str) -> list[str]:
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ConfigError(field, text, "a comma-separated list of names")
    return names


def expand(
    *,
    task: str,
    optimizers: list[str],
    seeds: list[int],
    grid: Mapping[str, list[str]],
    sets: Mapping[str, str] | None = None,
    scale: str = "tiny",
    device: str = "cpu",
    opt_sets: Mapping[str, Mapping[str, str]] | None = None,
) -> list[ResolvedRun]:
    """Every combination, resolved (so any bad value fails here, with one line, before Ray starts).

    `opt_sets` adds per-optimizer values (the tuned configuration of `--from-tuning`).
    """
    keys = sorted(grid)
    runs = []
    for opt, values in itertools.product(optimizers, itertools.product(*(grid[k] for k in keys))):
        for seed in seeds:
            runs.append(
                resolve(
                    task=task,
                    optimizer=opt,
                    seed=seed,
                    scale=scale,
                    device=device,
                    device_here=False,
                    sets={**(sets or {}), **(opt_sets or {}).get(opt, {}), **dict(zip(keys, values))},
                )
            )
    return runs


def sweep_name(runs: list[ResolvedRun]) -> str:
    """A name derived from the runs, so re-issuing the same sweep finds the same experiment."""
    digest = hashlib.sha256("\n".join(sorted(r.spec.run_id for r in runs)).encode()).hexdigest()[:10]
    return f"sweep-{runs[0].spec.task}-{digest}"


def resolve_canonical(canonical: Mapping[str, Any]) -> ResolvedRun:
    """Rebuild a run from `RunSpec.canonical()` (what a Ray trial receives)."""
    sets = {**canonical["overrides"], **{f"opt.{k}": v for k, v in canonical["opt_hparams"].items()}}
    return resolve(
        task=canonical["task"],
        optimizer=canonical["optimizer"],
        seed=canonical["seed"],
        scale=canonical["scale"],
        device=canonical["device"],
        sets=sets,
    )
