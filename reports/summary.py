"""`spambench report`: every complete run into one long DataFrame, and a Markdown summary table.

The long format (one row per run x split x metric x step) is what every later view is cut from;
it is saved as parquet so notebooks can read the same numbers the tables show. `select` applies the
report's filters (--task/--opt/--scale/--since); the leaderboard (reports/leaderboard.py) builds on both.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from spam_bench.reports.blocks import md_cell, md_text
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.resolve import code_of
from spam_bench.suite.results import METRICS, SPEC, SUMMARY, RunStore, read_json

# Every long row carries what is needed to tell runs apart without a join: the canonical
# hyperparameters (overrides, opt_hparams), the effective optimizer config, versions, commit, hardware.
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
_SUMMARY_NAMES = ("run_id", "task", "optimizer", "scale", "status", "primary_metric")
_SUMMARY_NUMBERS = (
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
# `--since` as an age: at most a century (a larger one overflowed datetime; no run is that old).
MAX_AGE_DAYS = 36_525


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


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, every line checked: a run killed mid-write or cut short leaves a partial last line."""
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


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], datetime]:
    """(summary, spec, metrics, finished) of one complete run folder, every file checked."""
    s = _read_object(run_dir / SUMMARY)
    _check_summary(run_dir / SUMMARY, s)
    spec: dict[str, Any] = {}
    if (run_dir / SPEC).exists() or (run_dir / SPEC).is_symlink():
        spec = _read_object(run_dir / SPEC)
        for key in ("task_config", "optimizer_config"):
            if spec.get(key) is not None and not isinstance(spec[key], dict):
                raise MalformedRun(run_dir / SPEC, f"{key} is {_shown(spec[key])}, not an object")
    metrics = _read_metrics(run_dir / METRICS)
    try:
        finished = datetime.fromtimestamp((run_dir / SUMMARY).stat().st_mtime, UTC)
    except OSError as err:
        raise MalformedRun(run_dir / SUMMARY, err.strerror or type(err).__name__) from None
    return s, spec, metrics, finished


def load_runs(store: RunStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs: one row per complete run, long: one row per run x split x metric x step).

    A run folder that cannot be read as a run (an empty, truncated or hand-edited summary.json, a
    summary.json that is a folder, a value that is not a number, a truncated or missing metrics.jsonl,
    a truncated spec.json) is skipped with one warning line on stderr naming the file and why: one bad
    folder must neither abort the report nor hide the good runs. Their number is in
    `runs.attrs[MALFORMED_ATTR]`, which the leaderboard's header reports.
    """
    runs, rows, malformed = [], [], 0
    for run_dir in store.complete_runs():
        try:
            s, spec, metrics, finished = _read_run(run_dir)
        except MalformedRun as err:
            malformed += 1
            print(f"spambench: warning: {' '.join(str(err).splitlines())}; run folder skipped", file=sys.stderr)
            continue
        run = {
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
        runs.append(run)
        base = {k: run[k] for k in RUN_COLUMNS}
        for m in metrics:
            rows.append(
                {
                    **base,
                    "split": m["split"],
                    "name": m["name"],
                    "step": m["step"],
                    "value": m["value"],
                    "wall": m["wall"],
                }
            )
        rows.append(
            {
                **base,
                "split": "final",
                "name": s["primary_metric"],
                "step": s.get("steps"),
                "value": s.get("value"),
                "wall": s.get("wall_time_s"),
            }
        )
    long_columns = [*RUN_COLUMNS, "split", "name", "step", "value", "wall"]
    # An empty store still has the columns that later steps group and filter by.
    runs_df = pd.DataFrame(runs) if runs else pd.DataFrame(columns=[*RUN_COLUMNS, *_EMPTY_EXTRA_COLUMNS])
    if not runs_df.empty:  # one label per problem: the shortest way its runs spell it
        runs_df["problem"] = runs_df.groupby(["task", "scale", "problem_key"])["problem"].transform(
            lambda labels: min(labels, key=lambda t: (t != "defaults", len(t), t))
        )
    runs_df.attrs[MALFORMED_ATTR] = malformed
    return runs_df, pd.DataFrame(rows, columns=long_columns)


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
