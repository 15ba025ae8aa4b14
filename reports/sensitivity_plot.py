"""The LR-sensitivity figure (reports/sensitivity.py): final metric against learning rate (log x), one
line per optimizer with its 95% CI band over seeds, and an x per diverged seed at the cap it counts as.
Colours are the report's (plots.palette), names are escaped for mathtext (plots.mathtext_safe)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spam_bench.reports.leaderboard import problem_label
from spam_bench.reports.plots import mathtext_safe, plt, save
from spam_bench.reports.sensitivity import Study


def figure(study: Study, colors: dict[str, str], out: Path) -> str:
    """Draw one problem's LR studies into `out`; returns the PNG's name (an SVG is written beside it)."""
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    values = []
    for i, curve in enumerate(study.curves):
        c = colors.get(curve.optimizer, "black")
        ax.plot(curve.lrs, curve.mean, "o-", color=c, lw=1.4, ms=4, label=mathtext_safe(curve.label))
        ok = np.isfinite(curve.ci_lo) & np.isfinite(curve.ci_hi)
        if ok.any():
            ax.fill_between(
                curve.lrs,
                np.where(ok, curve.ci_lo, curve.mean),
                np.where(ok, curve.ci_hi, curve.mean),
                color=c,
                alpha=0.2,
                lw=0,
            )
        # one x per diverged seed at the cap it counts as, side by side in log x (optimizers apart too)
        shift = 0.08 * (i - (len(study.curves) - 1) / 2)
        xs = [
            lr * 10 ** (shift + 0.025 * (k - (n - 1) / 2)) for lr, n in zip(curve.lrs, curve.diverged) for k in range(n)
        ]
        if xs:
            ax.scatter(xs, np.full(len(xs), study.cap), marker="x", color=c, s=50, lw=1.8, zorder=5)
        values += [*curve.mean, *curve.ci_lo[ok], *curve.ci_hi[ok]]
    values = [v for v in values if np.isfinite(v)]
    diverged = any(curve.diverged.sum() for curve in study.curves)
    ax.set_xscale("log")
    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")
    if values and not diverged and _far(study.cap, min(values), max(values), ax.get_yscale() == "log"):
        # no seed sits at the cap: drawing it would flatten every curve against its far-off line
        lo, hi = min(values), max(values)
        pad = 0.08 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(*((lo / 1.15, hi * 1.15) if ax.get_yscale() == "log" else (lo - pad, hi + pad)))
        ax.plot([], [], color="grey", lw=0.8, ls="--", label=f"cap {study.cap:.4g} (off the chart)")
    else:
        ax.axhline(study.cap, color="grey", lw=0.8, ls="--", label="cap")
    better = "lower" if study.direction == "min" else "higher"
    ax.set(xlabel="learning rate", ylabel=f"final {mathtext_safe(study.metric)} ({better} is better)")
    ax.set_title(
        f"{mathtext_safe(problem_label(study.task, study.scale, study.problem))}: final value vs lr, "
        "mean over seeds with 95% CI (x = diverged seed, counted at the cap)",
        fontsize=8,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, out, study.image)


def _far(cap: float, lo: float, hi: float, log: bool) -> bool:
    """Whether the cap lies more than the data's own span beyond the data (in log y: a factor of 3)."""
    if log:
        return cap > 3 * hi or cap < lo / 3
    span = hi - lo or abs(hi) or 1.0
    return cap > hi + span or cap < lo - span


def write_all(found: list[Study], colors: dict[str, str], out: Path) -> set[str]:
    return {figure(study, colors, out) for study in found}
