"""Train one optimizer on the spikes problem, with injected spikes and (optionally) a clean twin.

The twin is the same run without injection (same seed, same noise, same batches, the same clip rule),
so the robustness score `injected final objective / clean final objective` isolates what the spikes
cost. Runs take seconds, so they restart from scratch instead of checkpointing.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.seeding import seed_everything
from spam_bench.tasks.spikes.config import SpikesConfig
from spam_bench.tasks.spikes.problem import Logistic, NoisyQuadratic


def build_problem(config: SpikesConfig, seed: int) -> torch.nn.Module:
    if config.problem == "quadratic":
        return NoisyQuadratic(config.dim, config.condition, config.noise_scale, config.noise_df, seed)
    return Logistic(config.dim, config.n_train, config.label_noise, seed)


def train(ctx: RunContext) -> tuple[float, int | None, int]:
    """One training run; returns (final objective, diverged step or None, steps taken)."""
    config: SpikesConfig = ctx.config
    seed_everything(ctx.seed)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    model = build_problem(config, ctx.seed)
    optimizer = ctx.build_optimizer(model, model.model_info(), lr=config.lr)
    with torch.no_grad():  # the value before training: an LR study's cap (RunContext.log_initial)
        ctx.log_initial("eval", lambda: {"objective": float(model.objective())})
    objective, step = float("nan"), 0
    for step in range(1, config.steps + 1):
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + step)
        loss = model.stochastic_loss(gen, config.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.instruments.before_step()
        optimizer.step()
        with torch.no_grad():
            objective = float(model.objective())
        ctx.instruments.after_step(objective)
        ctx.log(step, "train", {"loss": float(loss.detach()), "objective": objective})
        if step % config.eval_every == 0 or step == config.steps:
            ctx.log(step, "eval", {"objective": objective})
        if not math.isfinite(objective):
            return objective, step, step
    return objective, None, step


def fit(ctx: RunContext) -> TaskResult:
    config: SpikesConfig = ctx.config
    ctx.load_checkpoint()  # nothing to resume: this clears what an interrupted attempt logged
    objective, diverged_step, steps = train(ctx)
    result = TaskResult(value=None if diverged_step else objective, steps=steps, diverged_step=diverged_step)
    if config.with_clean_twin and config.inject_step_fraction > 0:
        clean, _, _ = train(ctx.replica(dataclasses.replace(config, inject_step_fraction=0.0, telemetry=False)))
        metrics = {"clean_value": clean}
        if result.value is not None and clean > 0 and math.isfinite(clean):
            metrics["robustness"] = result.value / clean
        result.metrics = metrics
    return result
