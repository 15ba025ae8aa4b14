"""Sweeps on a real (embedded) Ray: expansion and errors, landing in the store, retries, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import small_llm_sets

from spam_bench.runners.cli import main
from spam_bench.suite.results import read_json, read_metrics
from spam_bench.suite.sweep import expand, parse_grid, parse_seeds

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` skips them

SPEED = small_llm_sets(steps=20, eval_every=10)


def _sweep_argv(out, *extra, sets=SPEED):
    argv = ["sweep", "--task", "llm", "--out", str(out), *extra]
    for s in sets:
        argv += ["--set", s]
    return argv


def _summaries(out):
    return {p.parent.name: read_json(p) for p in out.glob("runs/llm/*/summary.json")}


def test_seed_ranges_and_lists_expand():
    assert parse_seeds("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert parse_grid(["lr=1e-3,3e-3", "opt.beta2=0.95"]) == {"lr": ["1e-3", "3e-3"], "opt.beta2": ["0.95"]}


def test_expand_is_optimizers_x_grid_x_seeds_with_distinct_run_ids():
    runs = expand(task="llm", optimizers=["adamw"], seeds=[0, 1], grid={"lr": ["1e-3", "3e-3"]})
    assert len(runs) == 4 and len({r.spec.run_id for r in runs}) == 4


def test_a_swept_value_equal_to_the_default_is_the_defaults_run():
    """An LR study's grid holding the task's own lr reuses the defaults runs instead of making twins."""
    (default,) = expand(task="llm", optimizers=["adamw"], seeds=[0], grid={})
    swept = expand(task="llm", optimizers=["adamw"], seeds=[0], grid={"lr": ["1e-3", "3e-3"], "opt.beta2": ["0.999"]})
    assert swept[0].spec.run_id == default.spec.run_id and swept[0].spec.overrides == {}
    assert swept[0].spec.opt_hparams == {}  # beta2 0.999 is AdamW's default too
    assert swept[1].spec.overrides == {"lr": 0.003} and swept[1].config.lr == 0.003


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--opt", "adamw,nope"], "optimizer: invalid value 'nope'"),
        (["--opt", "adamw", "--seeds", "3-1"], "seeds: invalid value '3-1'"),
        (["--opt", "adamw", "--seeds", "a"], "seeds: invalid value 'a'"),
        (["--opt", "adamw", "--grid", "lr"], "--grid: invalid value 'lr' (allowed: key=value)"),
        (["--opt", "adamw", "--grid", "lr=1e-3,,2e-3"], "--grid: invalid value 'lr=1e-3,,2e-3'"),
        (
            ["--opt", "adamw", "--grid", "min_lr_ratio=0.1,-1"],
            "min_lr_ratio: invalid value -1.0 (allowed: float >= 0.0 and <= 1.0)",
        ),
        (["--opt", "adamw", "--grid", "lr=1e-3,2e-3"], "--grid: invalid value 'lr' (allowed: a key that --set"),
        (
            ["--opt", "adamw", "--address", "127.0.0.1:1"],
            "address: invalid value '127.0.0.1:1' (allowed: a reachable Ray head",
        ),
        (["--opt", "adamw", "--address", "nohostport"], "address: invalid value 'nohostport'"),
    ],
)
def test_bad_sweep_input_fails_in_one_line_before_ray_starts(extra, expected, out_dir, capsys):
    assert main(_sweep_argv(out_dir, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    assert not out_dir.exists()


def test_sweep_lands_in_the_store_and_matches_the_local_runner(out_dir, tmp_path, capsys):
    assert main(_sweep_argv(out_dir, "--opt", "adamw", "--seeds", "1", "--grid", "opt.beta2=0.99,0.999")) == 0
    runs = _summaries(out_dir)
    assert len(runs) == 2 and all(s["status"] == "complete" for s in runs.values())
    assert not list(out_dir.glob("runs/llm/*/.*tmp*"))
    # Tune hears evaluations, checkpoints and the end, never the per-step training/telemetry lines
    reports = [
        json.loads(line) for path in out_dir.glob("ray/*/*/result.json") for line in path.read_text().splitlines()
    ]
    assert any("val_ppl" in r for r in reports)
    # (forwarding them made a tiny rl trial take twice as long; the filter is by split, for every task)
    assert not [k for r in reports for k in r if k.startswith(("train_", "optim_"))]
    assert all({"train", "optim"} <= {m["split"] for m in read_metrics(out_dir / "runs" / "llm" / i)} for i in runs)
    assert len(reports) == 2 * (3 + 4 + 1)  # per trial: evaluations at 0, 10, 20; checkpoints every 5; the end
    # the same spec through the local runner gives the same numbers
    local = tmp_path / "local"
    argv = ["run", "--task", "llm", "--opt", "adamw", "--seed", "1", "--set", "opt.beta2=0.99", "--out", str(local)]
    for s in SPEED:
        argv += ["--set", s]
    assert main(argv) == 0
    (local_summary,) = _summaries(local).values()
    assert local_summary["value"] == runs[local_summary["run_id"]]["value"]
    # a second identical sweep has nothing left to do
    capsys.readouterr()
    argv = _sweep_argv(out_dir, "--opt", "adamw", "--seeds", "1", "--grid", "opt.beta2=0.99,0.999")
    assert main(argv) == 0
    assert "2 already complete, 0 to run" in capsys.readouterr().out

    # Complete means complete by the current code, for a sweep too: a run made by other code is set
    # aside and re-run, not counted as done (the lifecycle's rule, suite/lifecycle.py).
    path = out_dir / "runs" / "llm" / local_summary["run_id"] / "summary.json"
    record = read_json(path)
    current = record["code"]["id"]
    record["code"]["id"] = "0" * 12  # as if another version of the code had made it
    path.write_text(json.dumps(record))
    assert main(argv) == 0
    assert "sweep: 2 runs, 1 already complete, 1 to run (1 complete by other code, re-run)" in capsys.readouterr().out
    assert read_json(path)["code"]["id"] == current and read_json(path)["value"] == local_summary["value"]
    (kept,) = out_dir.glob("superseded/llm/*")
    assert read_json(kept / "summary.json")["code"]["id"] == "0" * 12


def test_a_crashing_trial_is_retried_from_its_checkpoint_and_completes(out_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SPAMBENCH_CRASH_ONCE", f"13:{tmp_path / 'faults'}")
    assert main(_sweep_argv(out_dir, "--opt", "adamw", "--seeds", "0")) == 0
    (summary,) = _summaries(out_dir).values()
    assert summary["status"] == "complete" and summary["steps"] == 20
    assert (tmp_path / "faults" / f"{summary['run_id']}.crashed").read_text() == "13\n"
    steps = [
        m["step"]
        for m in read_metrics(out_dir / "runs" / "llm" / summary["run_id"])
        if m["name"] == "loss" and m["split"] == "train"
    ]
    assert steps == list(range(1, 21)), "a retry must neither lose nor repeat metrics"


def test_a_killed_sweep_resumes_with_every_run_exactly_once(tmp_path):
    out = tmp_path / "out"
    argv = _sweep_argv(
        out,
        "--opt",
        "adamw",
        "--seeds",
        "0-2",
        "--max-concurrent",
        "1",
        sets=small_llm_sets(steps=100, eval_every=50, checkpoint_every=10),
    )
    cmd = [sys.executable, "-m", "spam_bench.runners.cli", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def mid_run() -> bool:
        """One run complete and another one checkpointed but unfinished."""
        dirs = list(out.glob("runs/llm/*"))
        done = [d for d in dirs if (d / "summary.json").exists()]
        started = [d for d in dirs if not (d / "summary.json").exists() and (d / "checkpoint.pt").exists()]
        return bool(done) and bool(started)

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not mid_run():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray
    proc.wait()
    done_before = len(_summaries(out))
    assert 1 <= done_before < 3, "the kill must land mid-sweep"
    assert main([*argv, "--resume"]) == 0
    runs = _summaries(out)
    assert len(runs) == 3 and all(s["status"] == "complete" and s["steps"] == 100 for s in runs.values())
    for run_id in runs:
        steps = [
            m["step"]
            for m in read_metrics(out / "runs" / "llm" / run_id)
            if m["split"] == "train" and m["name"] == "loss"
        ]
        assert steps == list(range(1, 101))
