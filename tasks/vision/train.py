"""Train the ResNet on the configured images with any registered optimizer.

The loop is the common one of optimizer papers on CIFAR: mini-batches of augmented images, cross-
entropy, linear LR warmup then cosine decay, test accuracy on the whole test set. The run context
supplies the optimizer, the clip rule and the instruments around each step, and checkpoints the
suite's part (RNG states, telemetry); this module checkpoints the rest of what determines the
future (model with its BatchNorm statistics, optimizer, schedule, step). The data order needs no
state: data.Batches draws each epoch from (seed, epoch) alone, so a resumed run is bit-identical.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.seeding import seed_everything
from spam_bench.tasks.vision.config import VisionConfig
from spam_bench.tasks.vision.data import Batches, Images
from spam_bench.tasks.vision.model import build_model, model_info


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """0 at step 0, linear to 1 at `warmup`, cosine to `min_ratio` at `total` (Loshchilov & Hutter,
    "SGDR", arXiv 1608.03983, without restarts)."""
    if step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Batches, size: int) -> dict[str, float]:
    """Mean cross-entropy and accuracy over the whole test set, with BatchNorm's running statistics."""
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in batches.test_batches(size):
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
        count += len(y)
    model.train()
    return {"loss": loss / count, "acc": correct / count}


class Trainer:
    """One run of the vision task."""

    def __init__(self, ctx: RunContext, data: Images):
        self.ctx, self.config = ctx, ctx.config
        c: VisionConfig = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        self.batches = Batches(data.to(ctx.device), c, ctx.seed)
        seed_everything(ctx.seed)
        self.model = build_model(c, data.channels, data.n_classes).to(ctx.device)
        self.optimizer = ctx.build_optimizer(self.model, model_info(self.model), lr=c.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, c.lr_warmup_steps, c.steps, c.min_lr_ratio)
        )
        self.step = 0
        self.test = {"loss": float("nan"), "acc": float("nan")}
        self.diverged_step: int | None = None

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "test": dict(self.test),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.test = state["step"], dict(state["test"])

    def train_step(self) -> float:
        """One update on batch `self.step`; returns its loss."""
        with self.ctx.timed("data"):
            x, y = self.batches.batch(self.step)
        with self.ctx.timed("forward_backward"):
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            value = float(loss.detach())
        self.ctx.step(value, self.scheduler)  # spike injection, telemetry, the one clip rule, the update
        return value

    def fit(self) -> TaskResult:
        c, ctx = self.config, self.ctx
        state = ctx.load_checkpoint()
        if state is not None:
            self.restore(state)
        else:  # the value before training: an LR study's cap (RunContext.log_initial)
            ctx.log_initial("test", lambda: evaluate(self.model, self.batches, c.eval_batch_size))
        start_step, train_time = self.step, 0.0
        bar = ctx.progress(c.steps, self.step)
        try:
            while self.step < c.steps:
                lr = self.scheduler.get_last_lr()[0]
                t0 = time.perf_counter()
                loss = self.train_step()
                train_time += time.perf_counter() - t0
                self.step += 1
                ctx.log(self.step, "train", {"loss": loss, "lr": lr})
                if not math.isfinite(loss):
                    self.diverged_step = self.step
                    break
                if self.step % c.eval_every == 0 or self.step == c.steps:
                    self.test = evaluate(self.model, self.batches, c.eval_batch_size)
                    ctx.log(self.step, "test", self.test)
                    if not math.isfinite(self.test["loss"]):
                        self.diverged_step = self.step
                        break
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", test_acc=f"{self.test['acc']:.4f}", refresh=False)
                if ctx.stop_requested or self.step % c.checkpoint_every == 0:
                    ctx.save_checkpoint(self.state(), self.step)
                if ctx.stop_requested:
                    raise KeyboardInterrupt
        finally:
            bar.close()
        done = self.step - start_step  # throughput of this attempt's updates alone (no evaluation, no logging)
        return TaskResult(
            value=None if self.diverged_step is not None else self.test["acc"],
            steps=self.step,
            diverged_step=self.diverged_step,
            metrics={
                "test_loss": self.test["loss"],
                "epochs": self.step / self.batches.steps_per_epoch,
                "train_samples_per_s": done * c.batch_size / train_time if train_time > 0 else None,
            },
        )
