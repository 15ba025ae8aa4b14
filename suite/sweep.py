"""A sweep: optimizers x seeds x a grid of overrides, expanded into validated runs before any scheduler starts."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Mapping
from typing import Any

from spam_bench.suite.config import parse_assignments
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.resolve import SEED_LIMIT, ResolvedRun, resolve

# ASCII digits only (`\d` takes other scripts' digits), and few enough that int() stays cheap.
_RANGE = re.compile(r"([0-9]{1,10})(?:-([0-9]{1,10}))?", re.ASCII)
# A sweep is expanded (every run resolved) before Ray starts: bound it, so a typo such as 0-100000000
# is one line instead of minutes of work and then running out of memory.
MAX_SWEEP_RUNS = 10_000
_SEEDS_ALLOWED = f"ints 0..{SEED_LIMIT - 1} as ranges and lists, e.g. 0-4 or 0,2,5-7"


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0..4]; '0,3,7-9' -> [0, 3, 7, 8, 9].

    A seed listed twice (0-4,3) is refused, not deduplicated: it is most likely a typo for another
    seed, and the sweep would silently have fewer runs than the list suggests. At most
    MAX_SWEEP_RUNS seeds, counted before any list is built."""
    ranges: list[tuple[int, int]] = []
    for part in str(text).split(","):
        m = _RANGE.fullmatch(part.strip())
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError("seeds", text, _SEEDS_ALLOWED)
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi >= SEED_LIMIT:
            raise ConfigError("seeds", text, _SEEDS_ALLOWED)
        ranges.append((lo, hi))
    if sum(hi - lo + 1 for lo, hi in ranges) > MAX_SWEEP_RUNS:
        raise ConfigError("seeds", text, f"at most {MAX_SWEEP_RUNS:,} seeds (runs per sweep are bounded)")
    seeds: list[int] = []
    for lo, hi in ranges:
        seeds.extend(range(lo, hi + 1))
    _refuse_repeats("seeds", text, seeds)
    return sorted(seeds)


def _refuse_repeats(field: str, text: str, items: list[Any]) -> None:
    """Refuse a list that names something twice (a sweep would otherwise run less than it says)."""
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            raise ConfigError(field, text, f"each value once ({item} is listed twice)")
        seen.add(item)


def parse_grid(items: list[str] | None) -> dict[str, list[str]]:
    """Each `key=v1,v2,...` becomes one axis of the grid."""
    grid: dict[str, list[str]] = {}
    for key, values in parse_assignments(items, flag="--grid").items():
        options = [v.strip() for v in values.split(",")]
        if not all(options):
            raise ConfigError("--grid", f"{key}={values}", "key=value1,value2,... with no empty values")
        _refuse_repeats("--grid", f"{key}={values}", options)
        grid[key] = options
    return grid


def parse_list(text: str, field: str) -> list[str]:
    """Comma-separated names; a name given twice (adamw,adamw) is refused (see parse_seeds)."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ConfigError(field, text, "a comma-separated list of names")
    _refuse_repeats(field, text, names)
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

    `opt_sets` adds per-optimizer values (the tuned configuration of `--from-tuning`). Refused: a
    key both fixed (`sets`) and swept (`grid`); more than MAX_SWEEP_RUNS runs (counted before
    resolving any); two combinations that are the same run (grid values equal once typed, 1e-3 and 0.001).

    A swept value equal to the one the run has without it (an LR study's grid holding the task's
    default lr) is dropped from the run's overrides, so that combination *is* the defaults run: the
    same run id, reused from the store, and one entry in the leaderboard instead of a hand-set twin.
    """
    keys = sorted(grid)
    for key in keys:
        if key in (sets or {}):
            raise ConfigError("--grid", key, "a key that --set does not also fix")
    total = len(optimizers) * len(seeds) * math.prod(len(grid[k]) for k in keys)
    if total > MAX_SWEEP_RUNS:
        raise ConfigError("sweep", f"{total:,} runs", f"at most {MAX_SWEEP_RUNS:,} runs per sweep (split it)")
    runs = []
    seen: dict[str, str] = {}
    for opt, values in itertools.product(optimizers, itertools.product(*(grid[k] for k in keys))):
        for seed in seeds:
            fixed = {**(sets or {}), **(opt_sets or {}).get(opt, {})}
            swept = dict(zip(keys, values))
            runs.append(_resolve_swept(task, opt, seed, scale, device, fixed, swept))
            combo = ", ".join([opt, *(f"{k}={v}" for k, v in zip(keys, values)), f"seed {seed}"])
            if runs[-1].spec.run_id in seen:
                raise ConfigError("--grid", combo, f"distinct runs (the same run as {seen[runs[-1].spec.run_id]})")
            seen[runs[-1].spec.run_id] = combo
    return runs


def _resolve_swept(
    task: str, opt: str, seed: int, scale: str, device: str, fixed: Mapping[str, str], swept: Mapping[str, str]
) -> ResolvedRun:
    """One grid combination, resolved without the swept keys whose value is what the run would have anyway."""

    def run(keys: Mapping[str, str]) -> ResolvedRun:
        return resolve(
            task=task, optimizer=opt, seed=seed, scale=scale, device=device, device_here=False, sets={**fixed, **keys}
        )

    resolved = run(swept)
    kept = dict(swept)
    for key in swept:
        try:
            without = run({k: v for k, v in kept.items() if k != key})
        except ConfigError:  # the run is invalid without this value: it is not a default
            continue
        if _typed(without, key) == _typed(resolved, key):
            kept.pop(key)
    return resolved if len(kept) == len(swept) else run(kept)


def _typed(run: ResolvedRun, key: str) -> object:
    """The resolved value of a --grid key (a task field, or opt.<field>) in a run's configs."""
    if key.startswith("opt."):
        return getattr(run.opt_config, key[4:], None)
    return getattr(run.config, key, getattr(run.opt_config, key, None))


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
