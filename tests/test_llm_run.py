"""The llm task end to end on the real tiny corpus: training, the store, resume, divergence."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import small_llm_sets

from spam_bench.reports.build import write_leaderboard
from spam_bench.runners.cli import main
from spam_bench.suite.results import read_json, read_metrics

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` skips them


def _run(out_dir, *sets, opt="adamw", extra=()):
    argv = ["run", "--task", "llm", "--opt", opt, "--out", str(out_dir), *extra]
    for s in sets:
        argv += ["--set", s]
    return main(argv)


def _only_run_dir(out_dir):
    (run_dir,) = (out_dir / "runs" / "llm").iterdir()
    return run_dir


def _curve(run_dir):
    return [(m["step"], m["split"], m["name"], m["value"]) for m in read_metrics(run_dir)]


def test_tiny_run_trains_and_writes_a_complete_run_folder(out_dir, capsys):
    assert _run(out_dir, *small_llm_sets()) == 0
    run_dir = _only_run_dir(out_dir)
    assert {p.name for p in run_dir.iterdir()} >= {"spec.json", "metrics.jsonl", "summary.json"}
    assert not (run_dir / "checkpoint.pt").exists()  # a complete run drops it (--keep-checkpoint keeps it)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "complete" and summary["steps"] == 30
    assert summary["primary_metric"] == "val_ppl" and summary["direction"] == "min"
    train = [v for _, split, name, v in _curve(run_dir) if split == "train" and name == "loss"]
    assert len(train) == 30 and sum(train[-5:]) / 5 < sum(train[:5]) / 5 - 0.5  # the loss clearly falls
    assert summary["value"] < 2048  # better than a uniform guess over the vocabulary
    # AdamW keeps fp32 m and v per parameter, plus a 4-byte step per tensor (12 tensors in a 1-layer model)
    assert summary["optimizer_state_bytes"] == 2 * 4 * summary["n_params"] + 4 * (3 + 9 * 1)
    assert summary["peak_memory_bytes"] > 0 and summary["tokens_per_s"] > 0
    spec = read_json(run_dir / "spec.json")
    assert spec["task_config"]["steps"] == 30 and spec["optimizer_config"]["eps"] == 1e-8
    assert "val_ppl = " in capsys.readouterr().out


def test_a_complete_run_is_not_recomputed_unless_forced(out_dir, capsys):
    assert _run(out_dir, *small_llm_sets(steps=10)) == 0
    run_dir = _only_run_dir(out_dir)
    first = (run_dir / "summary.json").read_text()
    assert _run(out_dir, *small_llm_sets(steps=10)) == 0
    assert "already complete" in capsys.readouterr().out
    assert (run_dir / "summary.json").read_text() == first
    assert _run(out_dir, *small_llm_sets(steps=10), extra=["--force"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["value"] == json.loads(first)["value"]


def test_an_absurd_learning_rate_is_recorded_as_diverged_not_a_crash(out_dir):
    assert _run(out_dir, *small_llm_sets(lr=1e30, lr_warmup_steps=0)) == 0
    summary = read_json(_only_run_dir(out_dir) / "summary.json")
    assert summary["status"] == "diverged" and summary["value"] is None
    assert 1 <= summary["diverged_step"] < 30
    _, report_dir = write_leaderboard(out_dir, plots=False)
    assert "| adamw | – | – | 1 | 1 |" in (report_dir / "summary.md").read_text()


def test_report_summarises_seeds_per_optimizer(out_dir):
    for seed in ("0", "1"):
        assert _run(out_dir, *small_llm_sets(steps=10), extra=["--seed", seed]) == 0
    _, report_dir = write_leaderboard(out_dir, plots=False)
    markdown = (report_dir / "summary.md").read_text()
    assert "## llm (tiny;" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| adamw |"))
    assert row.split("|")[4].strip() == "2"  # two seeds
    import pandas as pd

    long = pd.read_parquet(report_dir / "results.parquet")
    assert set(long["seed"]) == {0, 1} and {"train", "val", "final"} <= set(long["split"])


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    sets = small_llm_sets(steps=400, checkpoint_every=1000)  # only the interrupt can write a checkpoint
    cmd = [
        sys.executable,
        "-m",
        "spam_bench.runners.cli",
        "run",
        "--task",
        "llm",
        "--opt",
        "adamw",
        "--out",
        str(tmp_path),
    ]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.stat().st_size for p in tmp_path.glob("runs/llm/*/metrics.jsonl")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" in err and "from its checkpoint" in err and "Traceback" not in err
    run_dir = _only_run_dir(tmp_path)
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists()
    steps = {m["step"] for m in read_metrics(run_dir)}
    assert 0 < max(steps) < 400
