"""`spambench report`: every complete run into one long DataFrame, and a Markdown summary table.

The long format (one row per run x split x metric x step) is what every later view is cut from;
it is saved as parquet so notebooks can read the same numbers the tables show.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from suite.results import SUMMARY, RunStore, read_json, read_metrics

RUN_COLUMNS = ["run_id", "task", "optimizer", "seed", "scale", "device", "status", "settings", "git_commit"]


def _settings(summary: dict) -> str:
    """The non-default choices that change results; runs are only averaged within equal settings."""
    parts = [f"{k}={v}" for k, v in sorted(summary.get("overrides", {}).items())]
    parts += [f"opt.{k}={v}" for k, v in sorted(summary.get("opt_hparams", {}).items())]
    return ", ".join(parts) or "defaults"


def load_runs(store: RunStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs: one row per complete run, long: one row per run x split x metric x step)."""
    runs, rows = [], []
    for run_dir in store.complete_runs():
        s = read_json(run_dir / SUMMARY)
        run = {
            "run_id": s["run_id"], "task": s["task"], "optimizer": s["optimizer"], "seed": s["seed"],
            "scale": s["scale"], "device": s.get("device", "cpu"), "status": s["status"],
            "settings": _settings(s), "git_commit": s.get("git_commit"),
            "primary_metric": s["primary_metric"], "direction": s["direction"],
            "value": s.get("value"), "diverged_step": s.get("diverged_step"),
            "steps": s.get("steps"), "wall_time_s": s.get("wall_time_s"),
            "optimizer_state_bytes": s.get("optimizer_state_bytes"),
            "opt_hparams": json.dumps(s.get("opt_hparams", {}), sort_keys=True),
            "overrides": json.dumps(s.get("overrides", {}), sort_keys=True),
            "versions": json.dumps(s.get("versions", {}), sort_keys=True),
            "hardware": json.dumps(s.get("hardware", {}), sort_keys=True),
        }
        runs.append(run)
        base = {k: run[k] for k in RUN_COLUMNS}
        for m in read_metrics(run_dir):
            rows.append({**base, "split": m["split"], "name": m["name"], "step": m["step"],
                         "value": m["value"], "wall": m["wall"]})
        rows.append({**base, "split": "final", "name": s["primary_metric"], "step": s.get("steps"),
                     "value": s.get("value"), "wall": s.get("wall_time_s")})
    long_columns = RUN_COLUMNS + ["split", "name", "step", "value", "wall"]
    return pd.DataFrame(runs), pd.DataFrame(rows, columns=long_columns)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task x scale x settings x optimizer: mean, std and n of the primary metric over seeds."""
    if runs.empty:
        return pd.DataFrame()
    groups = runs.groupby(["task", "scale", "settings", "optimizer"], sort=True)
    out = groups.apply(lambda g: pd.Series({
        "metric": g["primary_metric"].iloc[0],
        "direction": g["direction"].iloc[0],
        "mean": g.loc[g.status == "complete", "value"].astype(float).mean(),
        "std": g.loc[g.status == "complete", "value"].astype(float).std(ddof=1),
        "n_seeds": int(g["seed"].nunique()),
        "diverged": int((g.status == "diverged").sum()),
    }), include_groups=False)
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
        lines += [f"## {task} ({scale}; {settings})", "",
                  f"| optimizer | {metric} mean ({better} is better) | std | seeds | diverged |",
                  "|---|---|---|---|---|"]
        for _, r in g.sort_values("mean", ascending=direction == "min").iterrows():
            lines.append(f"| {r.optimizer} | {_fmt(r['mean'])} | {_fmt(r['std'])} | {r.n_seeds} | {r.diverged} |")
        lines.append("")
    return "\n".join(lines)


def write_report(out_root: Path) -> tuple[str, Path]:
    """Write results.parquet and summary.md under <out>/report; returns (markdown, report folder)."""
    runs, long = load_runs(RunStore(out_root))
    report_dir = out_root / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    long.to_parquet(report_dir / "results.parquet", index=False)
    markdown = to_markdown(summary_table(runs))
    (report_dir / "summary.md").write_text(markdown)
    return markdown, report_dir
