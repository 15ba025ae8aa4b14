"""The run's instruments: one object, one step counter, around every optimizer step of every task.

Around each `optimizer.step()` the same things happen in the same order on every task:
1. `before_step()`: seeded spike injection (when configured), then per-role gradient telemetry and
   the sampled coordinates for the Gradient Spike Score, then the global gradient norm, then the
   one clip rule (suite/clipping.py). Injection comes first so an injected spike meets the clip
   and the telemetry exactly as a natural one would.
2. the optimizer's step;
3. `after_step(loss)`: the step counter moves, the optimizer's own report (entries it clipped per
   role, momentum resets; `SelfReporting`) is read, the loss is checked for spikes and recovery,
   and the step's telemetry is logged under the split "optim" at the optimizer-step count.

Loops that own their training loop call the two methods directly; libraries that call
`optimizer.step()` themselves (SB3) get them as step pre/post hooks (`hook_into`), and Lightning
calls them from its callback hooks. Every gradient-based task therefore logs the same keys and
reports the same summary keys.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spam_bench.suite.clipping import ClipRule
from spam_bench.suite.contract import SelfReporting
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.phase_clock import PhaseClock
from spam_bench.suite.spike_config import SpikeFields
from spam_bench.suite.spikes import (
    COARSE_ROLE,
    GradientTelemetry,
    LossSpikeDetector,
    RecoveryTracker,
    SpikeInjector,
)
from spam_bench.suite.step_log import SPLIT as STEP_SPLIT
from spam_bench.suite.telemetry import grad_global_norm

Log = Callable[[int, str, dict[str, float]], None]
SPLIT = STEP_SPLIT  # stored apart from metrics.jsonl, compactly (suite/step_log.py)
# Event counters every summary carries, zero when nothing happened.
EVENTS = ("injected", "loss_spikes")


class Instruments:
    def __init__(
        self,
        model: torch.nn.Module,
        info: ModelInfo,
        fields: SpikeFields,
        *,
        seed: int,
        optimizer: torch.optim.Optimizer,
        clip: ClipRule,
        log: Log,
        samples_path: Path | None = None,
        clock: PhaseClock | None = None,
    ):
        self.clock = clock if clock is not None else PhaseClock()
        self._optimizer_from: float | None = None  # when before_step handed over to the optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.clip, self.log = optimizer, clip, log
        self.telemetry = (
            GradientTelemetry(
                model,
                info,
                spike_ratio=fields.spike_ratio,
                samples_per_tensor=fields.gss_samples,
                seed=seed,
                samples_path=samples_path,
            )
            if fields.telemetry
            else None
        )
        self.injector = (
            SpikeInjector(
                seed=fields.inject_seed,
                step_fraction=fields.inject_step_fraction,
                entry_fraction=fields.inject_entry_fraction,
                factor=fields.inject_factor,
            )
            if fields.inject_step_fraction > 0
            else None
        )
        self.loss_spikes = LossSpikeDetector(fields.loss_spike_factor)
        self.recovery = RecoveryTracker()
        self.role_of = {id(p): COARSE_ROLE[info.role_of(n)] for n, p in model.named_parameters()}
        self.reporting = isinstance(optimizer, SelfReporting)
        if self.reporting:
            optimizer.track_clipping = True  # type: ignore[attr-defined]
        self.step = 0  # optimizer steps taken: the one counter of the run's telemetry
        self.counts: dict[str, int] = {e: 0 for e in EVENTS}
        self.clipped: dict[str, int] = {}
        self.reset_steps: list[int] = []
        self.clipped_steps = 0  # steps on which the clip rule scaled the gradient down
        self._pending: dict[str, float] = {}
        self._injected = False
        self._norms: list[float] = []

    # --- around one step ---
    def before_step(self) -> float:
        """Inject, observe and clip the gradient the optimizer is about to see; returns its norm."""
        t0 = time.perf_counter()
        self._injected = self.injector.apply(self.step + 1, self.params) if self.injector else False
        metrics = self.telemetry.observe() if self.telemetry else {}
        for key, value in list(metrics.items()):
            if key.startswith("grad_spike/"):
                self.counts[key] = self.counts.get(key, 0) + int(value)
                if not value:
                    del metrics[key]  # spike events are logged only where they happen
            elif key.startswith("grad_ratio/"):
                del metrics[key]
        t1 = time.perf_counter()
        self.clock.add("telemetry", t1 - t0)
        norm = float(grad_global_norm(self.params))
        limit = self.clip.effective
        if limit is not None and math.isfinite(norm):
            torch.nn.utils.clip_grad_norm_(self.params, limit)
            self.clipped_steps += norm > limit
        if self._injected:
            metrics["injected_spike"] = 1.0
            self.counts["injected"] += 1
        metrics["grad_norm"] = norm
        self._norms.append(norm)
        self._pending = metrics
        self._optimizer_from = t1  # the clip rule and the update are the optimizer's time
        return norm

    def after_step(self, loss: float | None = None) -> None:
        """Count the step, read the optimizer's own report, check the loss, log the step's telemetry."""
        t0 = time.perf_counter()
        if self._optimizer_from is not None:
            self.clock.add("optimizer", t0 - self._optimizer_from)
            self._optimizer_from = None
        self.step += 1
        metrics, self._pending = self._pending, {}
        if self.reporting:
            opt: Any = self.optimizer
            if opt.reset_last_step:
                self.reset_steps.append(self.step)
                metrics["optimizer_reset"] = 1.0
            for p, n in (opt.clipped_last_step or {}).items():
                role = self.role_of.get(id(p), "other")
                self.clipped[role] = self.clipped.get(role, 0) + n
                metrics[f"clipped/{role}"] = metrics.get(f"clipped/{role}", 0.0) + n
        if loss is not None:
            metrics.update(self._loss_events(loss))
        if metrics:
            self.log(self.step, SPLIT, metrics)
        self.clock.add("telemetry", time.perf_counter() - t0)

    def observe_loss(self, loss: float) -> None:
        """Loss-spike detection and spike recovery for loops whose loss is known only later than the
        step (SB3 reports one loss per update); events are logged at the current step count."""
        events = self._loss_events(loss)
        if events:
            self.log(self.step, SPLIT, events)

    def _loss_events(self, loss: float) -> dict[str, float]:
        self.recovery.observe(self.step, loss, self._injected)
        self._injected = False
        if self.loss_spikes.observe(loss):
            self.counts["loss_spikes"] += 1
            return {"loss_spike": 1.0}
        return {}

    def hook_into(self, optimizer: torch.optim.Optimizer) -> None:
        """For libraries that call `optimizer.step()` themselves: the two calls as step hooks."""

        def pre(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.before_step()

        def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.after_step()

        optimizer.register_step_pre_hook(pre)
        optimizer.register_step_post_hook(post)

    def take_grad_norms(self) -> list[float]:
        """Global gradient norms (before clipping) since the last call, for a task's own summaries."""
        norms, self._norms = self._norms, []
        return norms

    # --- checkpoint ---
    def state_dict(self) -> dict[str, Any]:
        return {
            "telemetry": self.telemetry.state_dict() if self.telemetry else None,
            "counts": dict(self.counts),
            "step": self.step,
            "clipped": dict(self.clipped),
            "reset_steps": list(self.reset_steps),
            "clipped_steps": self.clipped_steps,
            "loss_spikes": self.loss_spikes.state_dict(),
            "recovery": self.recovery.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.telemetry and state["telemetry"] is not None:
            self.telemetry.load_state_dict(state["telemetry"])
        self.counts = {**{e: 0 for e in EVENTS}, **state["counts"]}
        self.step, self.clipped = state["step"], dict(state["clipped"])
        self.reset_steps, self.clipped_steps = list(state["reset_steps"]), state["clipped_steps"]
        self.loss_spikes.load_state_dict(state["loss_spikes"])
        self.recovery.load_state_dict(state["recovery"])

    # --- the end ---
    def summary(self, run_dir: Path) -> dict[str, Any]:
        """The same keys on every task; `clipped_entries` is None for optimizers that do not report."""
        out: dict[str, Any] = {
            "optimizer_steps": self.step,
            "spike_events": dict(sorted(self.counts.items())),
            "clip_applied_steps": self.clipped_steps,
            "clipped_entries": dict(sorted(self.clipped.items())) if self.reporting else None,
            "reset_steps": list(self.reset_steps) if self.reporting else None,
            "spikes_injected": self.counts["injected"],
            "gss_spikes": {},
        }
        if self.telemetry:
            record = self.telemetry.save(run_dir)
            if record.rows:
                out["gss_spikes"] = record.spike_counts(self.telemetry.column_roles())
        recovery = self.recovery.summary()
        out.update(
            spikes_unrecovered=recovery["spikes_unrecovered"] if self.injector else None,
            recovery_steps_mean=recovery["recovery_steps_mean"] if self.injector else None,
        )
        return out
