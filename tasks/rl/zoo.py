"""rl-zoo's tuned PPO hyperparameters, the recipe every optimizer in the `rl` task is run with.

Source: DLR-RM/rl-baselines3-zoo, `hyperparams/ppo.yml` (commit 208b6fd), entries `HalfCheetah-v4`
and `Hopper-v4` (tuned, "10 mujoco envs") and `Ant-v4` (`&mujoco-defaults`: normalize, 1M steps, SB3's
PPO defaults; the tuned Ant entry is commented out there). The zoo has no v5 entries; gymnasium's v5
envs are the v4 dynamics with fixes (gymnasium docs), so the v4 recipes are applied unchanged. The zoo
publishes PPO HalfCheetah-v3 5819 +- 664 and Hopper-v3 2410 +- 10 at 1M steps (`benchmark.md`).

Only the optimizer changes between runs; everything here stays as the zoo tuned it for Adam.
"""

from __future__ import annotations

from typing import Any

# `policy_kwargs` of the tuned entries: dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU,
# net_arch=dict(pi=[256, 256], vf=[256, 256])).
_TUNED_POLICY = {"log_std_init": -2.0, "ortho_init": False, "activation": "relu", "hidden_sizes": (256, 256)}

PPO_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "HalfCheetah-v5": {
        "normalize": True,
        "n_envs": 1,
        "n_steps": 512,
        "batch_size": 64,
        "n_epochs": 20,
        "lr": 2.0633e-05,
        "gamma": 0.98,
        "gae_lambda": 0.92,
        "clip_range": 0.1,
        "ent_coef": 0.000401762,
        "vf_coef": 0.58096,
        "max_grad_norm": 0.8,
        **_TUNED_POLICY,
    },
    "Hopper-v5": {
        "normalize": True,
        "n_envs": 1,
        "n_steps": 512,
        "batch_size": 32,
        "n_epochs": 5,
        "lr": 9.80828e-05,
        "gamma": 0.999,
        "gae_lambda": 0.99,
        "clip_range": 0.2,
        "ent_coef": 0.00229519,
        "vf_coef": 0.835671,
        "max_grad_norm": 0.7,
        **_TUNED_POLICY,
    },
    # `normalize: true` on top of stable-baselines3 2.x PPO's own defaults (MlpPolicy: 64x64 tanh,
    # orthogonal init, log_std 0).
    "Ant-v5": {
        "normalize": True,
        "n_envs": 1,
        "n_steps": 2048,
        "batch_size": 64,
        "n_epochs": 10,
        "lr": 3e-4,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "clip_range": 0.2,
        "ent_coef": 0.0,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "log_std_init": 0.0,
        "ortho_init": True,
        "activation": "tanh",
        "hidden_sizes": (64, 64),
    },
}

ENV_IDS: tuple[str, ...] = tuple(PPO_HYPERPARAMS)
