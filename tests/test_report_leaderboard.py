"""`write_leaderboard` on the checked-in fixture of synthetic runs (tests/fixtures/report_runs/).

Regenerate the golden file after an intended change with
    SPAMBENCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report_leaderboard.py
and read its diff before committing it.
"""

import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from spam_bench.reports.build import write_leaderboard
from spam_bench.suite.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "leaderboard.golden.md"


@pytest.fixture
def store(tmp_path):
    """A writable copy of the fixture store (the report folder is written beside runs/)."""
    shutil.copytree(FIXTURES / "report_runs" / "runs", tmp_path / "runs")
    return tmp_path


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    shutil.copytree(FIXTURES / "report_runs" / "runs", out / "runs")
    return write_leaderboard(out, all_code=True)


def _row(markdown, section, optimizer):
    lines = markdown.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0].splitlines()
    return [
        c.strip().strip("*")
        for c in next(line for line in lines if f"| {optimizer} |" in line.replace("**", "")).split("|")[1:-1]
    ]


def test_leaderboard_markdown_matches_the_golden_file(full_report):
    markdown, report_dir = full_report
    assert (report_dir / "leaderboard.md").read_text() == markdown
    if os.environ.get("SPAMBENCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(markdown)
    assert markdown == GOLDEN.read_text()


def test_header_adds_up_the_complete_runs_wall_times(full_report):
    import json

    summaries = [json.loads(f.read_text()) for f in (FIXTURES / "report_runs" / "runs").glob("*/*/summary.json")]
    total = sum(s["wall_time_s"] for s in summaries)
    assert f"{len(summaries)} complete runs" in full_report[0]
    assert f"; {total:.0f} s of run time (the runs' wall-clock times added up)." in full_report[0]


def test_the_report_folder_has_every_output(full_report):
    _, report_dir = full_report
    names = {p.name for p in report_dir.iterdir()}
    assert {
        "results.parquet",
        "summary.md",
        "leaderboard.md",
        "leaderboard.html",
        "profile.png",
        "curves-llm-tiny.png",
        "final-llm-tiny.png",
        "curves-rl-tiny.png",
        "final-rl-tiny.png",
    } <= names
    long = pd.read_parquet(report_dir / "results.parquet")
    assert {
        "task",
        "optimizer",
        "seed",
        "scale",
        "overrides",
        "opt_hparams",
        "optimizer_config",
        "versions",
        "git_commit",
        "hardware",
        "split",
        "name",
        "step",
        "value",
    } <= set(long.columns)


def test_incomplete_runs_are_ignored(store):
    (incomplete,) = [d for d in store.glob("runs/*/*") if not (d / "summary.json").exists()]
    assert incomplete.name.startswith("spam-s3-tiny") and (incomplete / "metrics.jsonl").stat().st_size
    markdown, report_dir = write_leaderboard(store, plots=False, all_code=True)
    assert incomplete.name not in set(pd.read_parquet(report_dir / "results.parquet")["run_id"])
    row = _row(markdown, "llm · tiny · defaults", "spam")
    assert row[5] == "99.43" and row[7] == "3"  # (98.7 + 99.5 + 100.1) / 3 over the 3 complete seeds, not 4


def test_diverged_runs_are_counted_not_averaged(store):
    markdown, _ = write_leaderboard(store, plots=False, all_code=True)
    rank, _, _, lr, protocol, mean, ci, seeds, diverged, *_ = _row(markdown, "llm · tiny · defaults", "adam")
    assert (mean, ci, seeds, diverged) == ("103.7", "[103.4, 104]", "2", "1")  # seeds 0 and 1 only
    assert (rank, lr, protocol) == ("n<3", "0.001", "defaults")  # 2 complete seeds: shown, not ranked


def test_filters_by_task_optimizer_and_scale(store):
    markdown, report_dir = write_leaderboard(store, task="rl", opt="spam,adamw", plots=False, all_code=True)
    runs = pd.read_parquet(report_dir / "results.parquet").drop_duplicates("run_id")
    assert set(runs["task"]) == {"rl"} and set(runs["optimizer"]) == {"spam", "adamw"}
    assert "## llm" not in markdown and "filters: task=rl, opt=spam,adamw" in markdown
    markdown, report_dir = write_leaderboard(store, scale="paper-60m", plots=False, all_code=True)
    assert set(pd.read_parquet(report_dir / "results.parquet")["scale"]) == {"paper-60m"}
    assert "Published numbers" in markdown and "### llm · tiny" not in markdown


def test_since_keeps_runs_finished_after_a_date_or_within_an_age(store):
    old = time.mktime((2020, 1, 1, 0, 0, 0, 0, 0, -1))
    for summary in store.glob("runs/*/*/summary.json"):
        if summary.parts[-3] == "llm":
            os.utime(summary, (old, old))
    for since in ("2024-06-01", "2024-06-01T12:00:00+02:00", "30d"):
        _, report_dir = write_leaderboard(store, since=since, plots=False, all_code=True)
        assert set(pd.read_parquet(report_dir / "results.parquet")["task"]) == {"rl"}, since
    markdown, _ = write_leaderboard(store, since="2030-01-01", plots=False, all_code=True)
    assert "No complete runs match since=2030-01-01" in markdown
    with pytest.raises(ConfigError, match="since"):
        write_leaderboard(store, since="last tuesday", plots=False, all_code=True)
