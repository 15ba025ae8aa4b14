"""The training and evaluation environments, and the snapshot of them a checkpoint holds.

Training: rl-zoo's setup, `make_vec_env` (a Monitor per env, so episode returns are the raw rewards)
under VecNormalize when the recipe normalizes. Evaluation: a separate plain env whose observations are
normalized with the training statistics, frozen.

gymnasium's MuJoCo envs pickle only their constructor arguments, so a checkpoint stores what determines
their future explicitly: the full MjData (positions, velocities, time, solver warm start), the env's
numpy Generator, and every wrapper's attributes (TimeLimit's step count, Monitor's running episode).
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from spam_bench.tasks.rl.config import RLConfig

# Everything VecNormalize learns or carries between steps (its own pickling drops `returns`).
_VECNORMALIZE_STATE = ("obs_rms", "ret_rms", "returns", "old_obs", "old_reward")


def _drop_known_deprecation_warning() -> None:
    """gymnasium's HalfCheetah/Ant XML uses `settotalmass`, which MuJoCo 4 reports as deprecated on every
    env creation; drop that one message, print every other MuJoCo warning (e.g. unstable simulation)."""

    def warn(message: str) -> None:
        if "settotalmass" not in message:
            print(f"MuJoCo WARNING: {message}", file=sys.stderr)

    mujoco.set_mju_user_warning(warn)


def make_train_env(config: RLConfig, seed: int) -> VecEnv:
    _drop_known_deprecation_warning()
    venv = make_vec_env(config.env, n_envs=config.n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    if config.normalize:
        venv = VecNormalize(venv, gamma=config.gamma)
    return venv


def make_eval_env(config: RLConfig) -> gym.Env:
    return gym.make(config.env)


def _wrapper_chain(env: gym.Env) -> tuple[list[gym.Wrapper], Any]:
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(env)
        env = env.env
    return chain, env


def env_state(venv: VecEnv) -> dict[str, Any]:
    """A deep copy of everything that decides what the training envs do next."""
    norm = venv if isinstance(venv, VecNormalize) else None
    dummy: DummyVecEnv = norm.venv if norm is not None else venv  # type: ignore[assignment]
    envs = []
    for env in dummy.envs:
        chain, base = _wrapper_chain(env)
        envs.append(
            {
                "wrappers": [copy.deepcopy({k: v for k, v in vars(w).items() if k != "env"}) for w in chain],
                "mjdata": copy.deepcopy(base.data),
                "np_random": copy.deepcopy(base.np_random.bit_generator.state),
            }
        )
    return {
        "envs": envs,
        "vecnormalize": None if norm is None else {k: copy.deepcopy(getattr(norm, k)) for k in _VECNORMALIZE_STATE},
    }


def restore_env_state(venv: VecEnv, state: dict[str, Any]) -> None:
    norm = venv if isinstance(venv, VecNormalize) else None
    dummy: DummyVecEnv = norm.venv if norm is not None else venv  # type: ignore[assignment]
    for env, saved in zip(dummy.envs, state["envs"], strict=True):
        chain, base = _wrapper_chain(env)
        for wrapper, attrs in zip(chain, saved["wrappers"], strict=True):
            vars(wrapper).update(attrs)
        mujoco.mj_copyData(base.data, base.model, saved["mjdata"])
        base.np_random.bit_generator.state = saved["np_random"]
    if norm is not None:
        for k, v in state["vecnormalize"].items():
            setattr(norm, k, v)


def normalizer(venv: VecEnv):
    """The training env's observation normalization (read, never updated), for the evaluation env."""
    if isinstance(venv, VecNormalize):
        return venv.normalize_obs
    return lambda obs: np.asarray(obs, dtype=np.float32)
