"""gluonts estimators whose Lightning modules train with the suite's optimizer instead of Adam.

gluonts hard-codes `torch.optim.Adam` in every `configure_optimizers` (DeepAR adds
ReduceLROnPlateau), so each module is subclassed to return the factory's optimizer with a
constant learning rate and no scheduler, the same for every optimizer; each estimator's
`create_lightning_module` builds that subclass. The modules also turn a non-finite loss into a
recorded divergence instead of an optimizer step on NaN gradients (train.py turns off
torch.distributions' argument checks, which would raise on the NaN parameters first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from gluonts.torch.model.deepar import DeepAREstimator
from gluonts.torch.model.deepar.lightning_module import DeepARLightningModule
from gluonts.torch.model.patch_tst import PatchTSTEstimator
from gluonts.torch.model.patch_tst.lightning_module import PatchTSTLightningModule
from gluonts.torch.model.simple_feedforward import SimpleFeedForwardEstimator
from gluonts.torch.model.simple_feedforward.lightning_module import SimpleFeedForwardLightningModule

from spam_bench.tasks.tsf.config import TSFConfig
from spam_bench.tasks.tsf.point_head import SquaredErrorOutput

MakeOptimizer = Callable[[torch.nn.Module], torch.optim.Optimizer]


class SuiteOptimizerModule:
    """Mixed in before a gluonts LightningModule: our optimizer, and NaN losses stop training."""

    make_optimizer: MakeOptimizer
    diverged_step: int | None = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.model)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        loss = super().training_step(batch, batch_idx)
        if not torch.isfinite(loss):
            self.diverged_step = self.trainer.global_step + 1
            self.trainer.should_stop = True
            return None  # Lightning skips backward and step
        return loss


class SuiteEstimator:
    """Mixed in before a gluonts estimator: `create_lightning_module` builds our module subclass."""

    module_cls: type
    make_optimizer: MakeOptimizer

    def create_lightning_module(self) -> Any:
        stock = super().create_lightning_module()
        # Same constructor arguments as gluonts' own module (validated components keep them).
        module = self.module_cls(**stock.__init_args__)
        module.make_optimizer = self.make_optimizer
        return module


class PatchTSTModule(SuiteOptimizerModule, PatchTSTLightningModule):
    pass


class DeepARModule(SuiteOptimizerModule, DeepARLightningModule):
    pass


class SimpleFeedForwardModule(SuiteOptimizerModule, SimpleFeedForwardLightningModule):
    pass


class PatchTST(SuiteEstimator, PatchTSTEstimator):
    module_cls = PatchTSTModule


class DeepAR(SuiteEstimator, DeepAREstimator):
    module_cls = DeepARModule


class SimpleFeedForward(SuiteEstimator, SimpleFeedForwardEstimator):
    module_cls = SimpleFeedForwardModule


def build_estimator(config: TSFConfig, freq: str, make_optimizer: MakeOptimizer) -> Any:
    """The configured estimator; its trainer_kwargs are unused (train.py builds the Trainer)."""
    common = dict(
        prediction_length=config.prediction_length,
        context_length=config.context_length,
        batch_size=config.batch_size,
        num_batches_per_epoch=config.num_batches_per_epoch,
    )
    if config.model == "patchtst":
        est = PatchTST(
            patch_len=config.patch_len,
            stride=config.patch_stride,
            d_model=config.d_model,
            nhead=config.n_heads,
            dim_feedforward=config.dim_feedforward,
            num_encoder_layers=config.num_layers,
            dropout=config.dropout,
            scaling=None if config.scaling == "none" else config.scaling,
            **({"distr_output": SquaredErrorOutput()} if config.loss == "mse" else {}),
            **common,
        )
    elif config.model == "deepar":
        est = DeepAR(
            freq=freq, hidden_size=config.d_model, num_layers=config.num_layers, dropout_rate=config.dropout, **common
        )
    else:
        est = SimpleFeedForward(hidden_dimensions=[config.d_model] * config.num_layers, **common)
    est.make_optimizer = make_optimizer
    return est
