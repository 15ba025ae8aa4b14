"""Train one optimizer on the spikes problem, with injected spikes and (optionally) a clean twin.

The twin is the same run without injection (same seed, same noise, same batches), so the
robustness score `injected final objective / clean final objective` isolates what the spikes cost.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from spam_bench.suite.seeding import seed_everything
from spam_bench.suite.spikes import SpikeInstruments
from spam_bench.suite.telemetry import optimizer_state_bytes, peak_memory_bytes
from spam_bench.tasks.spikes.config import SpikesConfig
from spam_bench.tasks.spikes.problem import Logistic, NoisyQuadratic


def build_problem(config: SpikesConfig, seed: int) -> torch.nn.Module:
    if config.problem == "quadratic":
        return NoisyQuadratic(config.dim, config.condition, config.noise_scale, config.noise_df, seed)
    return Logistic(config.dim, config.n_train, config.label_noise, seed)


def train(run: Any, config: SpikesConfig, log: Any | None) -> dict[str, Any]:
    """One training run; `log(step, split, metrics)` receives metrics (None for the silent twin)."""
    seed_everything(run.spec.seed)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    model = build_problem(config, run.spec.seed)
    info = model.model_info()
    optimizer = run.make_optimizer(model, info, lr=config.lr)
    spikes = SpikeInstruments(model, info, config, seed=run.spec.seed)
    spikes.watch(optimizer)
    clip = run.optimizer.grad_clip
    objective, diverged_step = float("nan"), None
    for step in range(1, config.steps + 1):
        gen = torch.Generator().manual_seed(run.spec.seed * 1_000_003 + step)
        loss = model.stochastic_loss(gen, config.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics, injected = spikes.before_step(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        with torch.no_grad():
            objective = float(model.objective())
        metrics.update(spikes.after_step(step, objective, injected))
        if log is not None:
            log(step, "train", {"loss": float(loss.detach()), "objective": objective, **metrics})
            if step % config.eval_every == 0 or step == config.steps:
                log(step, "eval", {"objective": objective})
        if not math.isfinite(objective):
            diverged_step = step
            break
    return {"objective": objective, "diverged_step": diverged_step, "steps": step, "spikes": spikes,
            "optimizer_state_bytes": optimizer_state_bytes(optimizer)}


def fit(run: Any, recorder: Any) -> dict[str, Any]:
    config: SpikesConfig = run.config
    recorder.load_checkpoint()  # seconds-long runs restart from scratch rather than checkpoint
    t0 = time.perf_counter()
    result = train(run, config, recorder.log)
    summary: dict[str, Any] = {
        "status": "diverged" if result["diverged_step"] else "complete",
        "diverged_step": result["diverged_step"],
        "value": None if result["diverged_step"] else result["objective"],
        "steps": result["steps"],
        "optimizer_state_bytes": result["optimizer_state_bytes"],
        "peak_memory_bytes": peak_memory_bytes(torch.device("cpu")),
        "train_seconds": time.perf_counter() - t0,
        **result["spikes"].finish(recorder.dir),
    }
    if config.with_clean_twin and config.inject_step_fraction > 0:
        clean_config = type(config)(**{**config.__dict__, "inject_step_fraction": 0.0, "telemetry": False})
        clean = train(run, clean_config, None)
        summary["clean_value"] = clean["objective"]
        if summary["value"] is not None and clean["objective"] > 0 and math.isfinite(clean["objective"]):
            summary["robustness"] = summary["value"] / clean["objective"]
    return summary
