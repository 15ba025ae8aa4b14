"""The `rl` task's configuration; the scales in configs/*.yaml set the budget, rl-zoo sets the recipe.

Every PPO field defaults to `ZOO`: rl-zoo's tuned value for the chosen `env` (tasks/rl/zoo.py), filled
in when the config is built, so `--set env=Hopper-v5` switches the whole recipe and spec.json records
the effective numbers. Any of them can still be overridden with `--set`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from spam_bench.suite.config import param
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.spike_config import RunFields
from spam_bench.tasks.rl.zoo import ENV_IDS, PPO_HYPERPARAMS

ZOO = "zoo"  # "take rl-zoo's value for `env`"; replaced by a number before anyone reads the field


@dataclass
class RLConfig(RunFields):
    # --- environment and budget ---
    env: str = param("HalfCheetah-v5", "gymnasium MuJoCo environment.", choices=ENV_IDS)
    total_timesteps: int = param(
        1_000_000, "Training budget in environment steps (rounded up to whole rollouts).", ge=1
    )
    # --- evaluation (a separate env, deterministic actions, as rl-zoo evaluates) ---
    eval_every: int = param(
        10_000,
        "Evaluate every this many environment steps (at the next rollout boundary), at step 0 and at the end.",
        ge=1,
    )
    eval_episodes: int = param(
        10, "Episodes per evaluation; episode i starts from the same seed every time.", ge=1, le=1000
    )
    checkpoint_every: int = param(
        10_000,
        "Checkpoint every this many environment steps (at the next rollout boundary), at the end and on Ctrl-C.",
        ge=1,
    )
    # --- PPO, from rl-zoo (tasks/rl/zoo.py) unless set ---
    lr: float = param(ZOO, "Adam's tuned learning rate, given to every optimizer (constant, as in the zoo).", gt=0.0)
    n_envs: int = param(ZOO, "Parallel training environments (the zoo uses 1).", ge=1)
    n_steps: int = param(ZOO, "Environment steps per env per rollout.", ge=1)
    batch_size: int = param(ZOO, "Minibatch size of the PPO update.", ge=2)
    n_epochs: int = param(ZOO, "Passes over each rollout.", ge=1)
    gamma: float = param(ZOO, "Discount (also VecNormalize's return discount, as in the zoo).", gt=0.0, le=1.0)
    gae_lambda: float = param(ZOO, "GAE lambda.", ge=0.0, le=1.0)
    clip_range: float = param(ZOO, "PPO ratio clip.", gt=0.0)
    ent_coef: float = param(ZOO, "Entropy bonus coefficient.", ge=0.0)
    vf_coef: float = param(ZOO, "Value-loss coefficient.", ge=0.0)
    grad_clip: float | None = param(
        ZOO,
        "The recipe's global-norm gradient clip (PPO's max_grad_norm); none turns "
        "it off (the ablation that leaves clipping to SPAM). The suite's one clip rule "
        "applies it with the optimizer's own clip, if any: the tighter wins.",
        gt=0.0,
    )
    normalize: bool = param(ZOO, "VecNormalize observations and rewards (the zoo does for all three envs).")
    log_std_init: float = param(ZOO, "Initial log standard deviation of the Gaussian policy.")
    ortho_init: bool = param(ZOO, "Orthogonal initialisation of the networks.")
    activation: str = param(ZOO, "Hidden activation: relu or tanh.")
    hidden_sizes: tuple[int, ...] = param(ZOO, "Hidden widths of the separate policy and value MLPs.")

    def __post_init__(self) -> None:
        recipe = dict(PPO_HYPERPARAMS.get(self.env, {}))
        recipe["grad_clip"] = recipe.pop("max_grad_norm", None)  # the zoo's name for the recipe's clip
        for f in dataclasses.fields(self):
            if f.name in recipe and isinstance(getattr(self, f.name), str) and getattr(self, f.name) == ZOO:
                setattr(self, f.name, recipe[f.name])

    def validate(self) -> None:
        if self.activation not in ("relu", "tanh"):
            raise ConfigError("activation", self.activation, ("relu", "tanh"))
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ConfigError("hidden_sizes", self.hidden_sizes, "comma-separated widths >= 1")
        rollout = self.n_steps * self.n_envs
        if self.batch_size > rollout:
            raise ConfigError("batch_size", self.batch_size, f"<= n_steps x n_envs = {rollout}")
