"""A published snapshot's tables, checked the way `load_runs` checks a run folder.

A snapshot arrives with a checkout (a pull request can change it), so it is input like any store:
every column the report reads must have the type the report reads it as, before anything is merged,
computed or written. A bad cell is refused with a ConfigError naming the file, the column, the value
and what is allowed; `spambench publish` then exits 2 with that one line and writes nothing.

Text that reaches RESULTS.md's Markdown (task, optimizer, scale, run id, status, metric name) must
also be a plain name: no control characters and no `|`, which would break a table row or start a line
of the file's own.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from spam_bench.reports.summary import (
    LONG_COLUMNS,
    RUN_ROW_COLUMNS,
    SUMMARY_COUNTS,
    SUMMARY_MAPPINGS_TEXT,
    SUMMARY_NAMES,
    SUMMARY_NUMBERS,
)
from spam_bench.suite.errors import ConfigError

PLAIN_NAME = re.compile(r"[^\x00-\x1f\x7f|]+")
_TEXT = ("settings", "problem", "problem_key", "recipe", "device", "reason", "git_commit", "code_id", "finished_at")


def _bad(path: Path, column: str, value: Any, allowed: str) -> ConfigError:
    shown = value if not isinstance(value, str) or len(value) <= 60 else value[:59] + "…"
    return ConfigError(f"{path}: column {column}", shown, allowed)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_runs(path: Path, runs: pd.DataFrame) -> None:
    """Refuse a runs table the report could not read as runs (see the module docstring)."""
    absent = [c for c in RUN_ROW_COLUMNS if c not in runs.columns]
    if absent:
        raise _bad(path, absent[0], None, "present: a snapshot written by `spambench publish` has every run column")
    for column in SUMMARY_NAMES:
        for value in runs[column]:
            if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value):
                raise _bad(path, column, value, "a non-empty name without control characters or |")
    for value in runs["seed"]:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or _missing(value)
            or value < 0
            or value != int(value)
        ):
            raise _bad(path, "seed", value, "an int >= 0")
    for value in runs["direction"]:
        if value not in ("min", "max"):
            raise _bad(path, "direction", value, "min or max")
    for column in SUMMARY_NUMBERS:
        for value in runs[column]:
            if _missing(value):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise _bad(path, column, value, "a finite number or empty")
    for column in _TEXT:
        for value in runs[column]:
            if not _missing(value) and not isinstance(value, str):
                raise _bad(path, column, value, "text or empty")
    for column in SUMMARY_MAPPINGS_TEXT:
        for value in runs[column]:
            if _missing(value):
                continue
            parsed = _json_object(value)
            if parsed is None:
                raise _bad(path, column, value, "a JSON object as text, or empty")
            if column in SUMMARY_COUNTS and any(_not_count(n) for n in parsed.values()):
                raise _bad(path, column, value, "a JSON object of finite counts")
    keys = runs[["task", "run_id"]]
    if keys.duplicated().any():
        task, run_id = keys[keys.duplicated()].iloc[0]
        raise _bad(path, "run_id", f"{task}/{run_id}", "each (task, run_id) once")


def _json_object(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text, parse_constant=lambda c: None)  # NaN/Infinity are not JSON numbers
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _not_count(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)


def check_long(path: Path, long: pd.DataFrame, runs: pd.DataFrame) -> None:
    """Refuse a long table whose columns are not the report's or whose rows name runs the runs table lacks."""
    absent = [c for c in LONG_COLUMNS if c not in long.columns]
    if absent:
        raise _bad(path, absent[0], None, "present: a snapshot written by `spambench publish` has every long column")
    for column in ("task", "run_id", "split", "name"):
        values = long[column].astype("object")
        bad = values[~values.map(lambda v: isinstance(v, str) and bool(PLAIN_NAME.fullmatch(v)))]
        if len(bad):
            raise _bad(path, column, bad.iloc[0], "a non-empty name without control characters or |")
    for column in ("step", "value", "wall"):
        if not pd.api.types.is_numeric_dtype(long[column]) or pd.api.types.is_bool_dtype(long[column]):
            raise _bad(path, column, str(long[column].dtype), "numbers")
    known = pd.MultiIndex.from_frame(runs[["task", "run_id"]].astype(str))
    rows = pd.MultiIndex.from_frame(long[["task", "run_id"]].astype(str))
    stray = ~rows.isin(known)
    if stray.any():
        task, run_id = rows[stray][0]
        raise _bad(path, "run_id", f"{task}/{run_id}", "a run of runs.parquet")
