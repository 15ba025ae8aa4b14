"""Pre-train the LLaMA model on the configured data with any registered optimizer.

The loop is the paper's (docs/spam.md#llama-on-c4): gradient accumulation up
to the batch size, linear LR warmup from 0 then cosine to `min_lr_ratio` x peak, validation
perplexity at a fixed token budget. The run context supplies the optimizer, the clip rule and the
instruments around each step, and checkpoints the suite's part (RNG states, telemetry); this module
checkpoints the rest of what determines the future (model, optimizer, schedule, step), so a resumed
run is bit-identical.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.seeding import seed_everything
from spam_bench.tasks.llm.config import LLMConfig
from spam_bench.tasks.llm.model import Llama, LlamaShape

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def model_shape(config: LLMConfig, vocab_size: int) -> LlamaShape:
    return LlamaShape(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads,
        n_layers=config.n_layers,
        max_seq_len=config.seq_len,
    )


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """The paper's schedule: lr = 0 at step 0, linear to 1 at `warmup`, cosine to `min_ratio` at `total`."""
    if step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: Llama, data: Any, device: torch.device) -> float:
    """Token-weighted mean validation loss (the paper's code averages batch means over n+1 batches)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in data.val_batches():
        n = int((y != -100).sum())
        total += float(model.loss(x.to(device), y.to(device))) * n
        count += n
    model.train()
    return total / max(count, 1)


class _Loss(torch.nn.Module):
    """The model's loss as a module's forward: DDP synchronises gradients of what its forward computes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, y)


class Trainer:
    """One run of the llm task; `build_model` is swappable so llm4bit can quantize the linears."""

    def __init__(self, ctx: RunContext, data: Any, build_model: Callable[[LlamaShape], torch.nn.Module] = Llama):
        self.ctx, self.data = ctx, data
        self.config: LLMConfig = ctx.config
        self.device = ctx.device
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        seed_everything(ctx.seed)
        self.model = build_model(model_shape(self.config, data.vocab_size)).to(self.device, DTYPES[self.config.dtype])
        self.optimizer = ctx.build_optimizer(self.model, self.model.model_info(), lr=self.config.lr)
        c = self.config
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, c.lr_warmup_steps, c.steps, c.min_lr_ratio)
        )
        self.step = 0
        self.val_loss = float("nan")
        self.diverged_step: int | None = None
        # Data-parallel (suite/distributed.py): each rank trains on its rows of the global batch and DDP
        # averages the gradients, so the update is the one-process update up to summation order.
        self.world = ctx.world
        self.micro = c.rank_micro_batch(self.world.size)
        self.rows = self.world.shard(c.batch_size)
        self.ddp = DistributedDataParallel(_Loss(self.model)) if self.world.active else None

    def state(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "val_loss": self.val_loss,
        }
        if hasattr(self.data, "state_dict"):  # a streamed source's position (C4); the tiny corpus has none
            state["data"] = self.data.state_dict()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.val_loss = state["step"], state["val_loss"]
        if "data" in state:
            self.data.load_state_dict(state["data"])

    def train_step(self) -> float:
        """One update (with accumulation); returns the mean loss."""
        with self.ctx.timed("data"):
            x, y = self.data.train_batch(self.step)
        x, y = x[self.rows], y[self.rows]  # all of it in a world of one
        m = self.micro
        n_micro = x.shape[0] // m
        loss_sum = 0.0
        with self.ctx.timed("forward_backward"):
            for i in range(n_micro):
                xs = x[i * m : (i + 1) * m].to(self.device)
                ys = y[i * m : (i + 1) * m].to(self.device)
                if self.ddp is None:
                    loss = self.model.loss(xs, ys) / n_micro
                    loss.backward()
                else:  # gradients are averaged over the ranks once, at the last micro-batch
                    with self.ddp.no_sync() if i < n_micro - 1 else contextlib.nullcontext():
                        loss = self.ddp(xs, ys) / n_micro
                        loss.backward()
                loss_sum += float(loss.detach())
        loss_sum = self.world.mean(loss_sum)  # the global batch's loss, the same on every rank
        self.ctx.step(loss_sum, self.scheduler)
        return loss_sum

    def fit(self) -> TaskResult:
        c, ctx = self.config, self.ctx
        state = ctx.load_checkpoint()
        if state is not None:
            self.restore(state)
        else:  # the value before training: an LR study's cap (RunContext.log_initial)
            ctx.log_initial("val", lambda: _val_metrics(evaluate(self.model, self.data, self.device)))
        tokens_per_step = c.batch_size * c.seq_len
        start_step, t0 = self.step, time.perf_counter()
        bar = ctx.progress(c.steps, self.step)
        try:
            while self.step < c.steps:
                lr = self.scheduler.get_last_lr()[0]
                loss = self.train_step()
                self.step += 1
                ctx.log(self.step, "train", {"loss": loss, "lr": lr})
                if not math.isfinite(loss):
                    self.diverged_step = self.step
                    break
                if self.step % c.eval_every == 0 or self.step == c.steps:
                    self.val_loss = evaluate(self.model, self.data, self.device)
                    ctx.log(self.step, "val", _val_metrics(self.val_loss))
                    if not math.isfinite(self.val_loss):
                        self.diverged_step = self.step
                        break
                tok_s = (self.step - start_step) * tokens_per_step / (time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", val_ppl=f"{_ppl(self.val_loss):.2f}", refresh=False
                )
                if ctx.stop_requested or self.step % c.checkpoint_every == 0:
                    ctx.save_checkpoint(self.state(), self.step)
                if ctx.stop_requested:
                    raise KeyboardInterrupt
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
        return TaskResult(
            value=None if self.diverged_step is not None else _ppl(self.val_loss),
            steps=self.step,
            diverged_step=self.diverged_step,
            metrics={
                "val_loss": self.val_loss,
                "tokens": self.step * tokens_per_step,
                "tokens_per_s": (self.step - start_step) * tokens_per_step / elapsed if elapsed > 0 else None,
            },
        )


def _val_metrics(loss: float) -> dict[str, float]:
    return {"loss": loss, "ppl": _ppl(loss)}


def _ppl(loss: float) -> float:
    return (
        math.exp(loss) if math.isfinite(loss) and loss < 700 else float("inf") if math.isfinite(loss) else float("nan")
    )
