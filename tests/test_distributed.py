"""Data-parallel runs (`spambench run --nproc 2`, torchrun + DDP on gloo): the same numbers as one
process at the same global batch, a crashed run resumes, and what cannot be split is refused up front."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import small_llm_sets

from spam_bench.runners.cli import main
from spam_bench.suite.results import read_json, read_metrics

# spam_sparse: SPAM's random masks and its reset schedule. If any rank drew other masks, its
# parameters would drift from rank 0's, the averaged gradients would leave the one-process path,
# and the curves below would part by far more than summation order.
OPT = "spam_sparse"
SETS = small_llm_sets(batch_size=8, steps=16, checkpoint_every=4)


def _argv(out: Path, *extra: str) -> list[str]:
    argv = ["run", "--task", "llm", "--opt", OPT, "--out", str(out), *extra]
    for item in SETS:
        argv += ["--set", item]
    return argv


def _cli(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "spam_bench.runners.cli", *_argv(out, *extra)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


def _run_dir(out: Path) -> Path:
    (summary,) = out.glob("runs/llm/*/summary.json")
    return summary.parent


def _losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["value"] for m in read_metrics(run_dir) if (m["split"], m["name"]) == ("train", "loss")}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "two"
    done = _cli(out, "--nproc", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("val_ppl =") == 1  # rank 0 alone reports
    return _run_dir(out)


@pytest.mark.slow
@pytest.mark.cluster
def test_two_processes_train_the_one_process_run_up_to_summation_order(two_processes, tmp_path):
    assert main(_argv(tmp_path / "one")) == 0
    one, two = _run_dir(tmp_path / "one"), two_processes
    assert one.name == two.name  # the world size is not part of what is computed: the same run id
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 17))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    s1, s2 = read_json(one / "summary.json"), read_json(two / "summary.json")
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    assert s2["value"] == pytest.approx(s1["value"], rel=1e-4)
    assert s2["reset_steps"] == s1["reset_steps"] and s2["optimizer_steps"] == s1["optimizer_steps"] == 16


@pytest.mark.slow
@pytest.mark.cluster
def test_a_crashed_data_parallel_run_resumes_to_the_uninterrupted_numbers(two_processes, tmp_path):
    env = {"SPAMBENCH_CRASH_ONCE": f"10:{tmp_path / 'markers'}"}
    crashed = _cli(tmp_path / "killed", "--nproc", "2", env=env)
    assert crashed.returncode != 0 and "injected fault" in crashed.stderr  # torchrun stopped the other rank
    resumed = _cli(tmp_path / "killed", "--nproc", "2", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    killed = _run_dir(tmp_path / "killed")
    assert _losses(killed) == _losses(two_processes)
    assert read_json(killed / "summary.json")["value"] == read_json(two_processes / "summary.json")["value"]


@pytest.mark.parametrize(
    "task,nproc,expected",
    [
        (
            "spikes",
            "2",
            "spambench: error: nproc: invalid value 2 (allowed: 1 for task spikes (data-parallel tasks: llm, llm4bit))",
        ),
        ("llm", "3", "spambench: error: nproc: invalid value 3 (allowed: a divisor of batch_size=8)"),
        ("llm", "0", "spambench: error: nproc: invalid value 0 (allowed: an int from 1 to 1024)"),
    ],
)
def test_a_world_the_run_cannot_use_is_refused_in_one_line_before_any_process_starts(
    task, nproc, expected, tmp_path, capsys
):
    argv = ["run", "--task", task, "--opt", "adamw", "--out", str(tmp_path / "out"), "--nproc", nproc]
    if task == "llm":
        for item in SETS:
            argv += ["--set", item]
    assert main(argv) == 2
    assert capsys.readouterr().err == expected + "\n"
    assert not (tmp_path / "out").exists()
