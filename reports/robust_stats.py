"""Robust aggregate statistics across tasks and seeds, as defined by rliable (Agarwal et al. 2021,
"Deep Reinforcement Learning at the Edge of the Statistical Precipice", arXiv 2108.13264), in numpy and
scipy (the `rliable` package pins `arch<8`, so it is not a dependency).

- IQM: the interquartile mean, the mean of the middle 50% of all runs' scores pooled over tasks
  (scipy's `trim_mean(x, 0.25)`), robust to a few outlying runs yet using more data than the median.
- Stratified bootstrap CI: resample runs with replacement *within each task* (the strata), recompute
  the statistic on the pooled resample, and take the percentile interval; this keeps every task in
  every resample, as rliable does.
- Performance profile (rliable's score distribution): for each threshold tau, the fraction of runs
  whose score exceeds tau, taken per task and averaged over tasks (so every task weighs the same;
  with equal runs per task it is rliable's pooled `mean(scores > tau)`), with a stratified bootstrap
  CI band: the same within-task resamples give every tau its percentile interval.
- Probability of improvement P(X > Y): per task, the Mann-Whitney U statistic over n x m pairs
  (ties count 1/2), averaged over tasks; its CI is a stratified bootstrap over both optimizers' runs.
- Seeds needed: for a paired comparison on shared seeds, the smallest n whose two-sided paired t-test
  at alpha 0.05 has 80% power to detect the observed mean difference given the observed spread of
  the differences (noncentral t, Cohen 1988).

Scores must be oriented so that higher is better (multiply a lower-is-better metric by -1, or use
normalised scores) before they reach this module. It knows nothing about stores or formatting.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as st

RESAMPLES = 2_000
SEED = 0
CONFIDENCE = 0.95


def iqm(scores: np.ndarray, axis: int | None = None) -> Any:
    """Interquartile mean of all scores (any shape: flattened), or one per row along `axis`."""
    values = np.asarray(scores, dtype=float)
    if axis is not None:
        return st.trim_mean(values, 0.25, axis=axis)
    flat = values.ravel()
    return float(st.trim_mean(flat, 0.25)) if flat.size else math.nan


def _reduces_along_axis(statistic: Callable[..., Any]) -> bool:
    """Whether `statistic` takes an `axis` keyword, as numpy's reductions and `iqm` do."""
    try:
        return "axis" in inspect.signature(statistic).parameters
    except (TypeError, ValueError):  # a builtin or ufunc without a readable signature
        return False


def _resampled(groups: list[np.ndarray], rng: np.random.Generator, resamples: int) -> list[np.ndarray]:
    """Per group, `resamples` rows of a with-replacement resample of it (resamples x len(group))."""
    return [g[rng.integers(0, len(g), (resamples, len(g)))] for g in groups]


def _interval(draws: np.ndarray, confidence: float) -> tuple[Any, Any]:
    """The percentile interval over the resamples (axis 0): two floats for one statistic, two arrays
    for a statistic per threshold (resamples x thresholds)."""
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha], axis=0)
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)


def stratified_bootstrap_ci(
    scores_by_task: Mapping[str, Sequence[float]],
    statistic: Callable[..., Any] = iqm,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """(point estimate, low, high) of `statistic` over the pooled runs, resampling within each task.

    All resamples are drawn at once. A statistic that takes an `axis` keyword (`iqm`, `np.mean`,
    `np.median`, ...) is then taken row-wise in one call: a publish computes dozens of these CIs, and a
    Python loop of 2,000 scipy calls each took most of its time. Any other callable is applied to one
    resample at a time.
    """
    groups = [np.asarray(v, dtype=float) for v in scores_by_task.values() if len(v)]
    if not groups:
        return math.nan, math.nan, math.nan
    point = statistic(np.concatenate(groups))
    pooled = np.concatenate(_resampled(groups, np.random.default_rng(seed), resamples), axis=1)
    if _reduces_along_axis(statistic):
        draws = np.asarray(statistic(pooled, axis=1), dtype=float)
    else:
        draws = np.array([statistic(row) for row in pooled], dtype=float)
    return (point, *_interval(draws, confidence))


def score_distribution(
    scores_by_task: Mapping[str, Sequence[float]],
    taus: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fraction of runs above each tau, its CI low, its CI high), one value per tau.

    The fraction is taken within each task and averaged over tasks; the band is a stratified bootstrap
    (runs resampled within each task), all resamples at once."""
    grid = np.asarray(taus, dtype=float)
    groups = [np.asarray(v, dtype=float) for v in scores_by_task.values() if len(v)]
    if not groups:
        empty = np.full(grid.shape, math.nan)
        return empty, empty.copy(), empty.copy()
    point = np.mean([(g[:, None] > grid).mean(axis=0) for g in groups], axis=0)
    draws = np.mean(
        [(r[:, :, None] > grid).mean(axis=1) for r in _resampled(groups, np.random.default_rng(seed), resamples)],
        axis=0,
    )  # resamples x taus
    return (point, *_interval(draws, confidence))


def _poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) with ties counting 1/2, for x (..., n) against y (..., m): one value per leading index."""
    greater = (x[..., :, None] > y[..., None, :]).sum(axis=(-2, -1))
    ties = (x[..., :, None] == y[..., None, :]).sum(axis=(-2, -1))
    return (greater + 0.5 * ties) / (x.shape[-1] * y.shape[-1])


def probability_of_improvement(
    x_by_task: Mapping[str, Sequence[float]],
    y_by_task: Mapping[str, Sequence[float]],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """(P(X > Y), low, high): averaged over the tasks both have runs on, stratified bootstrap CI."""
    tasks = [t for t in x_by_task if len(x_by_task[t]) and len(y_by_task.get(t, []))]
    if not tasks:
        return math.nan, math.nan, math.nan
    xs = [np.asarray(x_by_task[t], dtype=float) for t in tasks]
    ys = [np.asarray(y_by_task[t], dtype=float) for t in tasks]
    point = float(np.mean([_poi(x, y) for x, y in zip(xs, ys)]))
    rng = np.random.default_rng(seed)
    x_draws, y_draws = _resampled(xs, rng, resamples), _resampled(ys, rng, resamples)
    draws = np.mean([_poi(x, y) for x, y in zip(x_draws, y_draws)], axis=0)
    return (point, *_interval(draws, confidence))


def paired_t_power(n: int, effect: float, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test with n pairs at standardized effect d = mean / sd."""
    if n < 2:
        return 0.0
    df = n - 1
    crit = st.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    upper = float(st.nct.sf(crit, df, nc))
    # The far tail: scipy's noncentral t answers nan where it underflows (e.g. d = 4.8, n = 3); it is
    # then below 1e-13, so it counts as 0 rather than poisoning the power.
    lower = float(st.nct.cdf(-crit, df, nc))
    return upper + (0.0 if math.isnan(lower) else lower)


def seeds_needed(
    differences: Sequence[float], power: float = 0.8, alpha: float = 0.05, limit: int = 10_000
) -> int | None:
    """Smallest number of shared seeds that resolves the observed paired difference at `power`.

    None when the differences are all equal to zero (no effect to detect) or it would take more than
    `limit` seeds; with zero spread and a nonzero mean, 2 seeds suffice.
    """
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return None
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if mean == 0.0:
        return None
    if sd == 0.0:
        return 2
    effect = abs(mean) / sd

    # Power grows with n: double until it suffices, then bisect (a handful of noncentral-t calls, not
    # one per candidate n). A nan power (scipy, at df = 1) counts as not enough.
    def enough(n: int) -> bool:
        return paired_t_power(n, effect, alpha) >= power

    if not enough(limit):
        return None
    low, high = 1, 2  # not enough(low), enough(high) once the doubling stops
    while not enough(high):
        low, high = high, min(2 * high, limit)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high
