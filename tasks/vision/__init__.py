"""`vision`: image classification with a ResNet, the suite's convolutional benchmark.

Primary metric: test accuracy (higher is better). Scales: `tiny` (scikit-learn's bundled 8x8
digits and a ~20k-parameter ResNet: offline, ~10 s on one CPU core) and `paper` (CIFAR-10 and
ResNet-18, He et al. 2016, "Deep Residual Learning for Image Recognition", arXiv 1512.03385,
which needs torchvision). The package reads top to bottom: config.py, data.py, model.py, train.py.
"""

from __future__ import annotations

from pathlib import Path

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.task_base import TaskBase
from spam_bench.tasks.vision.config import VisionConfig


class VisionTask(TaskBase):
    def run(self, ctx: RunContext) -> TaskResult:
        from spam_bench.tasks.vision.data import build_data
        from spam_bench.tasks.vision.train import Trainer

        return Trainer(ctx, build_data(ctx.config)).fit()

    def fetch_data(self) -> None:
        """Download CIFAR-10 (the paper scale) into the data cache; the tiny scale's digits ship with scikit-learn."""
        from spam_bench.tasks.vision.data import load_cifar10

        load_cifar10(None)


TASK = VisionTask(
    name="vision",
    description="ResNet image classification (tiny: 8x8 digits on CPU; paper: CIFAR-10, ResNet-18)",
    config_cls=VisionConfig,
    primary_metric="test_acc",
    direction="max",
    config_dir=Path(__file__).parent / "configs",
    libraries=("scikit-learn", "torchvision"),
)
