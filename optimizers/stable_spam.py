"""Stable-SPAM (Huang et al. 2025, arXiv 2502.17055): Adam with AdaClip, AdaGN and momentum reset.

Our own code from the description of the official `TianjinYellow/StableSPAM` (docs/spam.md#stable-spam).
Per parameter, with k its step counter and T the global call count:

    p *= 1 - lr·wd                                              decoupled decay, first
    Mmax = γ3·Mmax + (1-γ3)·max|g|,  M̂ = Mmax / (1-γ3^k)
    g_i *= M̂ / max|g|   where |g_i| > M̂                          AdaClip
    n = ‖g‖,  mn = γ1s·mn + (1-γ1s)·n,  vn = γ2·vn + (1-γ2)·n²
    g *= (mn/(1-(γ1s)^k)) / (sqrt(vn/(1-γ2^k)) + eps) / n   if n > 0     AdaGN
    T ≡ 0 mod ΔT: m, v replaced by zeros and k = 1                MoRet
    β1' = β1·s;  Adam step with bias corrections 1-β1'^k, sqrt(1-β2^k)

s = 1, or with `total_steps` set, cosine from 1 to `eta_min` over total_steps (the optional β1/γ1
decay; closed form, not clamped past the end, as official).

Official quirk kept (`fresh_reset=False`): on a reset call the old m, v are still updated and used
for that call's update (with k already 1); the zeros take effect from the next call. With a
constant unit gradient and ΔT = 5 the updates are 1, 1, 1, 1, 1.833, 0.744, ...

Differences from pytorch_optimizer 4.1's `StableSPAM`:
- it zeroes m, v *before* use on a reset call (no 1.833 blip): our `fresh_reset=True`;
- its norm/max EMAs are bias-corrected with the global step, ours (and official) with k;
- it is not an oracle for the official code (docs/measured-facts.md#pytorch-optimizer-spam), so
  our tests check the formulas.
Differences from the official code, none of which changes the arithmetic in float32:
- the user's gradient is never written into (official AdaClip edits `p.grad` in place);
- the norm/max EMAs are float32 (or wider) tensors in `state` (saved by `state_dict`, counted as state);
- `reset_interval = 0` means never reset (official would divide by zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from spam_bench.optimizers.state_io import restore_saved_dtypes
from spam_bench.suite.config import param
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.registry import OptimizerSpec
from spam_bench.suite.search_space import Dist

EMA_KEYS = ("m_norm", "v_norm", "m_max")


def beta1_scale(call: int, total_steps: int | None, eta_min: float) -> float:
    """s: 1 without a schedule; else eta_min + (1 - eta_min)·(1 + cos(π·call/total_steps))/2."""
    if total_steps is None:
        return 1.0
    return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * call / total_steps)) / 2.0


class StableSPAM(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        gamma1: float = 0.7,
        gamma2: float = 0.9,
        gamma3: float = 0.999,
        reset_interval: int = 1000,
        total_steps: int | None = None,
        eta_min: float = 0.5,
        fresh_reset: bool = False,
    ):
        checks = {
            "lr": lr >= 0,
            "eps": eps >= 0,
            "weight_decay": weight_decay >= 0,
            "betas": all(0.0 <= b < 1.0 for b in betas),
            "gamma1": 0.0 <= gamma1 < 1.0,
            "gamma2": 0.0 <= gamma2 < 1.0,
            "gamma3": 0.0 <= gamma3 < 1.0,
            "reset_interval": isinstance(reset_interval, int) and reset_interval >= 0,
            "total_steps": total_steps is None or total_steps >= 1,
            "eta_min": 0.0 < eta_min <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"StableSPAM: invalid {name}={locals()[name]!r}")
        self.gamma1, self.gamma2, self.gamma3 = gamma1, gamma2, gamma3
        self.reset_interval, self.total_steps, self.eta_min = reset_interval, total_steps, eta_min
        self.fresh_reset = fresh_reset
        self._calls = 0  # T: completed step() calls
        # Telemetry, as SPAM: AdaClip'd entries per parameter and resets in the last step.
        self.track_clipping = False
        self.clipped_last_step: dict[torch.Tensor, int] = {}
        self.reset_last_step = False
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._calls += 1
        t, dt = self._calls, self.reset_interval
        reset = dt > 0 and t % dt == 0
        self.reset_last_step, self.clipped_last_step = reset, {}  # telemetry (see SPAM)
        s = beta1_scale(t, self.total_steps, self.eta_min)
        g1, g2, g3 = self.gamma1 * s, self.gamma2, self.gamma3
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            beta1 *= s
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("StableSPAM does not support sparse gradients")
                grad, state = p.grad, self.state[p]
                if "exp_avg" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    for key in EMA_KEYS:  # at least float32, whatever the parameter dtype
                        state[key] = torch.zeros((), dtype=torch.promote_types(p.dtype, torch.float32), device=p.device)
                state["step"] += 1
                k = state["step"]
                if wd > 0:
                    p.mul_(1 - lr * wd)
                # AdaClip: entries above the bias-corrected EMA of max|g| are scaled by M̂/max|g|.
                acc = state["m_max"].dtype
                gmax = grad.abs().max().to(acc)
                state["m_max"].mul_(g3).add_(gmax, alpha=1 - g3)
                m_hat = state["m_max"] / (1 - g3**k)
                ratio = (m_hat / gmax).to(grad.dtype)
                over = grad.abs() > m_hat.to(grad.dtype)
                if self.track_clipping:
                    self.clipped_last_step[p] = int(over.sum())
                grad = torch.where(over, grad * ratio, grad)
                # AdaGN: the whole tensor is rescaled to the EMA-normalised norm.
                n = torch.linalg.vector_norm(grad, dtype=acc)
                state["m_norm"].mul_(g1).add_(n, alpha=1 - g1)
                state["v_norm"].mul_(g2).add_(n * n, alpha=1 - g2)
                c = (state["m_norm"] / (1 - g1**k)) / ((state["v_norm"] / (1 - g2**k)).sqrt() + eps)
                grad = torch.where(n > 0, grad * (c / n).to(grad.dtype), grad)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if reset:  # MoRet
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(m), torch.zeros_like(v)
                    state["step"] = k = 1
                    if self.fresh_reset:
                        m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr * math.sqrt(1 - beta2**k) / (1 - beta1**k)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
        return loss

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["stable_spam"] = {"calls": self._calls}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # The EMAs are taken again from the saved tensors, at their own (float32 or wider) dtype.
        restore_saved_dtypes(self, state_dict, EMA_KEYS)
        extra = state_dict.get("stable_spam")
        if extra is not None:
            self._calls = int(extra["calls"])


@dataclass
class StableSPAMConfig:
    beta1: float = param(0.9, "First-moment decay (scaled by s when total_steps is set).", ge=0.0, lt=1.0)
    beta2: float = param(0.999, "Second-moment decay.", ge=0.0, lt=1.0)
    eps: float = param(1e-8, "Denominator epsilon (official default 1e-8).", gt=0.0)
    weight_decay: float = param(0.0, "Decoupled weight decay, applied before the update (official).", ge=0.0)
    gamma1: float = param(0.7, "γ1: EMA decay of the gradient norm in AdaGN (paper BF16 130M: 0.85).", ge=0.0, lt=1.0)
    gamma2: float = param(0.9, "γ2: EMA decay of the squared norm in AdaGN (paper BF16 130M: 0.99999).", ge=0.0, lt=1.0)
    gamma3: float = param(0.999, "γ3: EMA decay of max|g| in AdaClip.", ge=0.0, lt=1.0)
    reset_interval: int = param(
        1000, "ΔT: zero m, v on calls T ≡ 0 mod ΔT (official update_proj_gap); 0 = never.", ge=0
    )
    total_steps: int | None = param(
        None, "Steps of the cosine decay of β1 and γ1 to eta_min (official total_T); None = no decay.", ge=1
    )
    eta_min: float = param(0.5, "Final multiplier of the β1/γ1 cosine decay.", gt=0.0, le=1.0)
    fresh_reset: bool = param(False, "Zero m, v before use on a reset call (pytorch_optimizer); False = official.")


def make(
    model: torch.nn.Module,
    model_info: ModelInfo,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    gamma1: float = 0.7,
    gamma2: float = 0.9,
    gamma3: float = 0.999,
    reset_interval: int = 1000,
    total_steps: int | None = None,
    eta_min: float = 0.5,
    fresh_reset: bool = False,
) -> StableSPAM:
    params = [p for p in model.parameters() if p.requires_grad]
    return StableSPAM(
        params,
        lr=lr,
        betas=(beta1, beta2),
        eps=eps,
        weight_decay=weight_decay,
        gamma1=gamma1,
        gamma2=gamma2,
        gamma3=gamma3,
        reset_interval=reset_interval,
        total_steps=total_steps,
        eta_min=eta_min,
        fresh_reset=fresh_reset,
    )


SPEC = OptimizerSpec(
    name="stable_spam",
    factory=make,
    config_cls=StableSPAMConfig,
    description="Stable-SPAM: Adam + AdaClip + AdaGN + momentum reset",
    reference="Huang et al. 2025 arXiv 2502.17055; official TianjinYellow/StableSPAM semantics "
    "(docs/spam.md#stable-spam)",
    search_space={"lr": Dist(1e-4, 1e-2, log=True), "opt.gamma1": Dist(0.5, 0.9), "opt.gamma2": Dist(0.9, 0.9999)},
)
