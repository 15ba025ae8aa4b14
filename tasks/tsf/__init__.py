"""`tsf`: time-series forecasting with gluonts (PatchTST by default), the follow-up paper's fourth domain.

Primary metric: test MSE of the mean forecast on standardised series over rolling test windows
(lower is better): the loss PatchTST's tables and the follow-up paper's Figure 9 report
(SPAM.md §3.5), comparable across series of different scales. Scales: `tiny` (statsmodels'
fertility series, CPU minutes) and `paper` (PatchTST on Weather, anomalies in 10% of the inputs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from spam_bench.tasks.base import TaskBase
from spam_bench.tasks.tsf.config import TSFConfig


class TSFTask(TaskBase):
    def run(self, run: Any, recorder: Any) -> dict[str, Any]:
        from spam_bench.tasks.tsf.data import prepare
        from spam_bench.tasks.tsf.train import Trainer

        return Trainer(run, recorder, prepare(run.config, run.spec.seed)).fit()


TASK = TSFTask(
    name="tsf",
    description="Time-series forecasting with gluonts PatchTST/DeepAR/SimpleFeedForward (tiny: fertility; paper: Weather)",
    config_cls=TSFConfig,
    primary_metric="test_mse",
    direction="min",
    config_dir=Path(__file__).parent / "configs",
)
