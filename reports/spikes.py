"""The report's gradient-spike section: per task and optimizer, spike counts per role, what SPAM
clipped, and the robustness to injected spikes. Shown only when runs carry spike telemetry."""
from __future__ import annotations

import json
import math

import pandas as pd

from reports.leaderboard import Block, Table, fmt

SPIKE_COLUMNS = ("gss_spikes", "clipped_entries", "spike_events")


def _role_means(values: pd.Series) -> str:
    """Mean count per role over the runs that recorded it, e.g. 'embedding 27.5, mlp 1'."""
    totals: dict[str, list[float]] = {}
    for blob in values.dropna():
        for role, n in json.loads(blob).items():
            totals.setdefault(role.split("/")[-1], []).append(float(n))
    if not totals:
        return "–"
    return ", ".join(f"{role} {fmt(sum(v) / len(v), 3)}" for role, v in sorted(totals.items()))


def _mean(values: pd.Series) -> str:
    clean = [float(v) for v in values.dropna() if math.isfinite(float(v))]
    return fmt(sum(clean) / len(clean), 3) if clean else "–"


def blocks(runs: pd.DataFrame) -> list[Block]:
    if runs.empty or all(runs.get(c, pd.Series(dtype=object)).dropna().empty for c in (*SPIKE_COLUMNS, "robustness")):
        return []
    out = [Block("h2", "Gradient spikes"),
           Block("p", "Per run, averaged over seeds: coordinates with a Gradient Spike Score > 50 (|g| over its "
                      "mean |g| through the run, on the sampled coordinates), role-level spike events (norm > "
                      "spike_ratio x running average), entries the optimizer itself clipped (SPAM), and, with "
                      "injected spikes, robustness = final metric with injection / without (1 = unharmed).")]
    for (task, scale), g in runs.groupby(["task", "scale"], sort=True):
        rows = []
        for (opt, problem), o in g.groupby(["optimizer", "problem"], sort=True):
            rows.append([opt, problem, _role_means(o["gss_spikes"]), _role_means(o["spike_events"]),
                         _role_means(o["clipped_entries"]), _mean(o["robustness"]), _mean(o["recovery_steps_mean"]),
                         str(len(o))])
        header = ["optimizer", "settings", "GSS > 50 per role", "events (role spikes, injected, loss spikes)", "clipped entries per role",
                  "robustness", "recovery steps", "runs"]
        out += [Block("h3", f"{task} · {scale}"), Block("table", table=Table(header, rows))]
    return out
