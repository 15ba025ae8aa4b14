"""`rl`: PPO on MuJoCo with the optimizer swapped (SPAM.md §2, §3.4).

stable-baselines3's PPO with rl-zoo's tuned recipe per environment (HalfCheetah-v5 by default,
Hopper-v5, Ant-v5); only the optimizer changes between runs. Primary metric: mean return of the
final deterministic evaluation (higher is better). Scales: `tiny` (CPU minutes) and `paper` (1M steps).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from spam_bench.tasks.base import TaskBase
from spam_bench.tasks.rl.config import RLConfig


class RLTask(TaskBase):
    def run(self, run: Any, recorder: Any) -> dict[str, Any]:
        from spam_bench.tasks.rl.train import Trainer  # SB3 and MuJoCo load only when an rl run starts

        return Trainer(run, recorder).fit()


TASK = RLTask(
    name="rl",
    description="PPO on MuJoCo, rl-zoo recipe, optimizer swapped (tiny: HalfCheetah on CPU; paper: 1M steps)",
    config_cls=RLConfig,
    primary_metric="eval_return",
    direction="max",
    config_dir=Path(__file__).parent / "configs",
)
