"""`make perf-tasks`: the table has a row per task with its time split; bad input is one line."""

from __future__ import annotations

from spam_bench.runners import perf_tasks


def test_the_table_shows_throughput_and_a_time_split_that_adds_up(capsys):
    assert perf_tasks.main(["--tasks", "spikes"]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("| spikes |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert int(cells[1]) == 2000 and float(cells[4]) > 0  # the tiny spikes run: 2000 steps
    shares = [int(c.rstrip("%")) for c in cells[5:]]
    assert len(shares) == 5 and 97 <= sum(shares) <= 103 and shares[2] > 0 and shares[3] > 0


def test_an_unknown_task_is_one_line_and_exit_2(capsys):
    assert perf_tasks.main(["--tasks", "spikes,nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spambench: error: tasks: nope is not one of") and "\n" not in err
