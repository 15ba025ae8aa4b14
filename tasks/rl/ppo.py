"""stable-baselines3's PPO, unchanged except where the benchmark needs the optimizer to be the suite's.

SB3 keeps its training loop (DESIGN.md: library-driven tasks use the library's own hook). After the
model is built, `BenchPPO.use_optimizer` replaces `policy.optimizer` with the factory's optimizer, so
optimizers that need the model (GaLore, Adam-mini) get it. Three behaviours change:

- Learning rate: SB3 writes the schedule's lr into every param group before each update
  (`update_learning_rate`), which would flatten per-group scales (GaLore's, Adam-mini's blocks, a
  smaller lr for some role). Here each group keeps the ratio to the base lr it had when the factory
  built it: group lr = schedule(progress) x that ratio.
- Gradient clipping: the same global-norm clip PPO does (`max_grad_norm`, torch's clip_grad_norm_ over
  all policy parameters right before step()), moved into a step pre-hook so the norm before clipping
  is measured (spike telemetry); SB3's own clip is set to infinity, which is exactly a no-op.
- Divergence: non-finite parameters or loss, or a policy whose outputs torch.distributions rejects
  (NaN means from huge but finite weights), end training instead of crashing it.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from stable_baselines3 import PPO

from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.telemetry import grad_global_norm

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


class GradStats:
    """Global gradient norms (before clipping) seen by the optimizer since the last `take()`."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.clipped = 0
        self.optimizer_steps = 0

    def take(self) -> dict[str, float]:
        finite = [n for n in self.norms if math.isfinite(n)]
        out = {"grad_norm_mean": sum(finite) / len(finite) if finite else float("nan"),
               "grad_norm_max": max(finite) if finite else float("nan"),
               "clipped_fraction": self.clipped / len(self.norms) if self.norms else 0.0}
        self.norms, self.clipped = [], 0
        return out


class BenchPPO(PPO):
    lr_scales: list[float]
    clip_norm: float | None = None
    diverged: bool = False

    def use_optimizer(self, optimizer: torch.optim.Optimizer, base_lr: float, clip_norm: float | None) -> GradStats:
        """Make `optimizer` the one PPO steps, with per-group lr ratios kept and clipping in a pre-hook."""
        self.policy.optimizer = optimizer
        self.lr_scales = [group["lr"] / base_lr for group in optimizer.param_groups]
        self.clip_norm = clip_norm
        self.max_grad_norm = math.inf  # SB3 always calls clip_grad_norm_; with inf it changes nothing
        stats = GradStats()
        params = [p for p in self.policy.parameters() if p.requires_grad]

        def clip_and_measure(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if self.clip_norm is None:
                norm = float(grad_global_norm(params))
            else:
                norm = float(torch.nn.utils.clip_grad_norm_(params, self.clip_norm))
                stats.clipped += norm > self.clip_norm
            stats.norms.append(norm)

        def count(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            stats.optimizer_steps += 1

        optimizer.register_step_pre_hook(clip_and_measure)
        optimizer.register_step_post_hook(count)
        return stats

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

    def train(self) -> None:
        try:
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
