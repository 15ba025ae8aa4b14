"""The rl task's configuration: rl-zoo's recipe per env, overrides, and one-line errors."""

import pytest

from spam_bench.runners.cli import main
from spam_bench.suite.resolve import resolve
from spam_bench.tasks.rl.zoo import PPO_HYPERPARAMS

ZOO_NAMES = {"max_grad_norm": "grad_clip"}  # the zoo's name -> the suite's (the recipe's clip)


@pytest.mark.parametrize("env", sorted(PPO_HYPERPARAMS))
def test_every_ppo_field_comes_from_the_zoo_recipe_of_the_chosen_env(env):
    config = resolve(task="rl", optimizer="adamw", sets={"env": env}).config
    for name, value in PPO_HYPERPARAMS[env].items():
        assert getattr(config, ZOO_NAMES.get(name, name)) == value, name


def test_tiny_is_halfcheetah_with_the_tuned_recipe_and_its_grad_clip():
    run = resolve(task="rl", optimizer="adamw")
    c = run.config
    assert (c.env, c.lr, c.n_steps, c.batch_size, c.n_epochs) == ("HalfCheetah-v5", 2.0633e-05, 512, 64, 20)
    assert c.grad_clip == 0.8
    assert run.record()["task_config"]["grad_clip"] == 0.8  # the effective value is what spec.json records


def test_paper_scale_is_one_million_steps_with_a_hundred_evaluation_points():
    c = resolve(task="rl", optimizer="adamw", scale="paper").config
    assert c.total_timesteps == 1_000_000 and c.total_timesteps // c.eval_every == 100


def test_a_set_value_overrides_the_zoo_and_none_turns_clipping_off():
    c = resolve(task="rl", optimizer="adamw", sets={"env": "Hopper-v5", "lr": "1e-4", "grad_clip": "none"}).config
    assert (c.lr, c.grad_clip, c.gamma, c.batch_size) == (1e-4, None, 0.999, 32)
    assert c.hidden_sizes == (256, 256) and c.activation == "relu"


BAD = [
    ("env=Pong-v5", "env: invalid value 'Pong-v5' (allowed: one of HalfCheetah-v5, Hopper-v5, Ant-v5)"),
    ("grad_clip=0", "grad_clip: invalid value 0.0 (allowed: float > 0.0)"),
    ("batch_size=1024", "batch_size: invalid value 1024 (allowed: <= n_steps x n_envs = 512)"),
    ("activation=gelu", "activation: invalid value 'gelu' (allowed: one of relu, tanh)"),
]


@pytest.mark.parametrize("assignment,expected", BAD, ids=[b[0].split("=")[0] for b in BAD])
def test_bad_value_is_one_line_exit_2_and_writes_nothing(assignment, expected, out_dir, capsys):
    code = main(["run", "--task", "rl", "--opt", "adamw", "--set", assignment, "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("spambench: error: ")
    assert expected in err
    assert not out_dir.exists()
