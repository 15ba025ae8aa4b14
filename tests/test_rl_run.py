"""The rl task end to end on real MuJoCo: PPO trains with the suite's optimizer, evaluates, resumes."""

import dataclasses
import json

import pytest
import torch
from stable_baselines3 import PPO

from spam_bench.optimizers.adamw import SPEC as ADAMW
from spam_bench.optimizers.adamw import make as make_adamw
from spam_bench.runners.cli import main
from spam_bench.suite.context import RunContext
from spam_bench.suite.interrupt import StopRequest
from spam_bench.suite.registry import OptimizerSpec
from spam_bench.suite.resolve import resolve
from spam_bench.suite.results import RunRecorder, read_json, read_metrics
from spam_bench.tasks.rl.train import Trainer

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` skips them

# Two 256-step rollouts per 512 steps, 8 optimizer steps each; one 1000-step evaluation episode.
SMALL = {
    "total_timesteps": 1024,
    "n_steps": 256,
    "batch_size": 64,
    "n_epochs": 2,
    "eval_every": 512,
    "eval_episodes": 1,
    "checkpoint_every": 256,
}
SPY: dict[str, list] = {"optimizers": [], "steps": [], "model_info": []}


def spy_spec(two_groups: bool = False) -> OptimizerSpec:
    """AdamW that remembers what it built and counts its steps (not registered: handed to the run)."""

    def make(model, model_info, *, lr, **hparams):
        if two_groups:  # log_std at a tenth of the base lr: a per-group scale SB3 must not flatten
            others = [p for n, p in model.named_parameters() if n != "log_std"]
            opt = torch.optim.AdamW([{"params": others}, {"params": [model.log_std], "lr": 0.1 * lr}], lr=lr)
        else:
            opt = make_adamw(model, model_info, lr=lr, **hparams)
        opt.register_step_post_hook(lambda *_: SPY["steps"].append(1))
        SPY["optimizers"].append(opt)
        SPY["model_info"].append(model_info)
        return opt

    return OptimizerSpec("spy", make, ADAMW.config_cls, "AdamW, observed")


def sets(**changes) -> dict[str, str]:
    return {k: str(v) for k, v in {**SMALL, **changes}.items()}


def cli(out_dir, opt="adamw", seed=0, **changes) -> int:
    argv = ["run", "--task", "rl", "--opt", opt, "--seed", str(seed), "--out", str(out_dir)]
    for k, v in sets(**changes).items():
        argv += ["--set", f"{k}={v}"]
    return main(argv)


def resolved(opt="adamw", **changes):
    return resolve(task="rl", optimizer=opt, sets=sets(**changes))  # `opt.<name>` keys go to the optimizer


def train(run_dir, opt="adamw", spec: OptimizerSpec | None = None, **changes) -> tuple[Trainer, dict]:
    """A run through the Trainer itself, to look at the objects it built; `spec` replaces adamw's plug-in."""
    run = resolved(opt, **changes)
    if spec is not None:
        run = dataclasses.replace(run, optimizer=spec)
    recorder = RunRecorder(run_dir, run.record())
    try:
        ctx = RunContext(run, recorder, StopRequest())
        trainer = Trainer(ctx)
        result = trainer.fit()
        return trainer, {**result.metrics, "value": result.value, "steps": result.steps, **ctx.measurements()}
    finally:
        recorder.close()


def only_run_dir(out_dir):
    (run_dir,) = (out_dir / "runs" / "rl").iterdir()
    return run_dir


def curve(run_dir):
    return [(m["step"], m["split"], m["name"], m["value"]) for m in read_metrics(run_dir)]


def metric(run_dir, split, name):
    return [(m["step"], m["value"]) for m in read_metrics(run_dir) if m["split"] == split and m["name"] == name]


SAME = (
    "value",
    "eval_returns",
    "eval_curve",
    "eval_auc",
    "steps",
    "updates",
    "optimizer_steps",
    "train_episode_return",
    "train_episodes",
)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "out"
    sb3_default_logdir = out.parent / "sb3-default-logger"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SB3_LOGDIR", str(sb3_default_logdir))  # where SB3's default logger would write
        assert cli(out) == 0
    assert not sb3_default_logdir.exists(), "SB3's default logger ran (it leaves a folder per run)"
    return only_run_dir(out)


def test_short_adamw_run_trains_evaluates_and_writes_a_complete_run_folder(short_run):
    assert {p.name for p in short_run.iterdir()} >= {"spec.json", "metrics.jsonl", "summary.json"}
    assert not (short_run / "checkpoint.pt").exists()  # a complete run drops it (--keep-checkpoint keeps it)
    s = read_json(short_run / "summary.json")
    assert s["status"] == "complete" and s["steps"] == 1024 and s["env"] == "HalfCheetah-v5"
    assert s["primary_metric"] == "eval_return" and s["direction"] == "max"
    assert [step for step, _ in metric(short_run, "eval", "return")] == [0, 512, 1024]
    assert s["value"] == metric(short_run, "eval", "return")[-1][1] == s["eval_returns"][0]
    assert s["eval_auc"] is not None and s["train_episodes"] == 1  # HalfCheetah episodes are 1000 steps
    assert metric(short_run, "train", "episode_return")[0][0] == 1000
    assert s["optimizer_steps"] == 4 * 8  # 4 rollouts x 2 epochs x 4 minibatches
    # fused AdamW: fp32 m and v per parameter plus a 4-byte step per tensor (13 tensors in the policy)
    assert s["optimizer_state_bytes"] == 2 * 4 * s["n_params"] + 4 * 13
    spec = read_json(short_run / "spec.json")
    assert spec["task_config"]["lr"] == 2.0633e-05 and spec["task_config"]["grad_clip"] == 0.8


def test_the_optimizer_that_steps_is_the_factorys(tmp_path):
    for seen in SPY.values():
        seen.clear()
    trainer, summary = train(tmp_path, spec=spy_spec())
    (built,) = SPY["optimizers"]
    assert trainer.model.policy.optimizer is built
    assert len(SPY["steps"]) == summary["optimizer_steps"] == 32
    roles = SPY["model_info"][0].roles
    assert roles["log_std"] == "other" and roles["mlp_extractor.policy_net.0.weight"] == "mlp"
    assert roles["action_net.weight"] == "output" and roles["value_net.bias"] == "bias"


def test_per_group_learning_rate_ratios_survive_sb3s_lr_updates(tmp_path):
    trainer, _ = train(tmp_path, spec=spy_spec(two_groups=True))
    lr = trainer.config.lr
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([lr, 0.1 * lr], rel=1e-12)
    PPO._update_learning_rate(trainer.model, trainer.optimizer)  # what stock SB3 does before every update
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [lr, lr]


def test_zoo_grad_clip_applies_by_default_and_none_turns_it_off(short_run, tmp_path):
    clipped = [v for _, v in metric(short_run, "train", "clipped_fraction")]
    assert read_json(short_run / "summary.json")["grad_clip"] == 0.8 and max(clipped) > 0
    assert cli(tmp_path, grad_clip="none", total_timesteps=512) == 0
    run_dir = only_run_dir(tmp_path)
    assert read_json(run_dir / "summary.json")["grad_clip"] is None
    assert {v for _, v in metric(run_dir, "train", "clipped_fraction")} == {0.0}
    assert max(v for _, v in metric(run_dir, "train", "grad_norm_max")) > 0.8  # it would have clipped


def test_two_runs_with_the_same_seed_are_identical(short_run, tmp_path):
    assert cli(tmp_path) == 0
    again = only_run_dir(tmp_path)
    assert curve(again) == curve(short_run)
    a, b = read_json(short_run / "summary.json"), read_json(again / "summary.json")
    assert all(a[k] == b[k] for k in SAME)


SPAM_SMALL = {"opt.density": 0.5, "opt.reset_interval": 10, "opt.warmup_steps": 4, "opt.clip_delay": 2}


@pytest.mark.parametrize("opt,hparams", [("spam", SPAM_SMALL)], ids=["spam"])  # adamw: the contract's kill test
def test_resume_from_a_mid_run_checkpoint_is_bit_identical(tmp_path, opt, hparams):
    if opt == "spam":
        pytest.importorskip("spam_bench.optimizers.spam")
    _, straight = train(tmp_path / "straight", opt=opt, **hparams)

    run = resolved(opt, **hparams)
    recorder = RunRecorder(tmp_path / "stopped", run.record())
    stop = StopRequest()
    trainer = Trainer(RunContext(run, recorder, stop))
    boundary = trainer.boundary

    def ctrl_c_at_512(*, final):  # what the first Ctrl-C does, at a chosen boundary
        stop.requested |= trainer.model.num_timesteps >= 512
        boundary(final=final)

    trainer.boundary = ctrl_c_at_512
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    recorder.close()
    assert max(m["step"] for m in read_metrics(tmp_path / "stopped")) == 512

    _, resumed = train(tmp_path / "stopped", opt=opt, **hparams)
    assert all(straight[k] == resumed[k] for k in SAME)
    assert curve(tmp_path / "straight") == curve(tmp_path / "stopped")


def test_hopper_runs_with_its_own_zoo_recipe(tmp_path):
    assert cli(tmp_path, env="Hopper-v5", total_timesteps=512, batch_size=32) == 0
    run_dir = only_run_dir(tmp_path)
    s, spec = read_json(run_dir / "summary.json"), read_json(run_dir / "spec.json")
    assert s["status"] == "complete" and s["env"] == "Hopper-v5" and s["train_episodes"] > 0
    assert (spec["task_config"]["gamma"], spec["task_config"]["grad_clip"]) == (0.999, 0.7)


def test_an_absurd_learning_rate_is_recorded_as_diverged_not_a_crash(tmp_path):
    assert cli(tmp_path, lr=1e30, grad_clip="none") == 0
    s = read_json(only_run_dir(tmp_path) / "summary.json")
    assert s["status"] == "diverged" and s["value"] is None and 0 < s["diverged_step"] <= 1024


def test_spike_telemetry_and_injection_reach_the_ppo_optimizer(tmp_path):
    assert cli(tmp_path, inject_step_fraction=0.1) == 0
    (summary_path,) = tmp_path.glob("runs/rl/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["spikes_injected"] > 0 and set(summary["gss_spikes"]) >= {"mlp", "output"}
    assert (summary_path.parent / "grad_samples.npz").exists()
