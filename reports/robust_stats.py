"""Robust aggregate statistics across tasks and seeds, as defined by rliable (Agarwal et al. 2021,
"Deep Reinforcement Learning at the Edge of the Statistical Precipice", arXiv 2108.13264), in numpy and
scipy (the `rliable` package pins `arch<8`, so it is not a dependency).

- IQM: the interquartile mean, the mean of the middle 50% of all runs' scores pooled over tasks
  (scipy's `trim_mean(x, 0.25)`), robust to a few outlying runs yet using more data than the median.
- Stratified bootstrap CI: resample runs with replacement *within each task* (the strata), recompute
  the statistic on the pooled resample, and take the percentile interval; this keeps every task in
  every resample, as rliable does.
- Probability of improvement P(X > Y): per task, the Mann-Whitney U statistic over n x m pairs
  (ties count 1/2), averaged over tasks; its CI is a stratified bootstrap over both optimizers' runs.
- Seeds needed: for a paired comparison on shared seeds, the smallest n whose two-sided paired t-test
  at alpha 0.05 has 80% power to detect the observed mean difference given the observed spread of
  the differences (noncentral t, Cohen 1988).

Scores must be oriented so that higher is better (multiply a lower-is-better metric by -1, or use
normalised scores) before they reach this module. It knows nothing about stores or formatting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as st

RESAMPLES = 2_000
SEED = 0
CONFIDENCE = 0.95


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all scores (any shape: flattened)."""
    flat = np.asarray(scores, dtype=float).ravel()
    return float(st.trim_mean(flat, 0.25)) if flat.size else math.nan


def stratified_bootstrap_ci(
    scores_by_task: Mapping[str, Sequence[float]],
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """(point estimate, low, high) of `statistic` over the pooled runs, resampling within each task."""
    groups = [np.asarray(v, dtype=float) for v in scores_by_task.values() if len(v)]
    if not groups:
        return math.nan, math.nan, math.nan
    point = statistic(np.concatenate(groups))
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        draws[i] = statistic(np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups]))
    alpha = (1 - confidence) / 2
    return point, float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def _poi(x: np.ndarray, y: np.ndarray) -> float:
    greater = (x[:, None] > y[None, :]).sum()
    ties = (x[:, None] == y[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(x) * len(y)))


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
    draws = np.empty(resamples)
    for i in range(resamples):
        draws[i] = np.mean(
            [_poi(x[rng.integers(0, len(x), len(x))], y[rng.integers(0, len(y), len(y))]) for x, y in zip(xs, ys)]
        )
    alpha = (1 - confidence) / 2
    return point, float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def paired_t_power(n: int, effect: float, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test with n pairs at standardized effect d = mean / sd."""
    if n < 2:
        return 0.0
    df = n - 1
    crit = st.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    return float(st.nct.sf(crit, df, nc) + st.nct.cdf(-crit, df, nc))


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
    for n in range(2, limit + 1):
        if paired_t_power(n, effect, alpha) >= power:
            return n
    return None
