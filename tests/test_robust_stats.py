"""reports/robust_stats.py against rliable's published definitions, on fixtures with known answers."""

import numpy as np
import pytest
from scipy import stats as st

from spam_bench.reports.robust_stats import (
    iqm,
    paired_t_power,
    probability_of_improvement,
    score_distribution,
    seeds_needed,
    stratified_bootstrap_ci,
)


def test_iqm_is_the_mean_of_the_middle_half():
    # 8 scores sorted: -100, 1, 2, 3, 4, 5, 6, 100; the middle half is 2, 3, 4, 5 (rliable:
    # scipy.stats.trim_mean(x, 0.25)), so the outliers do not move it.
    assert iqm(np.array([100.0, 1, 2, 3, 4, 5, 6, -100])) == pytest.approx(3.5)
    assert iqm(np.arange(1, 9).reshape(2, 4)) == pytest.approx(4.5)  # pooled over tasks


def test_a_stratified_bootstrap_never_drops_a_task():
    # Task "b" has one run, far above the rest: every stratified resample keeps it, so the pooled
    # max is always 1000; an unstratified bootstrap would lose it in about (5/6)^6 of resamples.
    seen = []
    stratified_bootstrap_ci({"a": [0, 1, 2, 3, 4], "b": [1000]}, lambda x: seen.append(x.max()) or 0.0, resamples=200)
    assert set(seen) == {1000.0}


def test_the_ci_covers_the_point_and_narrows_with_more_runs():
    rng = np.random.default_rng(1)
    few = {t: rng.normal(0, 1, 3) for t in "abc"}
    many = {t: rng.normal(0, 1, 30) for t in "abc"}
    p, lo, hi = stratified_bootstrap_ci(few, np.mean)
    assert lo <= p <= hi
    _, lo2, hi2 = stratified_bootstrap_ci(many, np.mean)
    assert hi2 - lo2 < hi - lo


def test_probability_of_improvement_is_the_mann_whitney_statistic_averaged_over_tasks():
    x = {"a": [3.0, 4.0], "b": [1.0, 1.0]}
    y = {"a": [1.0, 2.0], "b": [1.0, 2.0]}
    # a: every x beats every y -> 1; b: (1 vs 1 tie 0.5, 1 vs 2 loss 0) twice -> 0.25. Mean 0.625.
    p, lo, hi = probability_of_improvement(x, y, resamples=500)
    assert p == pytest.approx(0.625) and lo <= p <= hi
    u = st.mannwhitneyu([3, 4], [1, 2], alternative="greater").statistic / 4
    assert u == 1.0


def test_power_matches_the_noncentral_t_and_seeds_needed_is_the_first_to_reach_it():
    assert paired_t_power(10, 0.0) == pytest.approx(0.05, abs=1e-9)  # no effect: the test's size
    # Cohen's tables: d = 1 needs 10 pairs for 80% power (two-sided, alpha 0.05); 9 fall short.
    assert paired_t_power(10, 1.0) >= 0.8 > paired_t_power(9, 1.0)
    assert not np.isnan(paired_t_power(3, 4.84))  # scipy's far tail is nan there; it counts as 0
    diffs = [1.0, 2.0, 0.0, 1.5, 0.5]  # mean 1, sd 0.79: d = 1.26
    n = seeds_needed(diffs)
    assert n is not None and paired_t_power(n, 1 / np.std(diffs, ddof=1)) >= 0.8
    assert paired_t_power(n - 1, 1 / np.std(diffs, ddof=1)) < 0.8
    assert seeds_needed([0.0, 0.0, 0.0]) is None and seeds_needed([1.0, 1.0]) == 2


@pytest.mark.parametrize("effect", [0.05, 0.2, 0.5, 1.26, 3.0, 4.84, 8.82])
def test_seeds_needed_is_the_first_n_a_linear_scan_finds(effect):
    """The search bisects; a scan from n = 2 is the definition. At d = 4.84 scipy's noncentral t is
    nan in its far tail for n = 3..16, which once made the search stop early or report None."""
    diffs = effect + np.array([1.0, -1.0]) / np.sqrt(2)  # mean d, sd 1: effect size d
    scan = next((n for n in range(2, 10_001) if paired_t_power(n, effect) >= 0.8), None)
    assert scan is not None and seeds_needed(diffs) == scan


def test_the_report_section_says_when_the_data_cannot_separate_an_optimizer_from_adamw():
    import pandas as pd

    from spam_bench.reports import robust_section
    from spam_bench.reports.leaderboard import to_markdown

    def runs(values: dict[str, list[float]]) -> pd.DataFrame:
        rows = [
            {
                "task": "t",
                "scale": "tiny",
                "problem": "defaults",
                "recipe": "defaults",
                "optimizer": opt,
                "seed": s,
                "status": "complete",
                "value": v,
                "direction": "min",
            }
            for opt, vs in values.items()
            for s, v in enumerate(vs)
        ]
        return pd.DataFrame(rows)

    clear = to_markdown(robust_section.blocks(runs({"adamw": [1.0, 1.01, 0.99], "fast": [0.5, 0.51, 0.49]})))
    assert "| fast | 1 | 3 |" in clear and "| better |" in clear
    # the performance profile: every run of `fast` scores about +0.5, so it is above every tau of the
    # table; of AdamW's scores (about -0.01, 0, +0.01) one is above 0 and none above 0.05
    assert "| fast | 1 |" + " 1.00 [1.00, 1.00] |" * 6 in clear
    assert "| adamw | 1 |" + " 1.00 [1.00, 1.00] |" * 3 + " 0.33 [0.00, 1.00] |" + " 0.00 [0.00, 0.00] |" * 2 in clear
    mixed = to_markdown(robust_section.blocks(runs({"adamw": [1.0, 1.2, 0.8], "noisy": [0.9, 1.3, 0.85]})))
    assert "cannot tell from AdamW" in mixed
    # two seeds never enter an aggregate (the leaderboard's ranking rule); rows come best IQM first
    thin = runs({"adamw": [1.0, 1.01, 0.99], "lucky": [0.1, 0.1], "fast": [0.5, 0.51, 0.49], "slow": [2.0, 2.1, 1.9]})
    assert [a.optimizer for a in robust_section.aggregates(thin)] == ["fast", "slow"]
    assert robust_section.aggregates(thin)[1].verdict == "worse"
    assert robust_section.aggregates(runs({"adamw": [1.0, 1.01], "fast": [0.5, 0.51, 0.49]})) == []


@pytest.mark.parametrize("statistic", [iqm, np.mean, np.median])
def test_a_statistic_with_an_axis_gives_the_same_ci_as_one_resample_at_a_time(statistic):
    # Reductions that take `axis` run on all resamples at once; the loop over resamples is the
    # reference, and the same seed draws the same resamples either way.
    scores = {t: np.random.default_rng(i).normal(i, 1, 5) for i, t in enumerate("abc")}
    vectorised = stratified_bootstrap_ci(scores, statistic, resamples=300)
    looped = stratified_bootstrap_ci(scores, lambda row: float(statistic(row)), resamples=300)
    assert vectorised == pytest.approx(looped, rel=1e-12)


def test_the_score_distribution_is_the_fraction_above_tau_per_task_averaged_over_tasks():
    # a: 3 of 4 runs above 0.15; b: 1 of 2 -> (0.75 + 0.5) / 2 = 0.625 (each task weighs the same).
    point, lo, hi = score_distribution({"a": [0.1, 0.2, 0.3, 0.4], "b": [-0.1, 0.5]}, [0.15], resamples=500)
    assert point[0] == pytest.approx(0.625) and lo[0] <= point[0] <= hi[0]
    # With equal runs per task it is rliable's pooled mean(scores > tau) over the runs x tasks matrix.
    matrix = np.random.default_rng(3).normal(0, 1, (5, 4))
    taus = np.linspace(-2, 2, 9)
    point, lo, hi = score_distribution({str(t): matrix[:, t] for t in range(4)}, taus)
    assert point == pytest.approx([np.mean(matrix > tau) for tau in taus])
    assert np.all(lo <= point) and np.all(point <= hi)
    assert np.all(np.diff(point) <= 0) and np.all(np.diff(lo) <= 0) and np.all(np.diff(hi) <= 0)


def test_the_score_distribution_band_narrows_with_more_runs():
    rng = np.random.default_rng(4)
    few = {t: rng.normal(0, 1, 3) for t in "abc"}
    many = {t: rng.normal(0, 1, 40) for t in "abc"}
    _, lo, hi = score_distribution(few, [0.0])
    _, lo2, hi2 = score_distribution(many, [0.0])
    assert hi2[0] - lo2[0] < hi[0] - lo[0]
