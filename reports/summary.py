"""`spambench report`: every complete run into a runs table and a long table, and a Markdown summary table.

`runs` has one row per complete run (its summary.json and spec.json). `long` has one row per run x
split x metric x step of what the report draws from metrics.jsonl, keyed by (task, run_id) only:
run columns are joined on demand (`with_run_columns`), never repeated on every row. Each
metrics.jsonl is parsed column-wise (pyarrow) and cut down per run before anything is concatenated,
so memory grows with the kept rows, not with the files: CURVE_POINTS and the notes above it say what
is kept and the bound on each curve. It is saved as parquet (with the run columns) so notebooks can read the
same numbers the report shows. `select` applies the report's filters (--task/--opt/--scale/--since);
the leaderboard (reports/leaderboard.py) builds on both. `make perf-report` measures the report on a
large synthetic store (runners/perf_report.py).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from spam_bench.reports.blocks import md_cell, md_text
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.resolve import code_of
from spam_bench.suite.results import METRICS, SPEC, SUMMARY, RunStore, read_json
from spam_bench.suite.step_log import FINAL as STEPS_FILE
from spam_bench.suite.step_log import SPLIT as STEP_SPLIT

# What tells runs apart: the canonical hyperparameters (overrides, opt_hparams), the effective optimizer
# config, versions, commit, hardware. results.parquet carries them on every row (`with_run_columns`);
# the long table in memory carries only the key (task, run_id).
RUN_COLUMNS = [
    "run_id",
    "task",
    "optimizer",
    "seed",
    "scale",
    "device",
    "status",
    "settings",
    "git_commit",
    "code_id",
    "overrides",
    "opt_hparams",
    "optimizer_config",
    "versions",
    "hardware",
]
# Task fields that belong to the optimizer's recipe rather than to the problem: the learning rate is
# tuned per optimizer (`spambench tune`), so runs that differ only in it compete in one table.
RECIPE_KEYS = ("lr",)
# Operational fields that never change a result: not part of what defines a problem.
OPERATIONAL_KEYS = ("threads", "checkpoint_every")
# `runs.attrs` key: how many run folders load_runs skipped as malformed (the leaderboard's header says).
MALFORMED_ATTR = "malformed_runs"
_EMPTY_EXTRA_COLUMNS = ("primary_metric", "direction", "value", "reason", "wall_time_s", "finished_at", "problem")
# What the report reads from summary.json, by type.
SUMMARY_NAMES = _SUMMARY_NAMES = ("run_id", "task", "optimizer", "scale", "status", "primary_metric")
SUMMARY_NUMBERS = _SUMMARY_NUMBERS = (
    "value",
    "steps",
    "wall_time_s",
    "optimizer_state_bytes",
    "diverged_step",
    "grad_clip",
    "tokens_per_s",
    "robustness",
    "recovery_steps_mean",
)
_SUMMARY_MAPPINGS = (
    "overrides",
    "opt_hparams",
    "versions",
    "hardware",
    "git",
    "code",
    "gss_spikes",
    "clipped_entries",
    "spike_events",
)
# The runs table's columns (`_run_row`), and those of them that hold JSON objects as text, of which
# the role -> count ones: what a published snapshot must hold (reports/snapshot_check.py).
RUN_ROW_COLUMNS = (
    "run_id", "task", "optimizer", "seed", "scale", "device", "status", "settings", "git_commit", "code_id",
    "primary_metric", "direction", "value", "diverged_step", "reason", "steps", "wall_time_s",
    "optimizer_state_bytes", "opt_hparams", "overrides", "versions", "hardware", "optimizer_config",
    "task_config", "problem", "problem_key", "recipe", "grad_clip", "tokens_per_s", "finished_at",
    "gss_spikes", "clipped_entries", "spike_events", "robustness", "recovery_steps_mean",
)  # fmt: skip
SUMMARY_COUNTS = ("gss_spikes", "clipped_entries", "spike_events")
SUMMARY_MAPPINGS_TEXT = (
    "opt_hparams", "overrides", "versions", "hardware", "optimizer_config", "task_config", *SUMMARY_COUNTS,
)  # fmt: skip
# `--since` as an age: at most a century (a larger one overflowed datetime; no run is that old).
MAX_AGE_DAYS = 36_525
LONG_COLUMNS = ["task", "run_id", "split", "name", "step", "value", "wall"]
# What load_runs keeps of metrics.jsonl and steps.parquet (the "optim" split, suite/step_log.py): what the report's consumers read, per run and bounded.
#  - reports/plots.py: ("train", "loss") and the primary metric's logged curve (split != train/final,
#    f"{split}_{name}" == primary_metric), averaged over seeds into at most plots.MAX_POINTS step bins;
#  - reports/spikes.py: "grad_norm" (split train or optim), drawn raw per run, with dots at the steps of
#    "grad_spike/<role>" events and lines at "optimizer_reset" events.
# Kept: in the per-step splits (STEP_SPLITS) only those names (plus the other rare events); in every other
# split (evaluation: val, eval, test...) every name, since those are few points and are the eval values.
# A curve longer than CURVE_POINTS is cut to CURVE_POINTS points: its first and last points exactly and
# step-bin means in between (plots average bins anyway); "grad_norm" keeps per bin its lowest and highest
# point, so spikes stay visible, and its points at every event step, so the event dots sit on the trace.
# Events are logged only where they happen and are kept whole; so are the "final" rows (summary.json).
CURVE_POINTS = 512
STEP_SPLITS = ("train", "optim")
CURVES = {("train", "loss")}
TRACES = {"grad_norm"}
EVENT_NAMES = {"optimizer_reset", "injected_spike", "loss_spike"}
EVENT_PREFIXES = ("grad_spike/",)
_METRIC_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("name", pa.string()),
        ("step", pa.int64()),
        ("value", pa.float64()),
        ("wall", pa.float64()),
    ]
)
_JSON_PARSE = pa_json.ParseOptions(explicit_schema=_METRIC_SCHEMA, unexpected_field_behavior="ignore")
_LF, _OPEN, _CLOSE = ord("\n"), ord("{"), ord("}")


def _settings(summary: dict) -> str:
    """The non-default choices that change results; runs are only averaged within equal settings."""
    parts = [f"{k}={v}" for k, v in sorted(summary.get("overrides", {}).items())]
    parts += [f"opt.{k}={v}" for k, v in sorted(summary.get("opt_hparams", {}).items())]
    return ", ".join(parts) or "defaults"


def _problem(summary: dict) -> str:
    """The task settings that define the problem (quantization format, anomaly severity, budget...)."""
    parts = [
        f"{k}={v}" for k, v in sorted(summary.get("overrides", {}).items()) if k not in RECIPE_KEYS + OPERATIONAL_KEYS
    ]
    return ", ".join(parts) or "defaults"


def _problem_key(summary: dict, spec: dict) -> str:
    """Runs share a problem when their effective task configs agree (an override that restates the
    scale's default is the same problem as no override); without a spec.json, the overrides decide."""
    config = spec.get("task_config")
    if config is None:
        return _problem(summary)
    return json.dumps({k: v for k, v in config.items() if k not in RECIPE_KEYS + OPERATIONAL_KEYS}, sort_keys=True)


def _recipe(summary: dict) -> str:
    """What was changed on the optimizer's side: the learning rate and opt.* hyperparameters."""
    parts = [f"{k}={v}" for k, v in sorted(summary.get("overrides", {}).items()) if k in RECIPE_KEYS]
    parts += [f"opt.{k}={v}" for k, v in sorted(summary.get("opt_hparams", {}).items())]
    return ", ".join(parts) or "defaults"


class MalformedRun(ValueError):
    """A run folder whose files cannot be read as a run; the message names the file and says why."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_number(value: Any) -> bool:
    """A JSON number the tables can use: finite, and an int that fits int64 (JSON ints are unbounded)."""
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and -(2**63) < value < 2**63) or (isinstance(value, float) and math.isfinite(value))


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or MalformedRun (unreadable, empty, truncated, not an object)."""
    try:
        data = read_json(path)
    except OSError as err:  # missing, a folder, unreadable
        raise MalformedRun(path, err.strerror or type(err).__name__) from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        raise MalformedRun(path, f"not valid JSON (empty or truncated?): {err}") from None
    if not isinstance(data, dict):
        raise MalformedRun(path, f"a JSON {type(data).__name__}, not an object")
    return data


def _check_summary(path: Path, s: dict[str, Any]) -> None:
    """The fields the report reads must have the types it reads them as (a hand-edited or foreign file)."""
    for key in _SUMMARY_NAMES:
        if not isinstance(s.get(key), str) or not s[key]:
            raise MalformedRun(path, f"{key} is {_shown(s.get(key))}, not a name")
    if s["run_id"] != path.parent.name or s["task"] != path.parent.parent.name:
        raise MalformedRun(path, f"run {s['task']}/{s['run_id']} is not the folder it is in")
    if not isinstance(s.get("seed"), int) or isinstance(s["seed"], bool) or s["seed"] < 0:
        raise MalformedRun(path, f"seed is {_shown(s.get('seed'))}, not an int >= 0")
    if s.get("direction") not in ("min", "max"):
        raise MalformedRun(path, f"direction is {_shown(s.get('direction'))}, not min or max")
    for key in _SUMMARY_NUMBERS:
        if s.get(key) is not None and not _is_number(s[key]):
            raise MalformedRun(path, f"{key} is {_shown(s[key])}, not a finite number")
    for key in _SUMMARY_MAPPINGS:
        value = s.get(key)
        if value is not None and not isinstance(value, dict):
            raise MalformedRun(path, f"{key} is {_shown(value)}, not an object")
    for key in ("gss_spikes", "clipped_entries", "spike_events"):  # role -> count, averaged by reports/spikes.py
        if any(not _is_number(n) for n in (s.get(key) or {}).values()):
            raise MalformedRun(path, f"{key} holds {_shown(s[key])}, not counts")
    for key in ("reason", "device", "git_commit"):
        if s.get(key) is not None and not isinstance(s[key], str):
            raise MalformedRun(path, f"{key} is {_shown(s[key])}, not text")


def _check_lines(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, every line checked: a run killed mid-write or cut short leaves a partial last line.

    The reference reading (json, line by line). `_metric_table` comes here only when the column-wise
    parse fails or finds anything off, so a file is accepted or refused, with the same one-line reason,
    exactly as this reading decides; malformed files are rare, so its cost does not matter."""
    try:
        text = path.read_text()
    except OSError as err:
        raise MalformedRun(path, err.strerror or type(err).__name__) from None
    except ValueError as err:  # UnicodeDecodeError
        raise MalformedRun(path, f"not text: {err}") from None
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            m = json.loads(line)
        except (ValueError, RecursionError):
            raise MalformedRun(path, f"line {number} is not JSON (truncated?)") from None
        if not isinstance(m, dict) or not isinstance(m.get("split"), str) or not isinstance(m.get("name"), str):
            raise MalformedRun(path, f"line {number} is not a metric (split, name, step, value, wall)")
        for key in ("step", "value", "wall"):
            if m.get(key) is not None and not _is_number(m[key]):
                raise MalformedRun(path, f"line {number}: {key} is {_shown(m[key])}, not a finite number")
        rows.append(m)
    if text and not text.endswith("\n"):
        raise MalformedRun(path, "its last line is cut short (truncated)")
    return rows


def _parse_columns(data: bytes) -> pa.Table | None:
    """A non-empty metrics.jsonl parsed column-wise by pyarrow, or None where it is not plainly well-formed.

    pyarrow's JSON reader is laxer than json.loads line by line: it reads NaN and Infinity, two objects
    on one line, a `null` line (as a row of nulls; a file that begins with one crashes the process),
    bytes that are not UTF-8 in fields it skips, an int beyond int64 as a float, and a cut last line that
    happens to end an object. So it only sees files whose every line starts with `{` and ends with `}`
    and that end in a newline, and its table counts only with one row per line, a split and a name on
    every row, and numbers json.loads would accept (finite; ints within int64). Anything else: None, and
    the caller reads the file line by line (`_check_lines`)."""
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            return None
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == _LF)
    if raw[0] != _OPEN or raw[-1] != _LF or (raw[ends - 1] != _CLOSE).any() or (raw[ends[:-1] + 1] != _OPEN).any():
        return None
    try:
        table = pa_json.read_json(
            pa.BufferReader(data),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=max(len(data), 1 << 20)),
            parse_options=_JSON_PARSE,
        )
    except (pa.ArrowException, ValueError):  # not JSON, a field of another type, a float step...
        return None
    if table.num_rows != len(ends) or table["split"].null_count or table["name"].null_count:
        return None
    step = table["step"]
    if step.null_count < len(step) and pc.min(step).as_py() == -(2**63):  # json.loads' int64 is open
        return None
    for key in ("value", "wall"):
        col = table[key]
        if col.null_count < len(col) and (
            not pc.all(pc.is_finite(col)).as_py() or pc.max(pc.abs(col)).as_py() >= 2.0**63
        ):  # at or past 2**63 it may have been an int json.loads' reading refuses: that reading decides
            return None
    return table


def _metric_table(path: Path) -> pa.Table:
    """metrics.jsonl as a table (split, name, step, value, wall), or MalformedRun naming the line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MalformedRun(path, err.strerror or type(err).__name__) from None
    table = _parse_columns(data) if data else _METRIC_SCHEMA.empty_table()
    if table is not None:
        return table
    rows = _check_lines(path)  # refuses the file with the reason, or reads what the column-wise parse could not

    def floats(key: str) -> pa.Array:
        return pa.array([None if m.get(key) is None else float(m[key]) for m in rows], pa.float64())

    return pa.table(
        {
            "split": pa.array([m["split"] for m in rows], pa.string()),
            "name": pa.array([m["name"] for m in rows], pa.string()),
            "step": floats("step"),
            "value": floats("value"),
            "wall": floats("wall"),
        }
    )


def _kind(split: str, name: str) -> str | None:
    """How load_runs keeps a run's (split, name) series: "curve" (cut to bin means past CURVE_POINTS),
    "trace" (cut to bin extremes and event steps), "all", or None (not read by the report: dropped)."""
    if split not in STEP_SPLITS or (split, name) in CURVES:
        return "curve"
    if name in TRACES:
        return "trace"
    if name in EVENT_NAMES or name.startswith(EVENT_PREFIXES):
        return "all"
    return None


def _bins(steps: np.ndarray, n: int) -> np.ndarray:
    """Each step's bin among `n` equal-width step bins spanning the steps."""
    lo, hi = steps.min(), steps.max()
    if hi <= lo:
        return np.zeros(len(steps), dtype=np.int64)
    return np.minimum(((steps - lo) / (hi - lo) * n).astype(np.int64), n - 1)


def _nanmean_by(bins: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    """Mean of `x` per bin over its non-NaN entries (NaN where a bin has none)."""
    finite = ~np.isnan(x)
    total = np.bincount(bins, weights=np.where(finite, x, 0.0), minlength=n)
    count = np.bincount(bins, weights=finite, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def _cut_curve(rows: np.ndarray, cols: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """(position, step, value, wall) of a long curve in at most CURVE_POINTS points: its first and last
    step exactly, and in between the means over CURVE_POINTS - 2 equal step bins (the figures average
    step bins too: reports/plots.py). A point without a step is on no step axis and is dropped."""
    step, value, wall = (c[rows] for c in cols)
    keep = ~np.isnan(step)
    rows, step, value, wall = rows[keep], step[keep], value[keep], wall[keep]
    if len(rows) <= CURVE_POINTS:
        return rows.astype(np.float64), step, value, wall
    ends = np.unique([np.argmin(step), np.argmax(step)])
    inner = np.ones(len(rows), dtype=bool)
    inner[ends] = False
    n = CURVE_POINTS - 2
    bins = _bins(step[inner], n)
    filled = np.bincount(bins, minlength=n) > 0
    means = [_nanmean_by(bins, x[inner], n)[filled] for x in (rows.astype(np.float64), step, value, wall)]
    return tuple(np.concatenate([x[ends], m]) for x, m in zip((rows.astype(np.float64), step, value, wall), means))


def _cut_trace(rows: np.ndarray, step: np.ndarray, value: np.ndarray, events: np.ndarray) -> np.ndarray:
    """The rows of a long trace to draw it in at most CURVE_POINTS points (plus event steps): per step bin
    its lowest and highest value, so a spike stays a spike; its first and last step; and every row at an
    event's step (reports/spikes.py dots events on the trace)."""
    s, v = step[rows], value[rows]
    rows, s, v = rows[~np.isnan(s)], s[~np.isnan(s)], v[~np.isnan(s)]
    if len(rows) <= CURVE_POINTS:
        return rows
    bins = _bins(s, (CURVE_POINTS - 2) // 2)
    keep = np.isin(s, events)
    keep[[np.argmin(s), np.argmax(s)]] = True
    for order in (
        np.lexsort((np.where(np.isnan(v), np.inf, v), bins)),
        np.lexsort((-np.where(np.isnan(v), -np.inf, v), bins)),
    ):
        first = np.ones(len(order), dtype=bool)
        first[1:] = bins[order][1:] != bins[order][:-1]
        keep[order[first]] = True
    return rows[keep]


def _step_table(path: Path) -> pa.Table:
    """steps.parquet (suite/step_log.py: the instruments' per-step rows) in metrics.jsonl's columns, only
    the names the report keeps; or MalformedRun. Parquet is data: reading it never runs code."""
    try:
        table = pq.read_table(path, columns=["step", "name", "value"])
        name = pc.cast(table["name"], pa.string())
        keep = pc.is_in(name, pa.array(sorted(TRACES | EVENT_NAMES)))
        for prefix in EVENT_PREFIXES:
            keep = pc.or_(keep, pc.starts_with(name, prefix))
        table = pa.table(
            {
                "split": pa.array([STEP_SPLIT] * table.num_rows, pa.string()),
                "name": name,
                "step": pc.cast(table["step"], pa.float64()),
                "value": pc.cast(table["value"], pa.float64()),
                "wall": pa.nulls(table.num_rows, pa.float64()),
            }
        ).filter(keep)
    except (OSError, pa.ArrowException, KeyError) as err:
        raise MalformedRun(path, " ".join(f"{type(err).__name__}: {err}".split())[:200]) from None
    if table.num_rows and not np.isfinite(table["step"].to_numpy(zero_copy_only=False)).all():
        raise MalformedRun(path, "a step is not a finite number")
    return table


def _keep_metrics(table: pa.Table) -> tuple[list[tuple[str, str]], np.ndarray, tuple[np.ndarray, ...]]:
    """(series, each kept row's series index, (step, value, wall)): what the report uses of one run's
    metrics, in file order and bounded (CURVE_POINTS and the notes above it)."""
    empty = np.empty(0)
    if table.num_rows == 0:
        return [], np.empty(0, dtype=np.int64), (empty, empty, empty)
    split = table["split"].combine_chunks().dictionary_encode()
    name = table["name"].combine_chunks().dictionary_encode()
    splits, names = split.dictionary.to_pylist(), name.dictionary.to_pylist()
    pair = split.indices.to_numpy().astype(np.int64) * len(names) + name.indices.to_numpy()
    cols = tuple(pc.cast(table[k], pa.float64()).to_numpy() for k in ("step", "value", "wall"))
    codes, inverse = np.unique(pair, return_inverse=True)
    series = [(splits[c // len(names)], names[c % len(names)]) for c in codes]
    kinds = [_kind(s, n) for s, n in series]
    events = np.unique(cols[0][np.isin(inverse, [i for i, k in enumerate(kinds) if k == "all"])])
    kept: list[tuple[str, str]] = []
    parts: list[tuple[np.ndarray, ...]] = []
    for i, (key, kind) in enumerate(zip(series, kinds)):
        if kind is None:
            continue
        rows = np.flatnonzero(inverse == i)
        if kind == "curve" and len(rows) > CURVE_POINTS:
            part = _cut_curve(rows, cols)
        else:
            if kind == "trace" and len(rows) > CURVE_POINTS:
                rows = _cut_trace(rows, cols[0], cols[1], events)
            part = (rows.astype(np.float64), *(c[rows] for c in cols))
        parts.append((np.full(len(part[0]), len(kept), dtype=np.int64), *part))
        kept.append(key)
    if not parts:
        return [], np.empty(0, dtype=np.int64), (empty, empty, empty)
    index, position, step, value, wall = (np.concatenate(x) for x in zip(*parts))
    order = np.argsort(position, kind="stable")  # file order (a bin mean sits at its rows' mean position)
    return kept, index[order], (step[order], value[order], wall[order])


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], pa.Table, datetime]:
    """(summary, spec, metrics table, finished) of one complete run folder, every file checked."""
    s = _read_object(run_dir / SUMMARY)
    _check_summary(run_dir / SUMMARY, s)
    spec: dict[str, Any] = {}
    if (run_dir / SPEC).exists() or (run_dir / SPEC).is_symlink():
        spec = _read_object(run_dir / SPEC)
        for key in ("task_config", "optimizer_config"):
            if spec.get(key) is not None and not isinstance(spec[key], dict):
                raise MalformedRun(run_dir / SPEC, f"{key} is {_shown(spec[key])}, not an object")
    metrics = _metric_table(run_dir / METRICS)
    if (run_dir / STEPS_FILE).exists():
        steps = _step_table(run_dir / STEPS_FILE)
        metrics = pa.concat_tables([metrics, steps.cast(metrics.schema)])
    try:
        finished = datetime.fromtimestamp((run_dir / SUMMARY).stat().st_mtime, UTC)
    except OSError as err:
        raise MalformedRun(run_dir / SUMMARY, err.strerror or type(err).__name__) from None
    return s, spec, metrics, finished


def _run_row(s: dict[str, Any], spec: dict[str, Any], finished: datetime) -> dict[str, Any]:
    """The runs table's row of one run."""
    return {
        "run_id": s["run_id"],
        "task": s["task"],
        "optimizer": s["optimizer"],
        "seed": s["seed"],
        "scale": s["scale"],
        "device": s.get("device", "cpu"),
        "status": s["status"],
        "settings": _settings(s),
        "git_commit": (s.get("git") or {}).get("commit") or s.get("git_commit"),
        "code_id": (s.get("code") or {}).get("id"),
        "primary_metric": s["primary_metric"],
        "direction": s["direction"],
        "value": s.get("value"),
        "diverged_step": s.get("diverged_step"),
        "reason": s.get("reason"),
        "steps": s.get("steps"),
        "wall_time_s": s.get("wall_time_s"),
        "optimizer_state_bytes": s.get("optimizer_state_bytes"),
        "opt_hparams": json.dumps(s.get("opt_hparams", {}), sort_keys=True),
        "overrides": json.dumps(s.get("overrides", {}), sort_keys=True),
        "versions": json.dumps(s.get("versions", {}), sort_keys=True),
        "hardware": json.dumps(s.get("hardware", {}), sort_keys=True),
        "optimizer_config": json.dumps(spec.get("optimizer_config", {}), sort_keys=True),
        "task_config": json.dumps(spec.get("task_config", {}), sort_keys=True),
        "problem": _problem(s),
        "problem_key": _problem_key(s, spec),
        "recipe": _recipe(s),
        "grad_clip": s.get("grad_clip"),
        "tokens_per_s": s.get("tokens_per_s"),
        "finished_at": finished.isoformat(timespec="seconds"),
        **{
            k: (json.dumps(s[k], sort_keys=True) if s.get(k) is not None else None)
            for k in ("gss_spikes", "clipped_entries", "spike_events")
        },
        "robustness": s.get("robustness"),
        "recovery_steps_mean": s.get("recovery_steps_mean"),
    }


class _LongParts:
    """The long table's columns, gathered run by run as compact arrays and assembled once."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], int] = {}  # (split, name) -> index, shared by all runs
        self.index: list[np.ndarray] = []
        self.cols: list[tuple[np.ndarray, ...]] = []
        self.sizes: list[int] = []

    def add(self, keys: list[tuple[str, str]], index: np.ndarray, cols: tuple[np.ndarray, ...]) -> None:
        codes = np.array([self.series.setdefault(k, len(self.series)) for k in keys], dtype=np.int32)
        step, value, wall = cols
        self.index.append(codes[index])
        self.cols.append((step, value, wall.astype(np.float32)))
        self.sizes.append(len(index))

    def frame(self, runs: list[dict[str, Any]]) -> pd.DataFrame:
        if not runs:
            return pd.DataFrame(columns=LONG_COLUMNS)
        where = np.repeat(np.arange(len(runs)), self.sizes)
        index = np.concatenate(self.index)
        keys = list(self.series)
        columns: dict[str, Any] = {k: _categorical([r[k] for r in runs], where) for k in ("task", "run_id")}
        for part, labels in (("split", [s for s, _ in keys]), ("name", [n for _, n in keys])):
            categories = pd.Index(sorted(set(labels)))
            codes = categories.get_indexer(pd.Index(labels))
            columns[part] = pd.Categorical.from_codes(codes[index], categories=categories)
        for k, parts in zip(("step", "value", "wall"), zip(*self.cols)):
            columns[k] = np.concatenate(parts)
        return pd.DataFrame(columns)


def _categorical(values: Any, where: np.ndarray) -> pd.Categorical:
    """`values[where]` as a categorical, built from the (few) values rather than from every row;
    where = -1 gives a missing value."""
    cat = pd.Categorical(values)
    return pd.Categorical.from_codes(np.append(cat.codes, -1)[where], categories=cat.categories)


def _number(x: Any) -> float:
    return math.nan if x is None else float(x)


def load_runs(store: RunStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs: one row per complete run, long: one row per run x split x metric x step that the report uses).

    `long` has the columns LONG_COLUMNS: (task, run_id) name the run (`with_run_columns` adds the runs'
    columns), split and name are categoricals, step and value float64, wall float32. It holds the series
    the report reads, bounded per run (CURVE_POINTS), and one "final" row per run: the primary metric
    from summary.json at its last step.

    A run folder that cannot be read as a run (an empty, truncated or hand-edited summary.json, a
    summary.json that is a folder, a value that is not a number, a truncated or missing metrics.jsonl,
    a truncated spec.json) is skipped with one warning line on stderr naming the file and why: one bad
    folder must neither abort the report nor hide the good runs. Their number is in
    `runs.attrs[MALFORMED_ATTR]`, which the leaderboard's header reports.
    """
    runs: list[dict[str, Any]] = []
    long = _LongParts()
    malformed = 0
    for run_dir in store.complete_runs():
        try:
            s, spec, metrics, finished = _read_run(run_dir)
        except MalformedRun as err:
            malformed += 1
            print(f"spambench: warning: {' '.join(str(err).splitlines())}; run folder skipped", file=sys.stderr)
            continue
        runs.append(_run_row(s, spec, finished))
        keys, index, (step, value, wall) = _keep_metrics(metrics)
        del metrics  # the whole file's table: only the kept rows outlive this run
        final = [_number(s.get(k)) for k in ("steps", "value", "wall_time_s")]
        long.add(
            [*keys, ("final", s["primary_metric"])],
            np.append(index, len(keys)),
            tuple(np.append(x, f) for x, f in zip((step, value, wall), final)),
        )
    runs_df = label_problems(pd.DataFrame(runs)) if runs else empty_runs()
    runs_df.attrs[MALFORMED_ATTR] = malformed
    return runs_df, long.frame(runs)


def empty_runs() -> pd.DataFrame:
    """A runs table with no run: it still has the columns that later steps group and filter by."""
    return pd.DataFrame(columns=[*RUN_COLUMNS, *_EMPTY_EXTRA_COLUMNS])


def label_problems(runs: pd.DataFrame) -> pd.DataFrame:
    """One label per problem (task, scale, problem_key): the shortest way its runs spell it. Runs of
    one problem read from different places (a store and a published snapshot) must share it too."""
    if not runs.empty:
        runs["problem"] = runs.groupby(["task", "scale", "problem_key"])["problem"].transform(
            lambda labels: min(labels, key=lambda t: (t != "defaults", len(t), t))
        )
    return runs


def with_run_columns(long: pd.DataFrame, runs: pd.DataFrame, columns: Sequence[str] = RUN_COLUMNS) -> pd.DataFrame:
    """`long` with `columns` of `runs` beside its own, matched on (task, run_id) (a left join): what
    results.parquet holds, and what a view asks for when it needs run fields next to metric rows.
    Text columns come as categoricals, built from the runs table rather than repeated per row."""
    where = np.full(len(long), -1, dtype=np.int64)
    if len(long) and len(runs):
        at = {key: i for i, key in enumerate(zip(runs["task"], runs["run_id"]))}
        task, run_id = pd.Categorical(long["task"]), pd.Categorical(long["run_id"])
        pair = (task.codes.astype(np.int64) + 1) * (len(run_id.categories) + 1) + run_id.codes + 1
        _, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
        tasks, run_ids = np.asarray(task)[first], np.asarray(run_id)[first]
        where = np.array([at.get(key, -1) for key in zip(tasks, run_ids)], dtype=np.int64)[inverse]
    out: dict[str, Any] = {}
    for c in columns:
        if c in long.columns:
            out[c] = long[c].to_numpy() if not isinstance(long[c].dtype, pd.CategoricalDtype) else long[c].array
        elif pd.api.types.is_numeric_dtype(runs[c]) and not pd.api.types.is_bool_dtype(runs[c]):
            values = runs[c].to_numpy()
            out[c] = np.append(values.astype(np.float64), math.nan)[where] if (where < 0).any() else values[where]
        else:
            out[c] = _categorical(runs[c].to_numpy(), where)
    for c in long.columns:
        if c not in out:
            out[c] = long[c].array
    return pd.DataFrame(out, index=long.index)


def current_code(runs: pd.DataFrame) -> pd.Series:
    """Whether each run was made by the code installed now (its fingerprint is the current one).

    A run whose task or optimizer is not installed here, or that predates fingerprints, is not current.
    """
    current: dict[tuple[str, str], str | None] = {}
    for task, opt in runs[["task", "optimizer"]].drop_duplicates().itertuples(index=False):
        try:
            current[(task, opt)] = code_of(task, opt)["id"]
        except ConfigError:
            current[(task, opt)] = None
    return pd.Series(
        [
            code is not None and code == current[(t, o)]
            for t, o, code in runs[["task", "optimizer", "code_id"]].itertuples(index=False)
        ],
        index=runs.index,
        dtype=bool,
    )


def mixed_code(runs: pd.DataFrame) -> list[str]:
    """'task/optimizer' pairs whose runs come from more than one code version."""
    if runs.empty:
        return []
    versions = runs.fillna({"code_id": "unversioned"}).groupby(["task", "optimizer"])["code_id"].nunique()
    return [f"{t}/{o}" for (t, o), n in versions.items() if n > 1]


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: an ISO date or datetime (UTC unless it says otherwise), or an age such as 7d or 12h."""
    now = now or datetime.now(UTC)
    age = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([dhm])\s*", str(text))
    if age:
        days = float(age.group(1)) / {"d": 1, "h": 24, "m": 1440}[age.group(2)]
        if days > MAX_AGE_DAYS:
            raise ConfigError("since", text, f"an age of at most {MAX_AGE_DAYS}d (100 years), or an ISO date")
        return now - timedelta(days=days)
    try:
        when = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise ConfigError(
            "since", text, "an ISO date or datetime (2025-06-01, 2025-06-01T12:00) or an age (7d, 12h, 30m)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in str(text).split(",") if n.strip()]


def select(
    runs: pd.DataFrame,
    long: pd.DataFrame,
    *,
    task: str | None = None,
    opt: str | None = None,
    scale: str | None = None,
    since: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the runs matching every given filter (comma-separated names; `since` compares the time the
    run's summary.json was written); `long` follows `runs`."""
    cutoff = parse_since(since) if since is not None else None  # a bad value fails even on an empty store
    if runs.empty:
        return runs, long
    keep = pd.Series(True, index=runs.index)
    for column, wanted in (("task", _names(task)), ("optimizer", _names(opt)), ("scale", _names(scale))):
        if wanted is not None:
            keep &= runs[column].isin(wanted)
    if cutoff is not None:
        keep &= pd.to_datetime(runs["finished_at"], utc=True) >= pd.Timestamp(cutoff)
    runs = runs[keep].reset_index(drop=True)
    kept = pd.MultiIndex.from_frame(runs[["task", "run_id"]])  # a run's identity in the store
    return runs, long[pd.MultiIndex.from_frame(long[["task", "run_id"]]).isin(kept)].reset_index(drop=True)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task x scale x settings x optimizer: mean, std and n of the primary metric over seeds."""
    if runs.empty:
        return pd.DataFrame()
    groups = runs.groupby(["task", "scale", "settings", "optimizer"], sort=True)
    out = groups.apply(
        lambda g: pd.Series(
            {
                "metric": g["primary_metric"].iloc[0],
                "direction": g["direction"].iloc[0],
                "mean": g.loc[g.status == "complete", "value"].astype(float).mean(),
                "std": g.loc[g.status == "complete", "value"].astype(float).std(ddof=1),
                "n_seeds": int(g["seed"].nunique()),
                "diverged": int((g.status == "diverged").sum()),
            }
        ),
        include_groups=False,
    )
    return out.reset_index()


def _fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "# spam-bench summary\n\nNo complete runs yet: try `make bench`.\n"
    lines = ["# spam-bench summary", ""]
    for (task, scale, settings), g in table.groupby(["task", "scale", "settings"], sort=True):
        metric, direction = g["metric"].iloc[0], g["direction"].iloc[0]
        better = "lower" if direction == "min" else "higher"
        lines += [
            f"## {md_text(task)} ({md_text(scale)}; {md_text(settings)})",
            "",
            f"| optimizer | {md_cell(metric)} mean ({better} is better) | std | seeds | diverged |",
            "|---|---|---|---|---|",
        ]
        for _, r in g.sort_values("mean", ascending=direction == "min").iterrows():
            row = f"| {md_cell(r.optimizer)} | {_fmt(r['mean'])} | {_fmt(r['std'])} | {r.n_seeds} | {r.diverged} |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)
