"""`spambench report`: every complete run into one long DataFrame, and a Markdown summary table.

The long format (one row per run x split x metric x step) is what every later view is cut from;
it is saved as parquet so notebooks can read the same numbers the tables show. `select` applies the
report's filters (--task/--opt/--scale/--since); the leaderboard (reports/leaderboard.py) builds on both.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta

import pandas as pd

from spam_bench.suite.errors import ConfigError
from spam_bench.suite.resolve import code_of
from spam_bench.suite.results import SPEC, SUMMARY, RunStore, read_json, read_metrics

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


def load_runs(store: RunStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs: one row per complete run, long: one row per run x split x metric x step)."""
    runs, rows = [], []
    for run_dir in store.complete_runs():
        s = read_json(run_dir / SUMMARY)
        spec = read_json(run_dir / SPEC) if (run_dir / SPEC).exists() else {}
        finished = datetime.fromtimestamp((run_dir / SUMMARY).stat().st_mtime, UTC)
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
        for m in read_metrics(run_dir):
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
    runs_df = pd.DataFrame(runs)
    if not runs_df.empty:  # one label per problem: the shortest way its runs spell it
        runs_df["problem"] = runs_df.groupby(["task", "scale", "problem_key"])["problem"].transform(
            lambda labels: min(labels, key=lambda t: (t != "defaults", len(t), t))
        )
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
    age = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhm])\s*", str(text))
    if age:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[age.group(2)]
        return now - timedelta(**{unit: float(age.group(1))})
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
            f"## {task} ({scale}; {settings})",
            "",
            f"| optimizer | {metric} mean ({better} is better) | std | seeds | diverged |",
            "|---|---|---|---|---|",
        ]
        for _, r in g.sort_values("mean", ascending=direction == "min").iterrows():
            lines.append(f"| {r.optimizer} | {_fmt(r['mean'])} | {_fmt(r['std'])} | {r.n_seeds} | {r.diverged} |")
        lines.append("")
    return "\n".join(lines)
