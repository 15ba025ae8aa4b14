"""Gradient-spike instruments: online telemetry per parameter role, the paper's offline Gradient
Spike Score, loss-spike detection, and seeded spike injection.

Telemetry observes the gradient the optimizer is about to see. Per coarse role (embedding,
attention, mlp, norm, output, other) and step it reports the gradient norm, max |g|, and the ratio
of the norm to its running (bias-corrected EMA) average; a ratio above `spike_ratio` is a spike
event. For the paper's GSS (SPAM.md §3.1) it records a fixed, seeded sample of coordinates per
tensor at every step; `gss()` is computed offline from that record, exactly as defined:
GSS(g_i) = |g_i| / ((1/(T+1)) * sum_j |g_j|), a spike when GSS > 50.
"""
from __future__ import annotations

import json
import statistics
from collections import deque
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from spam_bench.suite.model_info import ModelInfo

COARSE_ROLE = {"embedding": "embedding", "attn_q": "attention", "attn_k": "attention", "attn_v": "attention",
               "attn_o": "attention", "mlp": "mlp", "norm": "norm", "output": "output", "bias": "other",
               "other": "other"}
GSS_THRESHOLD = 50.0
SAMPLES_FILE, SAMPLES_INDEX = "grad_samples.npy", "grad_samples.json"


class GradientTelemetry:
    """Per-role gradient statistics each step, and a sampled-coordinate record for the GSS."""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, *, spike_ratio: float, samples_per_tensor: int,
                 seed: int, ema: float = 0.99):
        self.spike_ratio, self.ema = spike_ratio, ema
        self.roles: dict[str, list[torch.nn.Parameter]] = {}
        self.sampled: list[tuple[str, str, torch.nn.Parameter, torch.Tensor]] = []
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            role = COARSE_ROLE[info.role_of(name)]
            self.roles.setdefault(role, []).append(p)
            k = min(samples_per_tensor, p.numel())
            if k:
                idx = torch.randperm(p.numel(), generator=gen)[:k].sort().values
                self.sampled.append((name, role, p, idx.to(p.device)))
        self.avg = {role: 0.0 for role in self.roles}
        self.steps_seen = 0
        self.records: list[np.ndarray] = []

    @torch.no_grad()
    def observe(self) -> dict[str, float]:
        out: dict[str, float] = {}
        self.steps_seen += 1
        correction = 1.0 - self.ema ** (self.steps_seen - 1)
        for role, params in self.roles.items():
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                continue
            norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))
            biggest = float(torch.stack(torch._foreach_norm(grads, float("inf"))).max())
            ratio = norm / (self.avg[role] / correction) if correction > 0 and self.avg[role] > 0 else 1.0
            self.avg[role] = self.ema * self.avg[role] + (1 - self.ema) * norm
            out.update({f"grad_norm/{role}": norm, f"grad_max/{role}": biggest, f"grad_ratio/{role}": ratio,
                        f"grad_spike/{role}": float(ratio > self.spike_ratio)})
        if self.sampled:
            row = [(p.grad.reshape(-1)[idx] if p.grad is not None else torch.zeros(len(idx), device=idx.device)).float()
                   for _, _, p, idx in self.sampled]
            self.records.append(torch.cat(row).cpu().numpy())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"avg": dict(self.avg), "steps_seen": self.steps_seen,
                "records": np.stack(self.records) if self.records else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.avg, self.steps_seen = dict(state["avg"]), state["steps_seen"]
        self.records = list(state["records"]) if state["records"] is not None else []

    def column_roles(self) -> list[str]:
        return [role for _, role, _, idx in self.sampled for _ in range(len(idx))]

    def save(self, run_dir: Path) -> None:
        """The coordinate record (steps x samples) and which tensor/role each column belongs to."""
        trace = np.stack(self.records) if self.records else np.zeros((0, len(self.column_roles())), np.float32)
        np.save(run_dir / SAMPLES_FILE, trace)
        index = [{"name": n, "role": r, "indices": idx.cpu().tolist()} for n, r, _, idx in self.sampled]
        (run_dir / SAMPLES_INDEX).write_text(json.dumps(index))


def gss(trace: np.ndarray) -> np.ndarray:
    """Gradient Spike Score per step and coordinate: |g_i| over the mean |g| of its whole trajectory."""
    magnitude = np.abs(np.asarray(trace, dtype=np.float64))
    mean = magnitude.mean(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, magnitude / mean, 0.0)


def gss_spike_counts(trace: np.ndarray, column_roles: Iterable[str], threshold: float = GSS_THRESHOLD) -> dict[str, int]:
    """Number of (step, coordinate) pairs with GSS > threshold, per role."""
    spikes = (gss(trace) > threshold).sum(axis=0)
    counts: dict[str, int] = {}
    for role, n in zip(column_roles, spikes):
        counts[role] = counts.get(role, 0) + int(n)
    return counts


class LossSpikeDetector:
    """A step whose loss exceeds `factor` x the median of the previous `window` losses."""

    def __init__(self, factor: float, window: int = 100):
        self.factor = factor
        self.history: deque[float] = deque(maxlen=window)

    def observe(self, loss: float) -> bool:
        spike = len(self.history) >= 10 and loss > self.factor * statistics.median(self.history)
        self.history.append(loss)
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.extend(state["history"])


class SpikeInjector:
    """Multiply the gradient by `factor` on a seeded set of steps and a seeded fraction of entries.

    Which steps and entries depend only on (seed, step, parameter order), never on the optimizer or
    the gradient values, so every optimizer receives exactly the same faults.
    """

    def __init__(self, *, seed: int, step_fraction: float, entry_fraction: float, factor: float):
        self.seed, self.step_fraction, self.entry_fraction, self.factor = seed, step_fraction, entry_fraction, factor

    def is_spike_step(self, step: int) -> bool:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return bool(torch.rand((), generator=gen) < self.step_fraction)

    @torch.no_grad()
    def apply(self, step: int, params: Iterable[torch.nn.Parameter]) -> bool:
        if not self.is_spike_step(step):
            return False
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 7_919)
        for p in params:
            if p.grad is None:
                continue
            hit = (torch.rand(p.grad.shape, generator=gen) < self.entry_fraction).to(p.grad.device)
            p.grad[hit] *= self.factor
        return True


class RecoveryTracker:
    """Steps an injected spike costs: from the spike until the loss is back within 5% of before."""

    def __init__(self, tolerance: float = 0.05, baseline_window: int = 10):
        self.tolerance, self.window = tolerance, baseline_window
        self.recent: deque[float] = deque(maxlen=baseline_window)
        self.open: list[tuple[int, float]] = []  # (spike step, loss to return to)
        self.recovered: list[int] = []

    def observe(self, step: int, loss: float, injected: bool) -> None:
        if injected and self.recent:
            self.open.append((step, statistics.median(self.recent)))
        still_open = []
        for start, target in self.open:
            if step > start and loss <= (1 + self.tolerance) * target:
                self.recovered.append(step - start)
            else:
                still_open.append((start, target))
        self.open = still_open
        self.recent.append(loss)

    def summary(self) -> dict[str, float | int | None]:
        return {"spikes_tracked": len(self.recovered) + len(self.open),
                "spikes_unrecovered": len(self.open),
                "recovery_steps_mean": float(np.mean(self.recovered)) if self.recovered else None}

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "open": list(self.open), "recovered": list(self.recovered)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent.extend(state["recent"])
        self.open, self.recovered = list(state["open"]), list(state["recovered"])


class SpikeInstruments:
    """Everything a training loop does about spikes, behind three calls:
    `before_step` (inject, then observe the gradient the optimizer will see), `after_step` (loss
    spikes, recovery) and `finish` (save the GSS record, summarise)."""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, fields: Any, seed: int):
        self.model = model
        self.telemetry = (GradientTelemetry(model, info, spike_ratio=fields.spike_ratio,
                                            samples_per_tensor=fields.gss_samples, seed=seed)
                          if fields.telemetry else None)
        self.injector = (SpikeInjector(seed=fields.inject_seed, step_fraction=fields.inject_step_fraction,
                                       entry_fraction=fields.inject_entry_fraction, factor=fields.inject_factor)
                         if fields.inject_step_fraction > 0 else None)
        self.loss_spikes = LossSpikeDetector(fields.loss_spike_factor)
        self.recovery = RecoveryTracker()
        self.counts: dict[str, int] = {}
        self.role_of = {id(p): COARSE_ROLE[info.role_of(n)] for n, p in model.named_parameters()}
        self.optimizer_steps = 0
        self.clipped: dict[str, int] = {}   # entries an optimizer clipped (SPAM), per role
        self.reset_steps: list[int] = []    # optimizer steps on which it reset its moments
        self.watching = False
        self._pending: dict[str, float] = {}

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Count what a spike-aware optimizer (one with `track_clipping`, e.g. SPAM) did each step:
        entries clipped per role and momentum resets, via a step post-hook."""
        if not hasattr(optimizer, "track_clipping"):
            return
        optimizer.track_clipping = True
        self.watching = True

        def after_step(opt: Any, args: Any, kwargs: Any) -> None:
            self.optimizer_steps += 1
            metrics: dict[str, float] = {}
            if opt.reset_last_step:
                self.reset_steps.append(self.optimizer_steps)
                metrics["optimizer_reset"] = 1.0
            for p, n in (opt.clipped_last_step or {}).items():
                role = self.role_of.get(id(p), "other")
                self.clipped[role] = self.clipped.get(role, 0) + n
                metrics[f"clipped/{role}"] = metrics.get(f"clipped/{role}", 0.0) + n
            self._pending = metrics

        optimizer.register_step_post_hook(after_step)

    def take_optimizer_metrics(self) -> dict[str, float]:
        """What the watched optimizer did in its last step (for loops that log per step)."""
        metrics, self._pending = self._pending, {}
        return metrics

    def before_step(self, step: int) -> tuple[dict[str, float], bool]:
        injected = self.injector.apply(step, self.model.parameters()) if self.injector else False
        metrics = self.telemetry.observe() if self.telemetry else {}
        for key, value in list(metrics.items()):
            if key.startswith("grad_spike/"):
                self.counts[key] = self.counts.get(key, 0) + int(value)
                if not value:
                    del metrics[key]  # log spike events only where they happen
            elif key.startswith("grad_ratio/"):
                del metrics[key]
        if injected:
            metrics["injected_spike"] = 1.0
            self.counts["injected"] = self.counts.get("injected", 0) + 1
        return metrics, injected

    def after_step(self, step: int, loss: float, injected: bool) -> dict[str, float]:
        self.recovery.observe(step, loss, injected)
        if self.loss_spikes.observe(loss):
            self.counts["loss_spikes"] = self.counts.get("loss_spikes", 0) + 1
            return {"loss_spike": 1.0}
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"telemetry": self.telemetry.state_dict() if self.telemetry else None, "counts": dict(self.counts),
                "optimizer_steps": self.optimizer_steps, "clipped": dict(self.clipped),
                "reset_steps": list(self.reset_steps),
                "loss_spikes": self.loss_spikes.state_dict(), "recovery": self.recovery.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.telemetry and state["telemetry"] is not None:
            self.telemetry.load_state_dict(state["telemetry"])
        self.counts = dict(state["counts"])
        self.optimizer_steps, self.clipped = state["optimizer_steps"], dict(state["clipped"])
        self.reset_steps = list(state["reset_steps"])
        self.loss_spikes.load_state_dict(state["loss_spikes"])
        self.recovery.load_state_dict(state["recovery"])

    def finish(self, run_dir: Path) -> dict[str, Any]:
        out: dict[str, Any] = {"spike_events": dict(sorted(self.counts.items()))}
        if self.watching:
            out["clipped_entries"] = dict(sorted(self.clipped.items()))
            out["reset_steps"] = list(self.reset_steps)
        if self.telemetry:
            self.telemetry.save(run_dir)
            trace = np.stack(self.telemetry.records) if self.telemetry.records else np.zeros((0, 0))
            out["gss_spikes"] = gss_spike_counts(trace, self.telemetry.column_roles()) if trace.size else {}
        if self.injector:
            out["spikes_injected"] = self.counts.get("injected", 0)
            if self.recovery.recovered or self.recovery.open:  # loops that report their loss per step
                recovery = self.recovery.summary()
                out.update(spikes_unrecovered=recovery["spikes_unrecovered"],
                           recovery_steps_mean=recovery["recovery_steps_mean"])
        return out


def attach_to_optimizer(optimizer: torch.optim.Optimizer, instruments: SpikeInstruments,
                        log: Any) -> dict[str, int]:
    """For library-driven loops (SB3, Lightning): run the instruments in a step pre-hook.

    Registered before any clipping hook, injection happens before clipping, as in the llm loop.
    Metrics go to `log(step, "optim", metrics)` with the optimizer-step count; the returned
    counter belongs in the task's checkpoint.
    """
    counter = {"step": 0}

    def before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        counter["step"] += 1
        metrics, _ = instruments.before_step(counter["step"])
        if metrics:
            log(counter["step"], "optim", metrics)

    optimizer.register_step_pre_hook(before_step)
    instruments.watch(optimizer)
    return counter
