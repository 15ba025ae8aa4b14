"""`tsf`: time-series forecasting with gluonts (PatchTST by default), the follow-up paper's fourth domain.

Primary metric: test MSE of the mean forecast on standardised series over rolling test windows
(lower is better): the loss PatchTST's tables and the follow-up paper's Figure 9 report
(Stable-SPAM, arXiv 2502.17055, Figure 9; docs/spam.md#time-series), comparable across series of different scales. Scales: `tiny` (statsmodels'
fertility series, CPU minutes) and `paper` (PatchTST on Weather, anomalies in 10% of the inputs).
"""

from __future__ import annotations

from pathlib import Path

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.task_base import TaskBase
from spam_bench.tasks.tsf.config import TSFConfig


class TSFTask(TaskBase):
    def budget(self, config: TSFConfig) -> int:
        """Optimizer steps (Lightning's global step, the unit of the test log)."""
        return config.epochs * config.num_batches_per_epoch

    def run(self, ctx: RunContext) -> TaskResult:
        from spam_bench.tasks.tsf.data import prepare
        from spam_bench.tasks.tsf.train import Trainer

        return Trainer(ctx, prepare(ctx.config, ctx.seed)).fit()


TASK = TSFTask(
    name="tsf",
    description="Time-series forecasting with gluonts PatchTST/DeepAR/SimpleFeedForward (tiny: fertility; paper: Weather)",
    config_cls=TSFConfig,
    primary_metric="test_mse",
    direction="min",
    config_dir=Path(__file__).parent / "configs",
    libraries=("gluonts", "lightning", "statsmodels"),
)
