"""Train a gluonts estimator with Lightning's own loop and the suite's optimizer, then evaluate it.

This replaces only gluonts' `train_model` glue (transformation, loaders, `Trainer.fit`, predictor),
for three reasons: gluonts reloads the checkpoint with the best *training* loss after fitting,
a model selection that would differ between optimizers (we evaluate the final weights of a fixed
epochs x batches budget); a resumed run must see the same batches as an uninterrupted one, so each
epoch's data and dropout are seeded from (seed, epoch); and checkpoints belong in the run folder.

Checkpoints are taken at every epoch end: Lightning's full checkpoint (weights, our optimizer's
state_dict, loop counters) inside the recorder's checkpoint.pt. Ctrl-C is deferred to the end of
the current epoch, which saves and stops; a second Ctrl-C reaches Lightning, which shuts down.
"""
from __future__ import annotations

import logging
import math
import random
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from gluonts.env import env

from spam_bench.suite.interrupt import deferred_interrupt
from spam_bench.suite.model_info import roles_by_rank
from spam_bench.suite.seeding import seed_everything
from spam_bench.suite.spikes import SpikeInstruments
from spam_bench.suite.telemetry import grad_global_norm, optimizer_state_bytes, peak_memory_bytes
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
    """Per-step metrics, per-epoch seeding of dropout, checkpoints, and the deferred Ctrl-C."""

    def __init__(self, recorder: Any, seed: int, stop: Any, run_dir_tmp: Any, owner: "Trainer"):
        self.recorder, self.seed, self.stop, self.tmp, self.owner = recorder, seed, stop, run_dir_tmp, owner
        self.grad_norm = float("nan")
        self.spike_metrics: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        torch.manual_seed(_epoch_seed(self.seed, trainer.current_epoch) ^ 0x5EED)

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        # Spikes are injected and observed, and the norm measured, before Lightning clips, as in llm.
        self.spike_metrics, _ = self.owner.spikes.before_step(trainer.global_step + 1)
        self.grad_norm = float(grad_global_norm(module.parameters()))

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if module.diverged_step is not None:
            self.recorder.log(module.diverged_step, "train", {"loss": float("nan")})
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.recorder.log(trainer.global_step, "train",
                          {"loss": float(outputs["loss"]), "lr": lr, "grad_norm": self.grad_norm, **self.spike_metrics})

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if module.diverged_step is not None:
            return
        trainer.save_checkpoint(self.tmp)
        lightning_state = torch.load(self.tmp, map_location="cpu", weights_only=False)
        self.tmp.unlink()
        self.recorder.save_checkpoint({"lightning": lightning_state, "epoch": trainer.current_epoch + 1,
                                       "spikes": self.owner.spikes.state_dict()})
        if self.stop.requested:
            trainer.should_stop = True


def _accelerator(device: str) -> dict[str, Any]:
    if device == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    index = int(device.split(":")[1]) if ":" in device else 0
    return {"accelerator": "gpu", "devices": [index]}


class Trainer:
    """One run of the tsf task."""

    def __init__(self, run: Any, recorder: Any, data: TSFData):
        self.run, self.recorder, self.data = run, recorder, data
        self.config: TSFConfig = run.config
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.grad_clip = self.config.grad_clip if self.config.grad_clip is not None else run.optimizer.grad_clip
        self.optimizer: torch.optim.Optimizer | None = None
        self.spikes: SpikeInstruments | None = None
        self.spikes_state: dict[str, Any] | None = None  # from a checkpoint, loaded once the model exists

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        info = roles_by_rank(model)
        self.optimizer = self.run.make_optimizer(model, info, lr=self.config.lr)
        self.spikes = SpikeInstruments(model, info, self.config, seed=self.run.spec.seed)
        if self.spikes_state is not None:
            self.spikes.load_state_dict(self.spikes_state)
        self.spikes.watch(self.optimizer)
        return self.optimizer

    def fit(self) -> dict[str, Any]:
        c, rec, seed = self.config, self.recorder, self.run.spec.seed
        state = rec.load_checkpoint()
        seed_everything(seed)  # model initialisation
        est = build_estimator(c, self.data.freq, self.make_optimizer)
        transformation = est.create_transformation()
        module = est.create_lightning_module()
        train = transformation.apply(self.data.train, is_train=True)
        ckpt_path = None
        if state is not None:
            self.spikes_state = state["spikes"]
            ckpt_path = rec.dir / ".resume.ckpt"
            torch.save(state["lightning"], ckpt_path)

        with deferred_interrupt() as stop, _quiet(), _divergence_is_nan():
            trainer = pl.Trainer(
                **_accelerator(self.run.spec.device), max_epochs=c.epochs,
                gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm",
                deterministic=True if self.run.spec.device == "cpu" else "warn",
                logger=False, enable_checkpointing=False, enable_model_summary=False,
                enable_progress_bar=sys.stderr.isatty(),
                num_sanity_val_steps=0, default_root_dir=str(rec.dir),
                callbacks=[SuiteCallback(rec, seed, stop, rec.dir / ".epoch.ckpt", self)])
            loader = EpochSeededLoader(
                lambda: est.create_training_data_loader(train, module, shuffle_buffer_length=c.shuffle_buffer),
                seed, start_epoch=state["epoch"] if state is not None else 0)
            t0 = time.perf_counter()
            try:
                with env._let(max_idle_transforms=max(len(self.data.train), 100)):
                    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
            finally:
                if ckpt_path is not None:
                    ckpt_path.unlink(missing_ok=True)
            train_s = time.perf_counter() - t0
            if stop.requested:
                raise KeyboardInterrupt

            diverged = module.diverged_step
            metrics: dict[str, float] = {}
            if diverged is None:
                seed_everything(seed)  # DeepAR's sample paths
                predictor = est.create_predictor(transformation, module)
                metrics = evaluate(predictor, self.data.test)
                rec.log(trainer.global_step, "test", metrics)
                if not math.isfinite(metrics["mse"]):
                    diverged = trainer.global_step
        return {
            "status": "diverged" if diverged is not None else "complete",
            "diverged_step": diverged,
            "value": metrics["mse"] if diverged is None else None,
            **{f"test_{k}": v for k, v in metrics.items()},
            "steps": trainer.global_step,
            "epochs": c.epochs,
            "num_batches_per_epoch": c.num_batches_per_epoch,
            "batch_size": c.batch_size,
            "lr_schedule": "constant",
            "grad_clip": self.grad_clip,
            "early_stopping": False,
            "model": c.model,
            "n_params": sum(p.numel() for p in module.parameters()),
            "n_series": self.data.n_series,
            "n_series_dropped": self.data.n_dropped,
            "n_test_windows": self.data.n_series * c.test_windows,
            "train_s": train_s,
            "optimizer_state_bytes": optimizer_state_bytes(self.optimizer) if self.optimizer else 0,
            "peak_memory_bytes": peak_memory_bytes(torch.device(self.run.spec.device)),
            **(self.spikes.finish(rec.dir) if self.spikes else {}),
        }


@contextmanager
def _divergence_is_nan() -> Iterator[None]:
    """A diverged model must give a NaN loss (recorded), not a ValueError from torch.distributions' checks;
    Lightning's deterministic=True is undone afterwards too, since both are process-wide switches."""
    validate, deterministic = torch.distributions.Distribution._validate_args, torch.are_deterministic_algorithms_enabled()
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
