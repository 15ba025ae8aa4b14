"""Train a gluonts estimator with Lightning's own loop and the suite's optimizer, then evaluate it.

This replaces only gluonts' `train_model` glue (transformation, loaders, `Trainer.fit`, predictor),
for three reasons: gluonts reloads the checkpoint with the best *training* loss after fitting,
a model selection that would differ between optimizers (we evaluate the final weights of a fixed
epochs x batches budget); a resumed run must see the same batches as an uninterrupted one, so each
epoch's data and dropout are seeded from (seed, epoch); and checkpoints belong in the run folder.

Lightning keeps its loop; the run context's instruments and clip rule run from Lightning's hooks
(`on_before_optimizer_step`, after the backward pass; `on_train_batch_end`, after the step), so
Lightning's own clipping stays off. Checkpoints are taken at every epoch end: Lightning's full
checkpoint (weights, our optimizer's state_dict, loop counters) as the task's part of the run's one
checkpoint. Ctrl-C is deferred to the end of the current epoch, which saves and stops; a second
Ctrl-C reaches Lightning, which shuts down.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from gluonts.env import env

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.model_info import roles_by_rank
from spam_bench.suite.seeding import seed_everything
from spam_bench.tasks.tsf.config import TSFConfig
from spam_bench.tasks.tsf.data import TSFData
from spam_bench.tasks.tsf.estimators import build_estimator
from spam_bench.tasks.tsf.evaluate import evaluate


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochSeededLoader:
    """gluonts' training batches, restarted and reseeded each epoch, so epoch e depends only on (seed, e).

    gluonts samples windows with numpy's and Python's global generators; they are reseeded when an
    epoch's iteration starts (nothing else draws from them while training). Lightning iterates the
    loader once per epoch, but on resume it does so before its epoch counter moves past the
    checkpointed epoch, so the loader counts epochs itself, starting from the checkpoint's.
    """

    def __init__(self, make: Callable[[], Any], seed: int, start_epoch: int):
        self.make, self.seed, self.epoch = make, seed, start_epoch

    def __iter__(self):
        s = _epoch_seed(self.seed, self.epoch)
        self.epoch += 1
        np.random.seed(s)
        random.seed(s)
        yield from self.make()


class SuiteCallback(pl.Callback):
    """Per-epoch seeding of dropout, the run's instruments around each step, checkpoints, and Ctrl-C."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.stepping = False  # a step's before_step ran and its after_step is due

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        torch.manual_seed(_epoch_seed(self.ctx.seed, trainer.current_epoch) ^ 0x5EED)

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        self.ctx.instruments.before_step()
        self.stepping = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if module.diverged_step is not None:
            self.ctx.log(module.diverged_step, "train", {"loss": float("nan")})
            return
        loss = float(outputs["loss"])
        if self.stepping:
            self.ctx.instruments.after_step(loss)
            self.stepping = False
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.ctx.log(trainer.global_step, "train", {"loss": loss, "lr": lr})

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if module.diverged_step is not None:
            return
        tmp = self.ctx.scratch / "epoch.ckpt"
        trainer.save_checkpoint(tmp)
        lightning_state = torch.load(tmp, map_location="cpu", weights_only=False)
        tmp.unlink()
        self.ctx.save_checkpoint(
            {"lightning": lightning_state, "epoch": trainer.current_epoch + 1}, trainer.global_step
        )
        if self.ctx.stop_requested:
            trainer.should_stop = True


def _accelerator(device: str) -> dict[str, Any]:
    if device == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    index = int(device.split(":")[1]) if ":" in device else 0
    return {"accelerator": "gpu", "devices": [index]}


class Trainer:
    """One run of the tsf task."""

    def __init__(self, ctx: RunContext, data: TSFData):
        self.ctx, self.data = ctx, data
        self.config: TSFConfig = ctx.config
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """gluonts' `configure_optimizers`, answered by the run context."""
        return self.ctx.build_optimizer(model, roles_by_rank(model), lr=self.config.lr)

    def test_metrics(self, est: Any, transformation: Any, module: Any) -> dict[str, float]:
        """The test split's metrics of `module` as it is now (sample paths drawn from the run's seed)."""
        seed_everything(self.ctx.seed)  # DeepAR's sample paths
        predictor = est.create_predictor(transformation, module)
        was_training = module.training
        try:
            return evaluate(predictor, self.data.test)
        finally:
            module.train(was_training)

    def fit(self) -> TaskResult:
        c, ctx, seed = self.config, self.ctx, self.ctx.seed
        state = ctx.load_checkpoint()
        seed_everything(seed)  # model initialisation
        est = build_estimator(c, self.data.freq, self.make_optimizer)
        transformation = est.create_transformation()
        module = est.create_lightning_module()
        train = transformation.apply(self.data.train, is_train=True)
        ckpt_path = None
        if state is not None:
            ckpt_path = ctx.scratch / "resume.ckpt"
            torch.save(state["lightning"], ckpt_path)
        else:  # the value before training: an LR study's cap (RunContext.log_initial)
            ctx.log_initial("test", lambda: self.test_metrics(est, transformation, module))

        with _quiet(), _divergence_is_nan():
            trainer = pl.Trainer(
                **_accelerator(ctx.spec.device),
                max_epochs=c.epochs,
                gradient_clip_val=None,  # the run's clip rule applies, in SuiteCallback
                deterministic=True if ctx.spec.device == "cpu" else "warn",
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=sys.stderr.isatty(),
                num_sanity_val_steps=0,
                default_root_dir=str(ctx.scratch),
                callbacks=[SuiteCallback(ctx)],
            )
            loader = EpochSeededLoader(
                lambda: est.create_training_data_loader(train, module, shuffle_buffer_length=c.shuffle_buffer),
                seed,
                start_epoch=state["epoch"] if state is not None else 0,
            )
            t0 = time.perf_counter()
            with env._let(max_idle_transforms=max(len(self.data.train), 100)):
                trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
            train_s = time.perf_counter() - t0
            if ctx.stop_requested:
                raise KeyboardInterrupt

            diverged = module.diverged_step
            metrics: dict[str, float] = {}
            if diverged is None:
                metrics = self.test_metrics(est, transformation, module)
                ctx.log(trainer.global_step, "test", metrics)
                if not math.isfinite(metrics["mse"]):
                    diverged = trainer.global_step
        return TaskResult(
            value=metrics["mse"] if diverged is None else None,
            steps=trainer.global_step,
            diverged_step=diverged,
            metrics={
                **{f"test_{k}": v for k, v in metrics.items()},
                "epochs": c.epochs,
                "num_batches_per_epoch": c.num_batches_per_epoch,
                "batch_size": c.batch_size,
                "lr_schedule": "constant",
                "early_stopping": False,
                "model": c.model,
                "loss": c.loss if c.model == "patchtst" else "nll",
                "scaling": c.scaling if c.model == "patchtst" else "model default",
                "n_series": self.data.n_series,
                "n_series_dropped": self.data.n_dropped,
                "n_test_windows": self.data.n_series * c.test_windows,
                "train_s": train_s,
            },
        )


@contextmanager
def _divergence_is_nan() -> Iterator[None]:
    """A diverged model must give a NaN loss (recorded), not a ValueError from torch.distributions' checks;
    Lightning's deterministic=True is undone afterwards too, since both are process-wide switches."""
    validate, deterministic = (
        torch.distributions.Distribution._validate_args,
        torch.are_deterministic_algorithms_enabled(),
    )
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
        torch.use_deterministic_algorithms(deterministic)


class _quiet:
    """Lightning's start-up banners and the single-process data loader hint are noise here."""

    LOGGERS = ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric")

    def __enter__(self) -> None:
        self.levels = {name: logging.getLogger(name).level for name in self.LOGGERS}
        for name in self.LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        for message in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*is deprecated.*"):
            warnings.filterwarnings("ignore", message=message)

    def __exit__(self, *exc: Any) -> None:
        self.warnings.__exit__(*exc)
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
