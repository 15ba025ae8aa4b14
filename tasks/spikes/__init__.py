"""`spikes`: a seconds-long stochastic problem with heavy-tailed noise and injected 1000x gradient
spikes (docs/spam.md#synthetic-spikes), for ablations of SPAM's mechanisms and sweeps of its reset interval and
threshold. Primary metric: the final full objective (lower is better); the summary adds the
robustness score (final objective with injection / without) and the mean steps to recover.
"""

from __future__ import annotations

from pathlib import Path

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.task_base import TaskBase
from spam_bench.tasks.spikes.config import SpikesConfig


class SpikesTask(TaskBase):
    checkpoints = False  # runs take seconds: an interrupted one restarts from scratch (train.py)

    def run(self, ctx: RunContext) -> TaskResult:
        from spam_bench.tasks.spikes.train import fit

        return fit(ctx)


TASK = SpikesTask(
    name="spikes",
    description="Noisy quadratic / logistic regression with injected 1000x gradient spikes (seconds on CPU)",
    config_cls=SpikesConfig,
    primary_metric="objective",
    direction="min",
    config_dir=Path(__file__).parent / "configs",
)
