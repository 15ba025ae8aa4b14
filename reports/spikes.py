"""The report's gradient-spike section: per task and optimizer, spike counts per role, what SPAM
clipped, and the robustness to injected spikes. Shown only when runs carry spike telemetry."""

from __future__ import annotations

import json
import math

import pandas as pd

from spam_bench.reports.blocks import Block, Table, fmt

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


def blocks(runs: pd.DataFrame, images: set[str] = frozenset()) -> list[Block]:
    if runs.empty or all(runs.get(c, pd.Series(dtype=object)).dropna().empty for c in (*SPIKE_COLUMNS, "robustness")):
        return []
    out = [
        Block("h2", "Gradient spikes"),
        Block(
            "p",
            "Per run, averaged over seeds: coordinates with a Gradient Spike Score > 50 (|g| over its "
            "mean |g| through the run, on the sampled coordinates), role-level spike events (norm > "
            "spike_ratio x running average), entries the optimizer itself clipped (SPAM), and, with "
            "injected spikes, robustness = final metric with injection / without (1 = unharmed).",
        ),
    ]
    for (task, scale), g in runs.groupby(["task", "scale"], sort=True):
        rows = []
        for (opt, problem), o in g.groupby(["optimizer", "problem"], sort=True):
            rows.append(
                [
                    opt,
                    problem,
                    _role_means(o["gss_spikes"]),
                    _role_means(o["spike_events"]),
                    _role_means(o["clipped_entries"]),
                    _mean(o["robustness"]),
                    _mean(o["recovery_steps_mean"]),
                    str(len(o)),
                ]
            )
        header = [
            "optimizer",
            "settings",
            "GSS > 50 per role",
            "events (role spikes, injected, loss spikes)",
            "clipped entries per role",
            "robustness",
            "recovery steps",
            "runs",
        ]
        out += [Block("h3", f"{task} · {scale}"), Block("table", table=Table(header, rows))]
        if trace_name(task, scale) in images:
            out.append(Block("img", trace_name(task, scale)))
    return out


def trace_name(task: str, scale: str) -> str:
    return f"spikes-{task}-{scale}.png"


def plot_traces(long: pd.DataFrame, runs: pd.DataFrame, out) -> set[str]:
    """Per task and scale: each optimizer's total gradient norm through its lowest-seed run, with the
    steps where a role's norm spiked (dots) and where the optimizer reset its moments (dashed lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: set[str] = set()
    if long.empty:
        return written
    for (task, scale), g in runs.groupby(["task", "scale"], sort=True):
        first = g.sort_values("seed").groupby("optimizer", sort=True).head(1)
        traces = long[long.run_id.isin(first.run_id) & long.split.isin(["train", "optim"])]
        norms = traces[traces.name == "grad_norm"]
        if norms.empty:
            continue
        fig, ax = plt.subplots(figsize=(9, 3.2), dpi=90)
        for i, (opt, run_id) in enumerate(zip(first.optimizer, first.run_id)):
            color = f"C{i % 10}"
            n = norms[norms.run_id == run_id].sort_values("step")
            if n.empty:
                continue
            ax.plot(n.step, pd.to_numeric(n.value, errors="coerce"), lw=0.8, color=color, label=opt)
            run_traces = traces[traces.run_id == run_id]
            spike_steps = run_traces[run_traces.name.str.startswith("grad_spike/")].step.unique()
            marked = n[n.step.isin(spike_steps)]
            ax.scatter(marked.step, pd.to_numeric(marked.value, errors="coerce"), s=14, color=color, zorder=3)
            for step in run_traces[run_traces.name == "optimizer_reset"].step.unique():
                ax.axvline(step, color=color, ls="--", lw=0.8, alpha=0.7)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("gradient norm")
        ax.set_title(f"{task} · {scale}: gradient norm (dots: spike events; dashed: momentum resets)", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        fig.savefig(out / trace_name(task, scale))
        plt.close(fig)
        written.add(trace_name(task, scale))
    return written
