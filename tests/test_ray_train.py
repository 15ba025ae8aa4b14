"""Sweeps whose trials train data-parallel on Ray Train workers (`sweep --workers-per-trial N`, on a real
embedded Ray, gloo on CPU): the run lands once, as the one-process run's numbers, and Tune hears rank 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import small_llm_sets

from spam_bench.runners.cli import main
from spam_bench.suite.results import read_json, read_metrics

pytestmark = pytest.mark.slow  # end-to-end; the Ray Train run is also `cluster` (`make test-cluster`)

SETS = small_llm_sets(steps=20, eval_every=10)


def _argv(command: str, out: Path, *extra: str) -> list[str]:
    argv = [command, "--task", "llm", "--opt", "adamw", "--out", str(out), *extra]
    for item in SETS:
        argv += ["--set", item]
    return argv


def _losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["value"] for m in read_metrics(run_dir) if (m["split"], m["name"]) == ("train", "loss")}


@pytest.mark.cluster
def test_two_workers_per_trial_land_the_one_process_run(tmp_path):
    swept = tmp_path / "swept"
    assert main(_argv("sweep", swept, "--workers-per-trial", "2", "--cpus-per-trial", "1")) == 0
    (two,) = (p.parent for p in swept.glob("runs/llm/*/summary.json"))  # one run folder: rank 0's
    assert main(_argv("run", tmp_path / "local")) == 0
    (one,) = (p.parent for p in (tmp_path / "local").glob("runs/llm/*/summary.json"))
    assert one.name == two.name  # the world size is not part of the run's identity
    s1, s2 = read_json(one / "summary.json"), read_json(two / "summary.json")
    assert (s1["world_size"], s2["world_size"], s2["status"]) == (1, 2, "complete")
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    # Tune heard rank 0's evaluations as they came (relayed), the final status, and no per-step lines
    reports = [json.loads(line) for p in swept.glob("ray/*/*/result.json") for line in p.read_text().splitlines()]
    assert [r["step"] for r in reports if "val_ppl" in r] == [0, 10, 20]
    assert reports[-1]["done"] and reports[-1]["world_size"] == 2 and reports[-1]["run_id"] == two.name
    assert not [k for r in reports for k in r if k.startswith(("train_", "optim_"))]


@pytest.mark.parametrize(
    "task,workers,expected",
    [
        (
            "spikes",
            "2",
            "workers-per-trial: invalid value 2 (allowed: 1 for task spikes (data-parallel tasks: llm, llm4bit))",
        ),
        ("llm", "3", "workers-per-trial: invalid value 3 (allowed: a divisor of batch_size=8)"),
        ("llm", "0", "workers-per-trial: invalid value 0 (allowed: an int from 1 to 1024)"),
    ],
)
def test_a_worker_count_the_runs_cannot_use_is_refused_in_one_line_before_ray_starts(
    task, workers, expected, tmp_path, capsys
):
    argv = ["sweep", "--task", task, "--opt", "adamw", "--out", str(tmp_path / "out"), "--workers-per-trial", workers]
    if task == "llm":
        for item in SETS:
            argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"spambench: error: {expected}\n"
    assert not (tmp_path / "out" / "ray").exists() and not list((tmp_path / "out").glob("runs/*/*"))
