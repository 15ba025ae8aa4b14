"""LR sensitivity (reports/sensitivity.py) on hand-made curves and runs tables with known answers."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from spam_bench.reports import leaderboard, sensitivity
from spam_bench.reports.sensitivity import (
    WITHIN_BEST,
    capped,
    good_range,
    lr_sensitivity,
    studies,
    width_decades,
)

LRS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]


# ---------------------------------------------------------------------------------------------- the math
def test_a_flat_curve_has_sensitivity_0_and_the_whole_range_as_width():
    flat = [0.7] * 5
    assert lr_sensitivity(flat) == 0.0
    assert good_range(LRS, flat) == (1e-4, 1.0)
    assert width_decades(LRS, flat) == pytest.approx(4.0)


def test_a_v_shaped_curve():
    v = [3.0, 2.0, 1.0, 2.0, 3.0]
    assert lr_sensitivity(v) == pytest.approx(11 / 5 - 1)  # mean 2.2, best 1
    assert good_range(LRS, v) == (1e-2, 1e-2) and width_decades(LRS, v) == 0.0
    # a wide, flat-bottomed V: 1.02 and 1.04 are within 5% of 1, 1.2 and 3 are not
    wide = [1.2, 1.02, 1.0, 1.04, 3.0]
    assert lr_sensitivity(wide) == pytest.approx((1.2 + 1.02 + 1.0 + 1.04 + 3.0) / 5 - 1.0)
    assert good_range(LRS, wide) == (1e-3, 1e-1) and width_decades(LRS, wide) == pytest.approx(2.0)


def test_the_good_range_is_contiguous_around_the_best_lr():
    gappy = [1.0, 1.01, 2.0, 1.0, 1.02]  # the best is the first; 1.0 again past a gap does not count
    assert good_range(LRS, gappy) == (1e-4, 1e-3)
    assert width_decades(LRS, gappy) == pytest.approx(1.0)
    edge = [1.0 + WITHIN_BEST, 1.0, 1.0 + WITHIN_BEST + 1e-9]  # exactly 5% is in, a hair more is out
    assert good_range(LRS[:3], edge) == (1e-4, 1e-3)


def test_a_diverged_value_counts_at_the_cap_and_finite_values_are_capped():
    assert capped([0.5, math.nan, 4.0, math.inf], cap=2.0).tolist() == [0.5, 2.0, 2.0, 2.0]
    curve = capped([1.0, 1.5, math.nan], cap=3.0)
    assert lr_sensitivity(curve) == pytest.approx((1.0 + 1.5 + 3.0) / 3 - 1.0)


# ------------------------------------------------------------------------------------- runs -> studies
def _runs(points, *, direction="min", metric="objective", opt_hparams=None, optimizer="adamw", task="spikes"):
    """A runs table like summary.load_runs's: points = [(lr, seed, value or None = diverged)]."""
    rows = []
    for lr, seed, value in points:
        rows.append(
            {
                "run_id": f"{optimizer}-s{seed}-lr{lr:g}-{json.dumps(opt_hparams or {}, sort_keys=True)}",
                "task": task,
                "scale": "smoke",
                "problem": "defaults",
                "optimizer": optimizer,
                "seed": seed,
                "status": "complete" if value is not None else "diverged",
                "value": value,
                "primary_metric": metric,
                "direction": direction,
                "overrides": json.dumps({"lr": lr}),
                "task_config": json.dumps({"lr": lr, "steps": 10}),
                "opt_hparams": json.dumps(opt_hparams or {}, sort_keys=True),
            }
        )
    return pd.DataFrame(rows)


def test_fewer_than_three_lrs_is_no_study():
    assert studies(_runs([(1e-3, 0, 1.0), (1e-2, 0, 2.0)])) == []
    assert studies(pd.DataFrame()) == []


def test_a_diverged_lr_counts_at_the_initial_loss_logged_at_step_0():
    runs = _runs(
        [(1e-3, s, 2.0) for s in (0, 1)] + [(1e-2, s, 1.0) for s in (0, 1)] + [(1e-1, s, None) for s in (0, 1)]
    )
    long = pd.DataFrame(
        {
            "task": "spikes",
            "run_id": runs.run_id,
            "split": "eval",
            "name": "objective",
            "step": 0.0,
            "value": 5.0,  # the objective before any step
            "wall": 0.0,
        }
    )
    (study,) = studies(runs, long)
    assert (study.cap, study.cap_source) == (5.0, "step 0")
    (curve,) = study.curves
    assert curve.mean.tolist() == [2.0, 1.0, 5.0] and curve.diverged.tolist() == [0, 0, 2]
    assert curve.sensitivity == pytest.approx((2.0 + 1.0 + 5.0) / 3 - 1.0)
    assert (curve.best_lr, curve.best_value, curve.width) == (1e-2, 1.0, 0.0)


def test_without_a_step_0_value_the_cap_is_the_worst_finite_final_value_of_the_study():
    runs = pd.concat(
        [
            _runs([(1e-3, 0, 2.0), (1e-2, 0, 1.0), (1e-1, 0, None)]),
            _runs([(1e-3, 0, 4.0), (1e-2, 0, 1.0), (1e-1, 0, 1.02)], optimizer="spam"),
        ]
    )
    (study,) = studies(runs)
    assert (study.cap, study.cap_source) == (4.0, "worst final")  # spam's worst, shared by adamw
    adamw, spam = study.curves
    assert adamw.mean.tolist() == [2.0, 1.0, 4.0]
    assert adamw.sensitivity == pytest.approx(7 / 3 - 1)
    assert spam.sensitivity == pytest.approx(6.02 / 3 - 1)
    assert (spam.good_lo, spam.good_hi, spam.width) == (1e-2, 1e-1, pytest.approx(1.0))


def test_a_higher_is_better_metric_is_mirrored():
    runs = _runs([(1e-3, 0, 0.5), (1e-2, 0, 0.9), (1e-1, 0, 0.88), (1.0, 0, None)], direction="max", metric="acc")
    (study,) = studies(runs)
    assert (study.cap, study.cap_source) == (0.5, "worst final")  # the worst accuracy is the lowest
    (curve,) = study.curves
    assert curve.mean.tolist() == [0.5, 0.9, 0.88, 0.5]
    assert curve.sensitivity == pytest.approx(0.9 - (0.5 + 0.9 + 0.88 + 0.5) / 4)
    assert (curve.best_lr, curve.best_value) == (1e-2, 0.9)
    assert (curve.good_lo, curve.good_hi) == (1e-2, 1e-1)  # 0.88 >= 0.9 - 5% of 0.9


def test_seeds_average_with_a_bootstrap_ci_and_opt_values_make_separate_studies():
    points = [(lr, s, v + 0.1 * s) for lr, v in ((1e-3, 2.0), (1e-2, 1.0), (1e-1, 3.0)) for s in range(3)]
    runs = pd.concat([_runs(points), _runs(points, opt_hparams={"beta2": 0.95})])
    (study,) = studies(runs)
    assert [c.label for c in study.curves] == ["adamw", "adamw (opt.beta2=0.95)"]
    curve = study.curves[0]
    assert curve.mean == pytest.approx([2.1, 1.1, 3.1]) and curve.seeds.tolist() == [3, 3, 3]
    assert (curve.ci_lo <= curve.mean).all() and (curve.mean <= curve.ci_hi).all() and (curve.ci_lo < curve.ci_hi).all()


def _noisy(curve, seeds=3, noise=0.01, **kw):
    """Runs at lrs 1e-4..1e-1 with the given loss per lr, each seed off by a little."""
    lrs = (1e-4, 1e-3, 1e-2, 1e-1)
    return _runs([(lr, s, v + noise * (s - 1)) for lr, v in zip(lrs, curve) for s in range(seeds)], **kw)


def test_a_flat_optimizer_is_wider_and_less_sensitive_than_a_peaked_one_and_the_cis_say_so():
    runs = pd.concat([_noisy([1.0, 1.0, 1.0, 1.0], optimizer="flat"), _noisy([3.0, 1.0, 3.0, 3.0], optimizer="peaked")])
    (study,) = studies(runs)
    flat, peaked = study.curves
    assert flat.width == pytest.approx(3.0) and flat.width_ci == pytest.approx((3.0, 3.0))
    assert peaked.width == 0.0 and peaked.width_ci == (0.0, 0.0)
    lo, hi = peaked.sensitivity_ci
    assert lo <= peaked.sensitivity <= hi and hi - lo > 0  # seeds differ: a real spread
    diff = sensitivity.differences(flat, peaked)
    assert diff["width"].value == pytest.approx(3.0) and diff["width"].resolved and diff["width"].lo > 0
    assert diff["sensitivity"].value < 0 and diff["sensitivity"].resolved


def test_curves_the_seeds_cannot_tell_apart_are_not_separated():
    # the same curve under two names: every difference is 0 and its CI straddles it
    runs = pd.concat([_noisy([2.0, 1.0, 1.04, 3.0], noise=0.05, optimizer=o) for o in ("a", "b")])
    a, b = studies(runs)[0].curves
    diff = sensitivity.differences(a, b)
    assert diff["width"].value == 0 and diff["sensitivity"].value == 0
    assert not diff["width"].resolved and not diff["sensitivity"].resolved
    assert diff["sensitivity"].lo < 0 < diff["sensitivity"].hi


def test_one_seed_per_lr_gives_no_ci_and_different_lrs_no_comparison():
    (one,) = studies(_noisy([2.0, 1.0, 3.0, 3.0], seeds=1)).pop().curves
    assert all(math.isnan(x) for x in (*one.width_ci, *one.sensitivity_ci))
    other = _runs([(lr, s, 1.0 + s / 100) for lr in (1e-3, 1e-2, 1e-1) for s in range(3)], optimizer="other")
    a, b = studies(pd.concat([_noisy([2.0, 1.0, 3.0, 3.0]), other]))[0].curves
    assert all(math.isnan(d.lo) for d in sensitivity.differences(a, b).values())


def test_bootstrap_curves_resample_seeds_within_each_lr():
    per_lr = [np.array([1.0, 1.0]), np.array([0.0, 2.0])]
    boots = sensitivity.bootstrap_curves(per_lr, 4000, np.random.default_rng(0))
    assert boots.shape == (4000, 2) and (boots[:, 0] == 1.0).all()
    assert set(np.unique(boots[:, 1])) == {0.0, 1.0, 2.0}  # means of 2 draws of {0, 2}
    assert abs(boots[:, 1].mean() - 1.0) < 0.05


# ------------------------------------------------------------------------------------------ the section
def test_the_section_sits_in_its_task_with_the_definition_and_a_table_per_optimizer():
    runs = pd.concat(
        [
            _runs([(lr, s, v) for lr, v in ((1e-3, 2.0), (1e-2, 1.0), (1e-1, 1.0)) for s in range(3)]),
            _runs(
                [(lr, s, v) for lr, v in ((1e-3, 1.0), (1e-2, 1.0), (1e-1, 1.0)) for s in range(3)], optimizer="spam"
            ),
        ]
    ).assign(
        scale="smoke",
        device="cpu",
        settings="x",
        steps=10,
        wall_time_s=1.0,
        optimizer_state_bytes=0,
        recipe=lambda d: "lr=" + d["overrides"].map(lambda o: str(json.loads(o)["lr"])),
        grad_clip=None,
        diverged_step=None,
        reason=None,
    )
    found = studies(runs)
    sections = sensitivity.blocks(found, {found[0].image})
    md = leaderboard.to_markdown(leaderboard.build(runs, task_sections=sections))
    section = md.split("### LR sensitivity · spikes/smoke\n", 1)[1].split("\n## ", 1)[0]
    assert md.index("## spikes") < md.index("### LR sensitivity")
    assert "Wortsman et al. 2023" in section and f"within {WITHIN_BEST:.0%} of the best" in section
    assert f"![{found[0].image}]({found[0].image})" in section
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ") for line in section.splitlines() if line.startswith("| ")
    }
    assert rows["adamw"][1:5] == ["3 (0.001–0.1)", "3", "0 of 9", "0.333"]
    assert rows["spam"][4:11] == ["0", "[0, 0]", "0.001", "1", "0.001–0.1", "2.00", "[2, 2] |"]
    # the rest of the report is what it is without the section
    start = md.index("### LR sensitivity")
    end = md.index("\n## ", start) + 1
    assert md[:start] + md[end:] == leaderboard.to_markdown(leaderboard.build(runs))
