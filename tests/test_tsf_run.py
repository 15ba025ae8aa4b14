"""The tsf task end to end on real offline data: each estimator, our optimizer, resume, determinism, divergence."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from spam_bench.optimizers import adamw
from spam_bench.runners.cli import main
from spam_bench.suite.registry import OPTIMIZERS, OptimizerSpec
from spam_bench.suite.results import read_json, read_metrics
from spam_bench.tasks.tsf import TASK

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` skips them

# A few seconds per run: a small model, 2 epochs x 10 batches on statsmodels' fertility series.
SMALL = {
    "epochs": 2,
    "num_batches_per_epoch": 10,
    "batch_size": 16,
    "d_model": 16,
    "dim_feedforward": 32,
    "num_layers": 1,
    "threads": 1,
}


def _sets(**changes):
    return [f"{k}={v}" for k, v in {**SMALL, **changes}.items()]


def _argv(out_dir, *sets, opt="adamw", seed=0):
    argv = ["run", "--task", "tsf", "--opt", opt, "--seed", str(seed), "--out", str(out_dir)]
    for s in sets:
        argv += ["--set", s]
    return argv


def _only_run_dir(out_dir):
    (run_dir,) = (out_dir / "runs" / "tsf").iterdir()
    return run_dir


def _curve(run_dir):
    return [(m["step"], m["split"], m["name"], m["value"]) for m in read_metrics(run_dir)]


def _mse_of_forecasting_zero():
    from spam_bench.suite.config import build_config, load_yaml
    from spam_bench.tasks.tsf.config import TSFConfig
    from spam_bench.tasks.tsf.data import prepare

    data = prepare(build_config(TSFConfig, load_yaml(TASK.scale_path("tiny"))), seed=0)
    return float(np.mean(np.concatenate([label["target"] for label in data.test.label]) ** 2))


@pytest.mark.parametrize("model", ["patchtst", "deepar", "simple_feedforward"])
def test_tiny_run_of_each_estimator_trains_and_beats_a_constant_forecast(model, out_dir):
    assert main(_argv(out_dir, *_sets(model=model))) == 0
    run_dir = _only_run_dir(out_dir)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "complete" and summary["model"] == model
    assert summary["primary_metric"] == "test_mse" and summary["direction"] == "min"
    assert summary["steps"] == 20 and summary["lr_schedule"] == "constant" and summary["early_stopping"] is False
    assert summary["n_series"] == 192 and summary["n_test_windows"] == 576
    assert 0 < summary["value"] == summary["test_mse"] < _mse_of_forecasting_zero()
    for key in ("test_mae", "test_mase", "test_smape", "test_wql", "test_nd", "test_nrmse"):
        assert summary[key] > 0
    assert 0 < summary["optimizer_state_bytes"] <= 2 * 4 * summary["n_params"] + 4 * 64  # AdamW: fp32 m and v
    train = [(s, v) for s, split, name, v in _curve(run_dir) if split == "train" and name == "loss"]
    assert [s for s, _ in train] == list(range(1, 21))
    assert any(split == "test" and name == "mse" for _, split, name, _ in _curve(run_dir))


def test_patchtst_on_squared_error_with_instance_norm_as_the_papers_train_it(out_dir, capsys):
    from spam_bench.tasks.tsf.point_head import SquaredErrorOutput

    # the head's loss is the squared error of the point scaled back to the data's units
    target, point = torch.tensor([[1.0, -2.0]]), torch.tensor([[[0.5], [0.25]]])
    loc, scale = torch.tensor([[0.5]]), torch.tensor([[2.0]])
    expected = (target - (point.squeeze(-1) * scale + loc)) ** 2
    assert torch.equal(SquaredErrorOutput().loss(target, (point,), loc=loc, scale=scale), expected)

    assert main(_argv(out_dir, *_sets(loss="mse", scaling="std"))) == 0
    summary = read_json(_only_run_dir(out_dir) / "summary.json")
    assert summary["status"] == "complete" and (summary["loss"], summary["scaling"]) == ("mse", "std")
    assert 0 < summary["value"] == summary["test_mse"] < _mse_of_forecasting_zero()
    # a point forecast stands at every quantile level, so the weighted quantile loss is the ND
    assert summary["test_wql"] == pytest.approx(summary["test_nd"], rel=1e-6)
    losses = [v for _, split, name, v in _curve(_only_run_dir(out_dir)) if split == "train" and name == "loss"]
    assert len(losses) == 20 and min(losses) >= 0  # a squared error (a Student-t NLL can go negative)

    capsys.readouterr()
    assert main(_argv(out_dir / "refused", *_sets(model="deepar", loss="mse"))) == 2
    assert (
        capsys.readouterr().err == "spambench: error: loss: invalid value 'mse' (allowed: nll unless model=patchtst)\n"
    )


def test_the_suite_optimizer_is_the_one_stepping(out_dir):
    created, steps = [], []

    def make(model, model_info, **kwargs):
        opt = adamw.make(model, model_info, **kwargs)
        opt.register_step_post_hook(lambda o, args, kw: steps.append(o))
        created.append(opt)
        return opt

    OPTIMIZERS.register(
        "adamw_counted",
        OptimizerSpec(name="adamw_counted", factory=make, config_cls=adamw.AdamWConfig, description="test"),
    )
    assert main(_argv(out_dir, *_sets(), opt="adamw_counted")) == 0
    summary = read_json(_only_run_dir(out_dir) / "summary.json")
    (opt,) = created
    assert type(opt) is torch.optim.AdamW  # not gluonts' hard-coded Adam
    assert len(steps) == summary["steps"] == 20 and all(o is opt for o in steps)


def test_seeds_differ(tmp_path):
    """That one seed repeats exactly is the contract's kill-and-resume test (tests/test_contract.py)."""
    values = []
    for name, seed in (("a", 0), ("c", 1)):
        assert main(_argv(tmp_path / name, *_sets(), seed=seed)) == 0
        values.append(read_json(_only_run_dir(tmp_path / name) / "summary.json")["test_mse"])
    assert values[0] != values[1]


def test_anomalies_change_training_but_not_the_evaluation_windows(tmp_path):
    assert main(_argv(tmp_path / "clean", *_sets(anomaly_severity=0))) == 0
    assert main(_argv(tmp_path / "noisy", *_sets(anomaly_severity=5))) == 0
    clean, noisy = (read_json(_only_run_dir(tmp_path / n) / "summary.json") for n in ("clean", "noisy"))
    assert noisy["n_test_windows"] == clean["n_test_windows"] and noisy["test_mse"] != clean["test_mse"]


def test_an_absurd_learning_rate_is_recorded_as_diverged_not_a_crash(out_dir):
    assert main(_argv(out_dir, *_sets(lr=1e30))) == 0
    summary = read_json(_only_run_dir(out_dir) / "summary.json")
    assert summary["status"] == "diverged" and summary["value"] is None
    assert 1 <= summary["diverged_step"] <= 20


def _cli_command(out_dir, sets):
    argv = _argv(out_dir, *sets)
    return [sys.executable, "-m", "spam_bench.runners.cli", *argv]


def _wait_for_step(out_dir, proc, step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for metrics in out_dir.glob("runs/tsf/*/metrics.jsonl"):
            lines = [line for line in metrics.read_text().splitlines()[-3:] if line.endswith("}")]
            if any(json.loads(line)["step"] >= step for line in lines):
                return metrics.parent
        time.sleep(0.01)
    return None


def test_ctrl_c_finishes_the_epoch_saves_and_exits_130(tmp_path):
    proc = subprocess.Popen(
        _cli_command(tmp_path, _sets(epochs=50, num_batches_per_epoch=20)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = _wait_for_step(tmp_path, proc, 5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert run_dir is not None and proc.returncode == 130, err
    assert "from its checkpoint" in err and "Traceback" not in err
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists()
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert max(steps) % 20 == 0 and max(steps) < 1000  # stopped at an epoch end


def test_spam_trains_tsf(out_dir):
    pytest.importorskip("spam_bench.optimizers.spam")
    assert main(_argv(out_dir, *_sets(), opt="spam")) == 0
    summary = read_json(_only_run_dir(out_dir) / "summary.json")
    assert summary["status"] == "complete" and 0 < summary["test_mse"] < _mse_of_forecasting_zero()


def test_spike_telemetry_and_injection_reach_the_lightning_optimizer(out_dir):
    assert main(_argv(out_dir, *_sets(inject_step_fraction=0.2))) == 0
    (summary_path,) = out_dir.glob("runs/tsf/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["spikes_injected"] > 0 and summary["gss_spikes"]
    assert (summary_path.parent / "grad_samples.npz").exists()
