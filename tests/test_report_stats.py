"""The leaderboard's statistics, each checked against an independent numpy/scipy computation."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from spam_bench.reports import stats
from spam_bench.reports.leaderboard import across, entries


def test_bootstrap_ci_matches_scipys_percentile_bootstrap():
    x = np.array([101.2, 99.8, 100.5, 98.1, 102.9])
    ours = stats.bootstrap_ci(x)
    ref = sps.bootstrap(
        (x,),
        np.mean,
        n_resamples=stats.BOOTSTRAP_RESAMPLES,
        method="percentile",
        confidence_level=stats.CONFIDENCE,
        rng=np.random.default_rng(stats.BOOTSTRAP_SEED),
    )
    assert ours == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)
    assert ours[0] < x.mean() < ours[1]


def test_bootstrap_ci_is_undefined_below_two_seeds_and_reproducible():
    assert all(math.isnan(v) for v in stats.bootstrap_ci([3.0]))
    assert stats.bootstrap_ci([1.0, 2.0, 4.0]) == stats.bootstrap_ci([1.0, 2.0, 4.0])


def test_ranks_follow_the_direction_share_ties_and_put_failures_last():
    means = [3.0, 1.0, np.nan, 3.0, 2.0]
    np.testing.assert_array_equal(stats.ranks(means, "min"), sps.rankdata([3, 1, np.inf, 3, 2]))
    np.testing.assert_array_equal(stats.ranks(means, "max"), sps.rankdata([-3, -1, np.inf, -3, -2]))
    assert list(stats.ranks([1.0, np.nan, np.nan], "min")) == [1.0, 2.5, 2.5]


def test_probability_of_improvement_is_the_mann_whitney_u_over_n_times_m():
    x, y = np.array([1.0, 2.0, 2.0, 5.0]), np.array([2.0, 3.0, 4.0])
    u_lower_is_better = sps.mannwhitneyu(-x, -y).statistic / (len(x) * len(y))
    assert stats.probability_of_improvement(x, y, "min") == pytest.approx(u_lower_is_better)
    assert stats.probability_of_improvement(x, y, "max") == pytest.approx(sps.mannwhitneyu(x, y).statistic / 12)
    # a diverged run (NaN) loses to every finite run and ties with another diverged run
    assert stats.probability_of_improvement([np.nan], [7.0], "min") == 0.0
    assert stats.probability_of_improvement([np.nan], [np.nan], "max") == 0.5


def test_performance_profile_counts_problems_within_tau_of_the_best():
    # lower is better: ratio = value / best; higher is better: 1 + (best - value) / |best|; missing = inf
    r1 = stats.ratios({"a": 10.0, "b": 12.0}, "min")
    r2 = stats.ratios({"a": 80.0, "b": 100.0, "c": np.nan}, "max")
    assert r1 == pytest.approx({"a": 1.0, "b": 1.2}) and r2 == pytest.approx({"a": 1.2, "b": 1.0, "c": np.inf})
    taus = np.array([1.0, 1.1, 1.2, 2.0])
    rho = stats.performance_profile({"p1": r1, "p2": r2}, ["a", "b", "c"], taus)
    ratio = np.array([[1.0, 1.2], [1.2, 1.0], [np.inf, np.inf]])
    expected = (ratio[:, None, :] <= taus[None, :, None]).mean(axis=2)
    for i, o in enumerate("abc"):
        np.testing.assert_allclose(rho[o], expected[i])
    assert stats.profile_score(np.ones(5), np.linspace(1, 2, 5)) == pytest.approx(1.0)


def _runs(values: dict[str, list[float | None]], direction: str = "min") -> pd.DataFrame:
    rows = []
    for opt, vals in values.items():
        for seed, v in enumerate(vals):
            rows.append(
                {
                    "task": "t",
                    "scale": "tiny",
                    "problem": "defaults",
                    "optimizer": opt,
                    "recipe": "defaults",
                    "seed": seed,
                    "status": "diverged" if v is None else "complete",
                    "value": v,
                    "primary_metric": "m",
                    "direction": direction,
                    "steps": 10,
                    "wall_time_s": 5.0,
                    "optimizer_state_bytes": 8.0,
                    "grad_clip": None,
                    "task_config": "{}",
                    "run_id": f"{opt}{seed}",
                }
            )
    return pd.DataFrame(rows)


def test_entry_means_exclude_diverged_seeds_and_an_all_diverged_entry_ranks_last():
    table = entries(_runs({"adamw": [2.0, 4.0, None], "spam": [None, None], "adam": [5.0]}))
    adamw = table.set_index("optimizer").loc["adamw"]
    assert adamw["mean"] == 3.0 and adamw["n"] == 2 and adamw["diverged"] == 1
    assert (adamw["ci_lo"], adamw["ci_hi"]) == pytest.approx(stats.bootstrap_ci([2.0, 4.0]))
    spam = table.set_index("optimizer").loc["spam"]
    # below stats.MIN_SEEDS complete seeds nothing is ranked (tests/test_report_honest_ranking.py)
    assert math.isnan(spam["mean"]) and math.isnan(spam["rank"]) and not spam["best"]
    assert list(table["optimizer"]) == ["adamw", "adam", "spam"]


def test_mean_rank_across_tasks_matches_a_direct_computation():
    # 3 seeds each, every pair separated by the paired t-test, so the ranks are the means' ranks
    a = _runs({"adamw": [2.0, 2.2, 2.1], "spam": [1.0, 1.4, 1.2], "adam": [3.0, 3.0, 3.1]})
    b = _runs({"adamw": [50.0, 60.0, 55.0], "spam": [45.0, 55.0, 50.0], "adam": [70.0, 80.0, 75.0]}, "max")
    result = across(entries(pd.concat([a, b.assign(task="u")], ignore_index=True)))
    r_a = sps.rankdata([3.0333, 2.1, 1.2])  # adam, adamw, spam means on t (lower is better)
    r_b = sps.rankdata([-75.0, -55.0, -50.0])  # on u (higher is better)
    expected = pd.Series((r_a + r_b) / 2, index=["adam", "adamw", "spam"])
    pd.testing.assert_series_equal(result.mean_rank.sort_index(), expected, check_names=False)
    p_spam = np.mean(
        [
            stats.probability_of_improvement([1.0, 1.4, 1.2], [2.0, 2.2, 2.1], "min"),
            stats.probability_of_improvement([45.0, 55.0, 50.0], [50.0, 60.0, 55.0], "max"),
        ]
    )
    assert result.poi["spam"] == (pytest.approx(p_spam), 2)
