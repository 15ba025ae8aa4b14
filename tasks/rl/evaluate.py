"""Evaluation as rl-zoo does it: a separate env, deterministic actions, whole episodes.

Episode i of every evaluation starts from the same reset seed, so successive evaluations differ only
by the policy (common random numbers), and no evaluation state needs checkpointing.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
from stable_baselines3.common.policies import BasePolicy


def episode_seed(run_seed: int, episode: int) -> int:
    return 1_000_003 * (run_seed + 1) + episode  # disjoint from the training envs' seeds (run_seed + i)


def evaluate(
    policy: BasePolicy, normalize: Callable[[np.ndarray], np.ndarray], env: gym.Env, episodes: int, run_seed: int
) -> list[float]:
    """Undiscounted raw returns of `episodes` deterministic episodes."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=episode_seed(run_seed, i))
        total, done = 0.0, False
        while not done:
            action, _ = policy.predict(normalize(obs), deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def curve_auc(steps: list[int], values: list[float]) -> float:
    """Area under the evaluation curve (trapezoids) divided by its span: the curve's time-averaged return."""
    if len(steps) < 2 or steps[-1] == steps[0]:
        return float(values[-1]) if values else float("nan")
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))
