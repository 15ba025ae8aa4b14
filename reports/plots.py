"""The leaderboard's figures (matplotlib, Agg): curves with confidence bands per problem, final-metric
distributions per optimizer, and the performance profile. Never shows a window; writes only into the
folder it is given and returns the file names it wrote (the PNGs, which the HTML page embeds); each
figure is also written as an SVG beside its PNG, for papers and slides.

Names come from users (a registered optimizer may be called `my$opt`), and matplotlib reads text
between two `$` as mathtext: every name is escaped before it reaches a label (`mathtext_safe`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from spam_bench.reports import robust_section, stats
from spam_bench.reports.leaderboard import Across, problem_label, problem_slug, profile_image
from spam_bench.reports.summary import with_run_columns

MAX_POINTS = 200  # curves are averaged into at most this many step bins before banding: readable, fast
DPI = 90


def palette(optimizers: list[str]) -> dict[str, str]:
    """One colour per optimizer for every figure of a report, so a colour means the same thing throughout."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {o: cycle[i % len(cycle)] for i, o in enumerate(sorted(optimizers))}


def mathtext_safe(text: object) -> str:
    """`text` shown literally: matplotlib parses text between two unescaped `$` as mathtext (which
    fails on most names), and renders an escaped `\\$` as a plain dollar sign
    (https://matplotlib.org/stable/users/explain/text/mathtext.html)."""
    return str(text).replace("$", r"\$")


def _entry_label(optimizer: str, recipe: str) -> str:
    return mathtext_safe(optimizer if recipe == "defaults" else f"{optimizer} ({recipe})")


def _problem_title(e: pd.Series) -> str:
    return mathtext_safe(problem_label(e["task"], e["scale"], e["problem"]))


def save(fig: plt.Figure, out: Path, name: str) -> str:
    """Write `name` (a .png, what the HTML embeds) and the same figure as .svg beside it; returns `name`."""
    fig.savefig(out / name, dpi=DPI)
    fig.savefig((out / name).with_suffix(".svg"))
    plt.close(fig)
    return name


def _binned(curves: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(steps, seeds x bins) with steps grouped into at most MAX_POINTS bins (mean within a bin)."""
    steps = curves.index.to_numpy(dtype=float)
    if len(steps) > MAX_POINTS:
        edges = np.linspace(steps.min(), steps.max(), MAX_POINTS + 1)
        bins = np.clip(np.digitize(steps, edges) - 1, 0, MAX_POINTS - 1)
        curves = curves.groupby(bins).mean()
        steps = pd.Series(steps).groupby(bins).mean().to_numpy()
    return steps, curves.to_numpy(dtype=float).T


def _curve_panels(long: pd.DataFrame, metric: str) -> list[tuple[str, str, str]]:
    """(split, name, title): the training loss and the logged curve of the primary metric, if it has >1 point."""
    panels = []
    if ((long.split == "train") & (long.name == "loss")).any():
        panels.append(("train", "loss", "training loss"))
    for (split, name), g in long[long.split.isin(set(long.split) - {"train", "final"})].groupby(["split", "name"]):
        if f"{split}_{name}" == metric and g["step"].nunique() > 1:
            panels.append((split, name, f"{metric} (during training)"))
    return panels


def curves(long: pd.DataFrame, entries: pd.DataFrame, colors: dict[str, str], out: Path) -> str | None:
    """One figure per problem: mean curve per entry over its complete seeds, with a 95% bootstrap band.

    Diverged runs are left out here as in the tables (a curve that stops would bend the mean)."""
    e0 = entries.iloc[0]
    long = long[long.status == "complete"]
    panels = _curve_panels(long, e0["metric"])
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 3.6), squeeze=False)
    for ax, (split, name, title) in zip(axes[0], panels):
        sel = long[(long.split == split) & (long.name == name)]
        positive = True
        for (optimizer, recipe), g in sel.groupby(["optimizer", "recipe"], sort=True):
            table = g.pivot_table(index="step", columns="run_id", values="value", aggfunc="mean").sort_index()
            steps, ys = _binned(table)
            with warnings.catch_warnings():  # a bin where no seed logged is NaN, and stays a gap
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(ys, axis=0)
            lo, hi = stats.bootstrap_band(ys) if ys.shape[0] > 1 else (mean, mean)
            c = colors[optimizer]
            ax.plot(steps, mean, color=c, lw=1.4, label=f"{_entry_label(optimizer, recipe)} (n={ys.shape[0]})")
            ax.fill_between(steps, lo, hi, color=c, alpha=0.2, lw=0)
            positive &= bool(np.nanmin(ys) > 0) if np.isfinite(ys).any() else True
        vals = sel["value"].astype(float)
        vals = vals[np.isfinite(vals)]
        if positive and len(vals) and vals.max() / vals.min() > 10:
            ax.set_yscale("log")
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{_problem_title(e0)}: mean over complete seeds, 95% bootstrap band",
        fontsize=10,
    )
    fig.tight_layout()
    return save(fig, out, f"curves-{problem_slug(e0['task'], e0['scale'], e0['problem'])}.png")


def finals(entries: pd.DataFrame, colors: dict[str, str], out: Path) -> str:
    """Per entry: each seed's final value (dots), mean and 95% CI (bar); diverged seeds as red x on top."""
    e0 = entries.iloc[0]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 1.1 * len(entries)), 3.6))
    finite = [v for o in entries["outcomes"] for v in o if np.isfinite(v)]
    top = (max(finite) if e0["direction"] == "min" else min(finite)) if finite else 1.0
    for i, (_, e) in enumerate(entries.iterrows()):
        vals = np.array(e["outcomes"], float)
        ok = vals[np.isfinite(vals)]
        jitter = np.linspace(-0.15, 0.15, len(ok)) if len(ok) > 1 else np.zeros(len(ok))
        ax.scatter(i + jitter, ok, color=colors[e["optimizer"]], s=18, zorder=3)
        if len(ok):
            err = None if np.isnan(e["ci_lo"]) else [[e["mean"] - e["ci_lo"]], [e["ci_hi"] - e["mean"]]]
            ax.errorbar([i + 0.3], [e["mean"]], yerr=err, fmt="D", color="black", ms=4, capsize=3, zorder=4)
        for k in range(int(e["diverged"])):
            ax.scatter([i + 0.1 * k], [top], marker="x", color="red", s=30, zorder=5)
    ax.set_xticks(
        range(len(entries)),
        [_entry_label(o, r) for o, r in zip(entries["optimizer"], entries["recipe"])],
        rotation=20 if len(entries) > 4 else 0,
        fontsize=8,
    )
    better = "lower" if e0["direction"] == "min" else "higher"
    ax.set(
        ylabel=f"{mathtext_safe(e0['metric'])} ({better} is better)",
        title=f"{_problem_title(e0)}: final values (x = diverged)",
    )
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save(fig, out, f"final-{problem_slug(e0['task'], e0['scale'], e0['problem'])}.png")


def profile(a: Across, colors: dict[str, str], out: Path) -> str:
    """The performance profile of one protocol's across-task view (its ranked optimizers)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for o in (o for o in a.mean_rank.index if o in a.profile):
        ax.step(
            stats.TAU_GRID,
            a.profile[o],
            where="post",
            color=colors[o],
            lw=1.6,
            label=f"{mathtext_safe(o)} (score {stats.profile_score(a.profile[o]):.2f})",
        )
    ax.set(
        xlabel="τ (ratio to the best entry on a problem)",
        ylabel="fraction of problems",
        ylim=(-0.03, 1.03),
        title=f"Performance profile over {len(a.problems)} problems ({a.protocol})",
    )
    ax.grid(alpha=0.3)
    if a.profile:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save(fig, out, profile_image(a.protocol))


def score_distribution(runs: pd.DataFrame, colors: dict[str, str], out: Path) -> str | None:
    """The robust section's performance profile: per optimizer, the fraction of runs scoring above τ
    against AdamW, with its stratified bootstrap band (reports/robust_section.py); None without one."""
    curves = robust_section.profiles(runs)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 3.8))
    taus = robust_section.PROFILE_TAUS
    for o, (point, low, high) in curves.items():
        ax.plot(taus, point, color=colors[o], lw=1.6, label=mathtext_safe(o))
        ax.fill_between(taus, low, high, color=colors[o], alpha=0.15, lw=0)
    ax.set(
        xlabel="τ (score: improvement over AdamW's mean on the problem)",
        ylabel="fraction of runs with score > τ",
        ylim=(-0.03, 1.03),
        title="Score distribution, defaults (95% stratified bootstrap bands)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the curves fill the axes
    fig.tight_layout()
    return save(fig, out, robust_section.SCORE_PROFILE_IMAGE)


def write_all(
    long: pd.DataFrame, runs: pd.DataFrame, table: pd.DataFrame, views: dict[str, Across], out: Path
) -> set[str]:
    """Every figure of the report into `out` (a performance profile per protocol in `views`); returns the
    names written."""
    # `curves` draws the training loss and logged curves of evaluation splits, never the telemetry
    long = long[(long.split != "optim") & ((long.split != "train") | (long.name == "loss"))].drop(columns="wall")
    long = with_run_columns(long, runs, ["scale", "optimizer", "status", "recipe", "problem"])
    long = long.assign(value=pd.to_numeric(long["value"], errors="coerce"))  # null (non-finite) -> NaN
    colors = palette(list(runs["optimizer"].unique()))
    written = {profile(a, colors, out) for a in views.values()}
    written |= {name for name in [score_distribution(runs, colors, out)] if name}
    for (task, scale, problem), g in table.groupby(["task", "scale", "problem"], sort=True):
        sel = long[(long.task == task) & (long.scale == scale) & (long.problem == problem)]
        # plain text columns: grouping by a categorical would add every unobserved combination
        sel = sel.astype({c: object for c in sel.columns if isinstance(sel[c].dtype, pd.CategoricalDtype)})
        written |= {n for n in (curves(sel, g, colors, out), finals(g, colors, out)) if n}
    return written
