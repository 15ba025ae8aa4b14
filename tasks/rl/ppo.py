"""stable-baselines3's PPO, unchanged except where the benchmark needs the optimizer to be the suite's.

SB3 keeps its training loop (library-driven tasks call the suite from the library's own hooks: docs/architecture.md). After the
model is built, `BenchPPO.use_optimizer` replaces `policy.optimizer` with the factory's optimizer, so
optimizers that need the model (GaLore, Adam-mini) get it. Three behaviours change:

- Learning rate: SB3 writes the schedule's lr into every param group before each update
  (`update_learning_rate`), which would flatten per-group scales (GaLore's, Adam-mini's blocks, a
  smaller lr for some role). Here each group keeps the ratio to the base lr it had when the factory
  built it: group lr = schedule(progress) x that ratio.
- Gradient clipping: PPO's `max_grad_norm` is the task recipe's `grad_clip`, applied by the suite's
  one clip rule in the run's step pre-hook (after spike injection and telemetry, like every task);
  SB3's own clip is set to infinity, which is exactly a no-op.
- Divergence: non-finite parameters or loss, or a policy whose outputs torch.distributions rejects
  (NaN means from huge but finite weights), end training instead of crashing it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from stable_baselines3 import PPO

from spam_bench.suite.model_info import ModelInfo

ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}
# SB3's Gaussian policy heads: the action mean and the value; `log_std` is a free vector.
_HEADS = ("action_net.", "value_net.")


def policy_model_info(policy: torch.nn.Module) -> ModelInfo:
    """Roles for an SB3 ActorCriticPolicy: hidden-layer weights `mlp`, the two heads' weights `output`
    (as an LM head, they are not for low-rank projection), biases `bias`, `log_std` `other`."""
    roles = {}
    for name, p in policy.named_parameters():
        if name == "log_std":
            roles[name] = "other"
        elif p.ndim < 2:
            roles[name] = "bias"
        else:
            roles[name] = "output" if name.startswith(_HEADS) else "mlp"
    return ModelInfo(roles=roles)


def is_diverged_policy_error(err: ValueError) -> bool:
    """torch.distributions' argument check failing on NaN means or scales: the policy has diverged."""
    return "found invalid values" in str(err)


def update_grad_stats(norms: list[float], clip: float | None) -> dict[str, float]:
    """Global gradient norms (before clipping) of one PPO update's optimizer steps, summarised."""
    finite = [n for n in norms if math.isfinite(n)]
    clipped = sum(n > clip for n in finite) if clip is not None else 0
    return {
        "grad_norm_mean": sum(finite) / len(finite) if finite else float("nan"),
        "grad_norm_max": max(finite) if finite else float("nan"),
        "clipped_fraction": clipped / len(norms) if norms else 0.0,
    }


class BenchPPO(PPO):
    lr_scales: list[float]
    diverged: bool = False

    def use_optimizer(self, optimizer: torch.optim.Optimizer, base_lr: float) -> None:
        """Make `optimizer` the one PPO steps, keeping each param group's lr ratio to the base lr."""
        self.policy.optimizer = optimizer
        self.lr_scales = [group["lr"] / base_lr for group in optimizer.param_groups]
        self.max_grad_norm = math.inf  # SB3 always calls clip_grad_norm_; with inf it changes nothing

    def _update_learning_rate(self, optimizers: Any) -> None:
        lr = self.lr_schedule(self._current_progress_remaining)
        self.logger.record("train/learning_rate", lr)
        for group, scale in zip(self.policy.optimizer.param_groups, self.lr_scales, strict=True):
            group["lr"] = lr * scale

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        if self.diverged:
            return False  # returning False is SB3's way to end learn()
        try:
            return super().collect_rollouts(*args, **kwargs)
        except ValueError as err:
            if not is_diverged_policy_error(err):
                raise
            self.diverged = True
            return False

    # The run's time split (suite/phase_clock.py): an update's forward and backward passes; the
    # optimizer and telemetry inside it are counted as theirs.
    timed: Callable[[str], AbstractContextManager[None]] = staticmethod(lambda phase: contextlib.nullcontext())

    def train(self) -> None:
        try:
            with self.timed("forward_backward"):
                super().train()
        except ValueError as err:
            if not is_diverged_policy_error(err):
                raise
            self.diverged = True
        loss = self.logger.name_to_value.get("train/loss", 0.0)
        self.diverged |= not self._params_finite() or not math.isfinite(loss)

    def _params_finite(self) -> bool:
        with torch.no_grad():
            return all(bool(torch.isfinite(p).all()) for p in self.policy.parameters())
