"""The statistics behind the leaderboard, each with its method stated where it is used.

- Uncertainty of a mean over seeds: percentile bootstrap, 10,000 resamples, 95%, a fixed RNG seed
  (so a report is reproducible byte for byte). With 3 seeds it spans roughly the seeds' range and
  under-covers; it is what a reader can check, not a significance test.
- Ranks within a problem (`rank_groups`): only entries with at least MIN_SEEDS complete seeds are
  ranked. They are sorted by mean (best first); walking down, an entry opens a new, worse rank
  group (rank = 1 + the number of ranked entries above it) only if a two-sided paired t-test on the
  seeds both it and the best entry of the current group completed rejects equality at ALPHA and its
  mean loss on those seeds is higher (`significantly_worse`); otherwise it shares that group's rank.
  Fewer than MIN_SEEDS shared seeds cannot separate two entries. "Best" (★) is a rank-1 entry that is
  significantly better, by the same test, than every ranked entry outside rank 1; rank-1 entries
  that tie with each other share it, and with no ranked entry outside rank 1 nothing is best.
- `ranks`: plain average ranks of means (scipy's `rankdata`), failures last; kept for scripts.
- Performance profile (AlgoPerf-style, Dolan & Moré): on each problem an optimizer's ratio to the
  best is r = 1 + gap / |best|, gap = how much worse its mean is than the best mean (in the
  metric's own direction). For a positive lower-is-better metric (perplexity, MSE) that is exactly
  value / best. rho(tau) = fraction of problems with r <= tau; a missing or failed entry has r = inf.
- Probability of improvement (Agarwal et al. 2021): P(X better than Y) for one run of each, ties
  counting 1/2 (the Mann-Whitney U statistic over n*m), averaged over problems. A diverged run is
  worse than every finite result.

This module knows nothing about the results store or formatting.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata
from scipy.stats import t as student_t

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
TAU_MAX = 2.0  # final-metric gaps are small; AlgoPerf's 4 is for time-to-target ratios
TAU_GRID = np.linspace(1.0, TAU_MAX, 201)
BAND_BLOCK_CELLS = 4_000_000  # floats per block of bootstrap_band's resampled curves (32 MB)
MIN_SEEDS = 3  # complete seeds an entry needs to be ranked (and shared seeds a paired test needs)
ALPHA = 0.05  # significance level of the paired test that separates ranks


def sign(direction: str) -> float:
    """+1 where lower is better, -1 where higher is better: `sign * value` is always a loss."""
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', got {direction!r}")
    return 1.0 if direction == "min" else -1.0


def bootstrap_ci(
    values: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean; (nan, nan) below 2 values (no spread to resample)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (resamples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def bootstrap_band(
    curves: np.ndarray, resamples: int = 1000, seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column percentile-bootstrap CI of the mean of `curves` (seeds x steps), for plot bands.

    Fewer resamples than the tables: a band is read by eye. NaN cells (a seed that stopped logging)
    are left out of that column's mean. The resamples are averaged a block at a time, so memory stays
    bounded however many seeds there are (all at once they took resamples x seeds x steps floats)."""
    n = curves.shape[0]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, (resamples, n))
    block = max(1, BAND_BLOCK_CELLS // max(1, curves.size))
    means = np.empty((resamples, *curves.shape[1:]))
    with warnings.catch_warnings():  # all-NaN columns (no seed logged that step) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        for start in range(0, resamples, block):
            means[start : start + block] = np.nanmean(curves[picks[start : start + block]], axis=1)
        alpha = (1 - confidence) / 2
        lo, hi = np.nanpercentile(means, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return lo, hi


def ranks(means: Sequence[float], direction: str) -> np.ndarray:
    """Rank 1 = best; ties get their average rank; NaN (failed) entries tie for the last places."""
    loss = sign(direction) * np.asarray(means, dtype=float)
    return rankdata(np.where(np.isnan(loss), np.inf, loss), method="average")


def paired_test(a: Mapping[Hashable, float], b: Mapping[Hashable, float], direction: str) -> tuple[float, int, float]:
    """Two-sided paired t-test of A against B on the seeds both completed: (p, shared seeds, mean
    loss difference A - B), loss = sign * value, so a negative difference means A is better.

    p is NaN below MIN_SEEDS shared seeds (too few to test). Differences that are all equal have no
    spread: p = 0 if they are nonzero (every seed agrees), 1 if they are all zero."""
    s = sign(direction)
    shared = [k for k in a if k in b]
    d = np.array([s * (float(a[k]) - float(b[k])) for k in shared], dtype=float)
    if d.size < MIN_SEEDS:
        return math.nan, int(d.size), float(d.mean()) if d.size else math.nan
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return (0.0 if mean != 0.0 else 1.0), int(d.size), mean
    t = mean / (sd / math.sqrt(d.size))
    return float(2.0 * student_t.sf(abs(t), d.size - 1)), int(d.size), mean


def significantly_worse(a: Mapping[Hashable, float], b: Mapping[Hashable, float], direction: str) -> bool:
    """Whether A is worse than B by the paired test: p < ALPHA and A's mean loss on the shared seeds higher."""
    p, _, diff = paired_test(a, b, direction)
    return bool(p < ALPHA and diff > 0)


def rank_groups(
    seeds: Sequence[Mapping[Hashable, float]], means: Sequence[float], direction: str
) -> tuple[np.ndarray, np.ndarray]:
    """(rank, best) per entry, from each entry's {seed: value} of complete seeds and its mean.

    The rule is the module docstring's: entries with fewer than MIN_SEEDS seeds get rank NaN; the
    others, best mean first (ties in order of the input), open a new rank only when significantly
    worse than the best entry of the current rank group. Deterministic for a given input order."""
    s = sign(direction)
    rank = np.full(len(seeds), np.nan)
    best = np.zeros(len(seeds), dtype=bool)
    order = sorted((i for i, v in enumerate(seeds) if len(v) >= MIN_SEEDS), key=lambda i: (s * means[i], i))
    leader, current = -1, 0
    for position, i in enumerate(order):
        if leader < 0 or significantly_worse(seeds[i], seeds[leader], direction):
            leader, current = i, position + 1
        rank[i] = current
    rest = [j for j in order if rank[j] > 1]
    if rest:
        for i in (i for i in order if rank[i] == 1):
            best[i] = all(significantly_worse(seeds[j], seeds[i], direction) for j in rest)
    return rank, best


def ratios(means: Mapping[str, float], direction: str) -> dict[str, float]:
    """Each optimizer's performance ratio to the best on one problem (see the module docstring)."""
    s = sign(direction)
    finite = {k: v for k, v in means.items() if v is not None and np.isfinite(v)}
    if not finite:
        return {k: float("inf") for k in means}
    best = min(finite.values(), key=lambda v: s * v)
    scale = abs(best) if best != 0 else 1.0  # a best of exactly 0 leaves gaps unscaled
    return {k: (1.0 + s * (v - best) / scale) if k in finite else float("inf") for k, v in means.items()}


def performance_profile(
    ratio_table: Mapping[str, Mapping[str, float]], optimizers: Iterable[str], taus: np.ndarray = TAU_GRID
) -> dict[str, np.ndarray]:
    """rho_o(tau) over problems: {optimizer: fraction of problems with ratio <= tau, per tau}.

    `ratio_table` is {problem: {optimizer: ratio}}; an optimizer absent from a problem counts as inf."""
    problems = list(ratio_table)
    out = {}
    for o in optimizers:
        r = np.array([ratio_table[p].get(o, np.inf) for p in problems], dtype=float)
        out[o] = (r[None, :] <= taus[:, None]).mean(axis=1) if problems else np.zeros_like(taus)
    return out


def profile_score(rho: np.ndarray, taus: np.ndarray = TAU_GRID) -> float:
    """Area under rho over [1, TAU_MAX], normalised to [0, 1] (AlgoPerf's benchmark score)."""
    return float(np.trapezoid(rho, taus) / (taus[-1] - taus[0]))


def probability_of_improvement(x: Sequence[float], y: Sequence[float], direction: str) -> float:
    """P(a run of X beats a run of Y); NaN entries (diverged runs) lose to every finite value."""
    s = sign(direction)
    lx = np.where(np.isnan(np.asarray(x, float)), np.inf, s * np.asarray(x, float))
    ly = np.where(np.isnan(np.asarray(y, float)), np.inf, s * np.asarray(y, float))
    if lx.size == 0 or ly.size == 0:
        return float("nan")
    better = (lx[:, None] < ly[None, :]).mean()
    tied = (lx[:, None] == ly[None, :]).mean()
    return float(better + 0.5 * tied)
