"""The leaderboard ranks honestly: on a store that tries to game it (tests/fixtures/honest_runs/, made by
tests/fixtures/make_honest_runs.py), checked on the Markdown it writes.

- an entry with fewer than stats.MIN_SEEDS complete seeds is shown, never ranked, never across tasks;
- ranks come from paired t-tests on shared seeds; entries the test cannot separate share a rank, and
  overlapping CIs earn nobody a star;
- across tasks, one protocol at a time (defaults, or tuned), never an optimizer's best of k configs,
  with the configurations each optimizer tried;
- every row shows the lr it ran with; a filtered report has a folder of its own.
"""

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from spam_bench.reports import stats
from spam_bench.reports.build import report_folder, write_leaderboard
from spam_bench.reports.leaderboard import entries, is_tuned

FIXTURE = Path(__file__).parent / "fixtures" / "honest_runs"
DEFAULTS = "Across tasks: defaults"
TUNED = "Across tasks: tuned (spambench tune, then --from-tuning)"
TSF = "tsf · tiny · defaults"
RL = "rl · tiny · defaults"


def _copy(tmp: Path) -> Path:
    shutil.copytree(FIXTURE / "runs", tmp / "runs")
    shutil.copytree(FIXTURE / "tuning", tmp / "tuning")
    return tmp


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = _copy(tmp_path_factory.mktemp("honest"))
    markdown, report_dir = write_leaderboard(out, all_code=True)
    return markdown, report_dir, out


def _table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The first table under `heading` (a `##` or `###` line), one dict per row; bold marks kept as `bold`."""
    lines = markdown.split(f" {heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    header = [c.strip() for c in lines[start].split("|")[1:-1]]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.split("|")[1:-1]]
        row = {h: c.strip("*") for h, c in zip(header, cells)}
        row["bold"] = all(c.startswith("**") for c in cells if c not in ("", "–"))
        rows.append(row)
    return rows


def _rows(markdown: str, heading: str, optimizer: str) -> list[dict[str, str]]:
    return [r for r in _table(markdown, heading) if r["optimizer"] == optimizer]


def test_a_one_seed_entry_is_shown_but_not_ranked_and_stays_out_of_the_cross_task_ranks(report):
    markdown, _, _ = report
    (solo,) = _rows(markdown, TSF, "stable_spam")
    assert solo["rank"] == f"n<{stats.MIN_SEEDS}" and solo["seeds"] == "1" and solo["95% CI"] == "–"
    assert float(solo["test_mse mean (lower is better)"]) < min(  # the best mean of all, yet unranked
        float(r["test_mse mean (lower is better)"]) for r in _table(markdown, TSF) if r["optimizer"] != "stable_spam"
    )
    (across,) = _rows(markdown, DEFAULTS, "stable_spam")
    assert (across["rl/tiny"], across["tsf/tiny"]) == ("n<3", "n<3")
    assert (across["mean rank"], across["problems ranked"], across["profile score"]) == ("–", "0", "–")
    assert not across["bold"] and "★" not in solo["rank"]


def test_the_cross_task_view_never_takes_an_optimizers_best_of_several_configurations(report):
    markdown, _, _ = report
    # adafactor tried 4 configurations on tsf and 2 on rl; its lucky lr=0.01 is the best entry on rl
    rl = _rows(markdown, RL, "adafactor")
    assert [(r["hyperparameters"], r["protocol"], r["rank"]) for r in rl] == [
        ("lr=0.01", "hand-set", "1 ★"),
        ("defaults", "defaults", "3"),
    ]
    assert len(_rows(markdown, TSF, "adafactor")) == 4
    # ...but across tasks it is ranked by its defaults only, and the table says how much it tried
    rows = {r["optimizer"]: r for r in _table(markdown, DEFAULTS)}
    assert (rows["adafactor"]["rl/tiny"], rows["adafactor"]["tsf/tiny"], rows["adafactor"]["mean rank"]) == (
        "2",
        "3",
        "2.5",
    )
    assert rows["adafactor"]["configs tried"] == "2–4" and rows["stable_spam"]["configs tried"] == "1"
    assert rows["adamw"]["configs tried"] == "1–9"  # 8 tuning trials + defaults on tsf, defaults only on rl
    assert [o for o, r in rows.items() if r["bold"]] == ["spam"]
    assert list(rows) == ["spam", "adamw", "adafactor", "stable_spam"]


def test_entries_the_paired_test_cannot_separate_share_a_rank_and_nobody_gets_a_star(report):
    markdown, _, _ = report
    spam, adamw = _rows(markdown, TSF, "spam")[1], _rows(markdown, TSF, "adamw")[1]
    assert spam["hyperparameters"] == adamw["hyperparameters"] == "defaults"
    assert (adamw["95% CI"], spam["95% CI"]) == ("[0.0163, 0.0568]", "[0.0168, 0.0228]")  # overlapping
    assert sps.ttest_rel([0.0163, 0.0568, 0.0290], [0.0168, 0.0228, 0.0190]).pvalue > stats.ALPHA
    assert spam["rank"] == adamw["rank"] == "2"
    assert not any("★" in r["rank"] or r["bold"] for r in _table(markdown, TSF))  # rank 1 is not separated
    rows = {r["optimizer"]: r for r in _table(markdown, DEFAULTS)}
    assert rows["spam"]["tsf/tiny"] == rows["adamw"]["tsf/tiny"] == "1"
    # on rl, spam is clearly better than adamw (every seed, by ~390): the test separates them
    assert (rows["spam"]["rl/tiny"], rows["adamw"]["rl/tiny"]) == ("1", "2")


def test_the_tuned_protocol_is_ranked_on_its_own(report):
    markdown, _, _ = report
    tuned = _table(markdown, TUNED)
    assert [(r["optimizer"], r["tsf/tiny"], r["configs tried"]) for r in tuned] == [
        ("spam", "1", "9"),
        ("adamw", "2", "9"),
    ]
    (spam_tuned,) = [r for r in _rows(markdown, TSF, "spam") if r["protocol"].startswith("tuned")]
    assert spam_tuned["protocol"] == "tuned (8 trials)"
    assert spam_tuned["hyperparameters"] == "lr=0.0015, opt.reset_interval=612" and spam_tuned["lr"] == "0.0015"
    assert "Protocol: every optimizer at the configuration `spambench tune` chose" in markdown


def test_without_a_tuning_record_the_same_runs_are_hand_set_and_stay_out_of_cross_task_ranks(tmp_path):
    store = _copy(tmp_path)
    shutil.rmtree(store / "tuning")
    markdown, _ = write_leaderboard(store, all_code=True, plots=False)
    assert TUNED not in markdown
    (adamw,) = [r for r in _rows(markdown, TSF, "adamw") if r["hyperparameters"] != "defaults"]
    assert adamw["protocol"] == "hand-set"
    assert {r["optimizer"]: r["configs tried"] for r in _table(markdown, DEFAULTS)}["adamw"] == "1–2"


def test_every_row_shows_the_lr_it_ran_with(report):
    markdown, report_dir, _ = report
    for row in _table(markdown, TSF) + _table(markdown, RL):
        recipe = row["hyperparameters"]
        expected = "0.001" if recipe == "defaults" else recipe.split(",")[0].removeprefix("lr=")
        assert float(row["lr"]) == pytest.approx(float(expected)), row
    csv = pd.read_csv(report_dir / "leaderboard.csv")
    assert {"lr", "protocol", "configs"} <= set(csv.columns)
    assert csv.loc[csv.recipe == "defaults", "lr"].eq(0.001).all()
    assert math.isnan(csv.loc[csv.optimizer == "stable_spam", "rank"].iloc[0])


def test_the_method_and_the_figures_name_the_rule(report):
    markdown, report_dir, _ = report
    method = markdown.split("## Method\n", 1)[1]
    assert "two-sided paired t-test" in method and "alpha 0.05" in method and "at least 3 complete seeds" in method
    assert "![profile.png](profile.png)" in markdown and "![profile-tuned.png](profile-tuned.png)" in markdown
    assert (report_dir / "profile-tuned.png").exists()


def test_a_filtered_report_writes_its_own_folder_and_leaves_the_full_report_alone(report, tmp_path):
    _, _, out = report
    full = (out / "report" / "leaderboard.md").read_text()
    markdown, report_dir = write_leaderboard(out, task="tsf", plots=False, all_code=True)
    assert report_dir == out / "report" / "task-tsf" and (report_dir / "leaderboard.md").read_text() == markdown
    assert "## rl" not in markdown and "filters: task=tsf" in markdown
    assert (out / "report" / "leaderboard.md").read_text() == full
    assert (out / "report" / "leaderboard.csv").exists() and (out / "report" / "profile.png").exists()
    # names come from the filters; odd characters are replaced and a hash keeps them apart
    assert report_folder(tmp_path, task="rl", opt="adamw,spam") == tmp_path / "report" / "task-rl_opt-adamw,spam"
    odd = report_folder(tmp_path, task="../x", since="2025-06-01T12:00")
    assert odd.parent == tmp_path / "report" and "/" not in odd.name and odd.name.startswith("task-.._x_since-")
    assert odd != report_folder(tmp_path, task="..?x", since="2025-06-01T12:00")
    assert report_folder(tmp_path) == tmp_path / "report"


def test_paired_test_is_scipys_paired_t_test_in_the_metrics_direction():
    a = {0: 1.0, 1: 2.5, 2: 2.0, 3: 4.0}
    b = {0: 1.5, 1: 2.9, 2: 2.5, 3: 5.0, 9: 0.0}  # seed 9 is not shared: left out
    p, shared, diff = stats.paired_test(a, b, "min")
    assert shared == 4 and p == pytest.approx(sps.ttest_rel([1.0, 2.5, 2.0, 4.0], [1.5, 2.9, 2.5, 5.0]).pvalue)
    assert diff == pytest.approx(-0.6)  # A lower = better where lower is better
    assert stats.paired_test(a, b, "max")[2] == pytest.approx(0.6)
    assert math.isnan(stats.paired_test({0: 1.0, 1: 2.0}, {0: 3.0, 1: 4.0}, "min")[0])  # 2 shared seeds
    assert stats.paired_test({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 3.0, 2: 4.0}, "min")[0] == 0.0  # no spread
    assert stats.significantly_worse(b, a, "min") and not stats.significantly_worse(a, b, "min")
    assert stats.significantly_worse(a, b, "max")


def test_rank_groups_share_ranks_star_only_what_is_separated_and_skip_small_entries():
    def seeds(*values):
        return dict(enumerate(values))

    clear = [seeds(1.0, 1.1, 1.2), seeds(2.0, 2.1, 2.3), seeds(2.05, 2.1, 2.2), seeds(0.1)]
    rank, best = stats.rank_groups(clear, [np.mean(list(s.values())) for s in clear], "min")
    np.testing.assert_array_equal(rank[:3], [1, 2, 2])
    assert math.isnan(rank[3]) and list(best) == [True, False, False, False]
    # two entries the test cannot separate, both clearly better than a third: a shared best
    shared = [seeds(1.0, 1.5, 1.1), seeds(1.2, 1.1, 1.4), seeds(5.0, 5.1, 5.3)]
    rank, best = stats.rank_groups(shared, [np.mean(list(s.values())) for s in shared], "min")
    assert list(rank) == [1, 1, 3] and list(best) == [True, True, False]
    # all tied: a shared rank 1, and nobody is starred; the same, higher-is-better
    tied = [seeds(1.0, 1.5, 1.1), seeds(1.2, 1.1, 1.4)]
    rank, best = stats.rank_groups(tied, [1.2, 1.23], "max")
    assert list(rank) == [1, 1] and not best.any()


def test_is_tuned_wants_exactly_the_tuned_values():
    sets = {"lr": 0.0021, "opt.beta2": 0.981}
    assert is_tuned({"lr": 0.0021}, {"beta2": 0.981}, sets)
    assert is_tuned({"lr": 0.0021, "steps": 10}, {"beta2": 0.981}, sets)  # a problem setting, not the recipe
    assert not is_tuned({"lr": 0.0021}, {}, sets)  # a tuned value missing
    assert not is_tuned({"lr": 0.0021}, {"beta2": 0.981, "eps": 1e-6}, sets)  # something else changed too
    assert not is_tuned({"lr": 0.002}, {"beta2": 0.981}, sets)
    assert is_tuned({"lr": 0.0021}, {"beta2": 0.981}, {"lr": 0.0021, "beta2": 0.981})  # a bare optimizer key


def test_runs_on_tuning_seeds_are_not_the_tuned_protocol():
    base = {"task": "t", "scale": "tiny", "problem": "defaults", "optimizer": "adamw", "recipe": "lr=0.002"}
    rows = [
        {
            **base,
            "seed": seed,
            "status": "complete",
            "value": 1.0 + seed % 7,
            "primary_metric": "m",
            "direction": "min",
            "steps": 10,
            "wall_time_s": 1.0,
            "optimizer_state_bytes": 8.0,
            "overrides": '{"lr": 0.002}',
            "opt_hparams": "{}",
            "task_config": '{"lr": 0.002}',
        }
        for seed in (0, 1, 10_000)
    ]
    record = {("t", "tiny", "adamw"): {"sets": {"lr": 0.002}, "trials": 4}}
    assert entries(pd.DataFrame(rows), record)["protocol"].tolist() == ["hand-set"]
    assert entries(pd.DataFrame(rows[:2]), record)["protocol"].tolist() == ["tuned"]
