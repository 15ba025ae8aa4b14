"""`rl`: PPO on MuJoCo with the optimizer swapped (docs/spam.md#ppo-on-mujoco).

stable-baselines3's PPO with rl-zoo's tuned recipe per environment (HalfCheetah-v5 by default,
Hopper-v5, Ant-v5); only the optimizer changes between runs. Primary metric: mean return of the
final deterministic evaluation (higher is better). Scales: `tiny` (CPU minutes) and `paper` (1M steps).
"""

from __future__ import annotations

from pathlib import Path

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.task_base import TaskBase
from spam_bench.tasks.rl.config import RLConfig


class RLTask(TaskBase):
    def budget(self, config: RLConfig) -> int:
        """Environment steps: the unit rl's evaluations are logged at."""
        return config.total_timesteps

    def run(self, ctx: RunContext) -> TaskResult:
        from spam_bench.tasks.rl.train import Trainer  # SB3 and MuJoCo load only when an rl run starts

        return Trainer(ctx).fit()


TASK = RLTask(
    name="rl",
    description="PPO on MuJoCo, rl-zoo recipe, optimizer swapped (tiny: HalfCheetah on CPU; paper: 1M steps)",
    config_cls=RLConfig,
    primary_metric="eval_return",
    direction="max",
    config_dir=Path(__file__).parent / "configs",
    libraries=("stable-baselines3", "gymnasium", "mujoco"),
)
