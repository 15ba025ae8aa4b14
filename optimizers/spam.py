"""SPAM: Spike-Aware Adam with Momentum Reset (Huang et al., arXiv 2501.06842, ICLR 2025).

Our own implementation of the official HEAD semantics (TianjinYellow/SPAM-Optimizer `e8185fb`, as
described in shared/reference/SPAM.md §1.3-1.4). Two kernels, same results (tests compare both with a
literal oracle): eager (default) clamps g with a few tensor ops, then runs the Adam part in torch's
fused AdamW kernel; `compiled=True` fuses clip + Adam into one torch.compile kernel (one memory pass,
like fused AdamW) at the price of a one-off compile.

Names (ours -> official HEAD -> pytorch_optimizer 4.1):

| ours              | official `galore_torch/SPAM.py`              | pytorch_optimizer `SPAM` |
|-------------------|----------------------------------------------|--------------------------|
| `reset_interval`  | `DeltaT` (Jan-14: group `update_proj_gap`)   | `update_proj_gap`        |
| `warmup_steps`    | `warmup_steps` (before HEAD: `warmup_epoch`) | `warmup_epoch` (default 50!) |
| `spike_threshold` | `threshold`                                  | `threshold`              |
| `clip_delay`      | `grad_accu_steps` (not gradient accumulation)| `grad_accu_steps`        |
| `density`         | group key `density`                          | `density` (all 2-D params) |

Defects of the official code (SPAM.md §1.6) and what we do:

| official behaviour                                          | here                                          |
|-------------------------------------------------------------|-----------------------------------------------|
| script passes the LR warmup (1000) as N                      | N = `warmup_steps` = 150 by default           |
| weight decay is a no-op on masked params (§1.6.2)           | decoupled decay reaches every entry of every param |
| `DeltaT = 0` raises ZeroDivisionError                        | `reset_interval = 0` means never reset, never resample |
| `grad_accu_steps` name is misleading                         | `clip_delay`                                  |
| class named AdamW, deprecation warning, debug prints         | `SPAM`, silent                                |
| clipping writes into `p.grad`; `p.grad` reused as a buffer   | gradients are never modified                  |
| zero-v entries freeze in the clip window (quirk)             | kept (fidelity); `guard_zero_v=True` skips them |
| mask RNG is the global one; ΔT and warmup not saved          | own seeded generator, saved with the counters in `state_dict` |
| params without a gradient on a reset call keep stale m, v    | the reset zeroes every parameter's moments    |

Other choices: the per-parameter bias-correction count k_p is never reset (as official); state
dtype follows the parameter (`state_dtype="param"`, as official) or is float32; masks are stored
as sorted int32 flat indices (4 bytes per *masked* entry: 12d bytes per weight with fp32 moments,
less than a bool mask plus compact moments when d < 1/4, and what makes the gather fast). The
intersection copy at resampling is not done: the call right after a resample is always a reset
call, which zeroes every moment anyway.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from suite.config import param
from suite.model_info import MATRIX_ROLES, ModelInfo
from suite.registry import OptimizerSpec

STATE_DTYPES = ("param", "float32")


def warmup_factor(counter: int, warmup_steps: int) -> float:
    """The post-reset multiplier s: 0.01 at counter 0, cosine back to exactly 1 at `warmup_steps`."""
    if counter >= warmup_steps:
        return 1.0
    return 1.0 - 0.99 * (1.0 + math.cos(math.pi * counter / (warmup_steps + 1))) / 2.0


class SPAM(torch.optim.Optimizer):
    """Adam with spike-aware clipping, periodic momentum reset, post-reset warmup and sparse momentum.

    Param groups holding a `density` key get random masks: only masked entries keep moments and
    move. The counters (step t, steps since the warmup restart) are global, as in the official code.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, reset_interval: int = 500,
                 warmup_steps: int = 150, spike_threshold: float = 5000.0, clip_delay: int = 20,
                 guard_zero_v: bool = False, state_dtype: str = "param", mask_seed: int = 0,
                 compiled: bool = False):
        checks = {"lr": lr >= 0, "eps": eps >= 0, "weight_decay": weight_decay >= 0,
                  "betas": all(0.0 <= b < 1.0 for b in betas), "spike_threshold": spike_threshold >= 0,
                  "reset_interval": isinstance(reset_interval, int) and reset_interval >= 0,
                  "warmup_steps": isinstance(warmup_steps, int) and warmup_steps >= 0,
                  "clip_delay": isinstance(clip_delay, int) and clip_delay >= 0,
                  "state_dtype": state_dtype in STATE_DTYPES}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SPAM: invalid {name}={locals()[name]!r}")
        self.reset_interval, self.warmup_steps = reset_interval, warmup_steps
        self.spike_threshold, self.clip_delay = float(spike_threshold), clip_delay
        self.guard_zero_v, self.state_dtype, self.compiled = guard_zero_v, state_dtype, compiled
        self._mask_gen = torch.Generator(device="cpu")
        self._mask_gen.manual_seed(mask_seed)
        self._step = 0                       # K: completed calls; call t = K + 1
        self._since_restart = warmup_steps + 1  # C: starts past N, so no warmup before the first reset
        self._inf_steps: dict[torch.device, torch.Tensor] = {}
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    # ---- masks -------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if "density" not in group:
            return
        density = group["density"]
        if not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
            raise ValueError(f"SPAM: density must be in (0, 1], got {density!r}")
        for p in group["params"]:
            if p.ndim != 2:
                raise ValueError(f"SPAM: a param group with `density` may hold only 2-D parameters; "
                                 f"got one of shape {tuple(p.shape)}")
            # Masks are drawn here, in parameter order, so they depend only on mask_seed.
            perm = torch.randperm(p.numel(), generator=self._mask_gen)[: int(density * p.numel())]
            self.state[p]["mask_index"] = self._as_index(perm.sort().values, p)

    @staticmethod
    def _as_index(flat: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        dtype = torch.int32 if p.numel() < 2**31 else torch.int64
        return flat.to(device=p.device, dtype=dtype)

    def mask(self, p: torch.Tensor) -> torch.Tensor | None:
        """The dense boolean mask of `p` (None for unmasked params), for inspection and tests."""
        index = self.state[p].get("mask_index")
        if index is None:
            return None
        out = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
        out[index.long()] = True
        return out.view_as(p)

    def _resample_masks(self) -> None:
        for group in self.param_groups:
            if "density" not in group:
                continue
            for p in group["params"]:
                keep = torch.rand(p.numel(), generator=self._mask_gen) < group["density"]
                state = self.state[p]
                state["mask_index"] = self._as_index(keep.nonzero().squeeze(1), p)
                if "exp_avg" in state:  # new sizes; values are zeroed by the reset on the next call
                    n = state["mask_index"].numel()
                    state["exp_avg"] = state["exp_avg"].new_zeros(n)
                    state["exp_avg_sq"] = state["exp_avg_sq"].new_zeros(n)

    # ---- step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        t, dt = self._step + 1, self.reset_interval
        if dt > 0 and t % dt == 0:
            self._reset_moments()
        scale = warmup_factor(self._since_restart, self.warmup_steps)
        clip = self.spike_threshold != 0 and t >= self.clip_delay and (dt == 0 or t % dt >= self.clip_delay)
        for group in self.param_groups:
            self._step_group(group, scale, clip)
        self._step, self._since_restart = t, self._since_restart + 1
        if dt > 0 and (t + 1) % dt == 0:
            self._resample_masks()
            self._since_restart = 0
        return loss

    def _reset_moments(self) -> None:
        moments = [s[k] for s in self.state.values() if "exp_avg" in s for k in ("exp_avg", "exp_avg_sq")]
        if moments:
            torch._foreach_zero_(moments)

    def _step_group(self, group: dict[str, Any], scale: float, clip: bool) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        items = []  # (p, target, state, g, index)
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("SPAM does not support sparse gradients")
            state = self.state[p]
            sdtype = p.dtype if self.state_dtype == "param" else torch.float32
            # The fused kernel needs contiguous tensors of one dtype; others work on a copy.
            target = p if (p.dtype == sdtype and p.is_contiguous()) else p.detach().to(sdtype).contiguous()
            index = state.get("mask_index")
            g = p.grad.reshape(-1).index_select(0, index) if index is not None else p.grad
            g = g.to(sdtype).contiguous()
            if "exp_avg" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros(g.shape, dtype=sdtype, device=p.device)
                state["exp_avg_sq"] = torch.zeros(g.shape, dtype=sdtype, device=p.device)
            state["step"] += 1
            items.append([p, target, state, g, index])
        if not items:
            return
        buckets: dict[tuple[Any, ...], list[list[Any]]] = {}
        for it in items:
            buckets.setdefault((it[1].device, it[3].dtype, it[2]["step"]), []).append(it)
        for (device, _, k), bucket in buckets.items():
            step_size = lr * scale * math.sqrt(1.0 - beta2**k) / (1.0 - beta1**k)  # k_p is never reset
            outs = [it[1] if it[4] is None else torch.zeros_like(it[3]) for it in bucket]
            if self.compiled:
                # Complements in float64 first: 1 - float32(0.999) is off by 1e-5 relative.
                hp = torch.tensor([self.spike_threshold, beta1, 1 - beta1, beta2, 1 - beta2, step_size,
                                   group["eps"]], device=device, dtype=torch.float64)
                for it, out in zip(bucket, outs):
                    _compiled_kernel()(out.view(-1), it[3].view(-1), it[2]["exp_avg"].view(-1),
                                       it[2]["exp_avg_sq"].view(-1), hp, clip, self.guard_zero_v)
            else:
                if clip:
                    for it in bucket:
                        it[3] = _clip(it[3], it[2]["exp_avg_sq"], self.spike_threshold, self.guard_zero_v)
                # The kernel's own bias correction is disabled with an infinite step count, so it
                # computes exactly p -= step_size * m / (sqrt(v) + eps).
                inf = self._inf_steps.setdefault(device, torch.tensor(math.inf, device=device))
                torch._fused_adamw_(outs, [it[3] for it in bucket], [it[2]["exp_avg"] for it in bucket],
                                    [it[2]["exp_avg_sq"] for it in bucket], [], [inf] * len(bucket),
                                    lr=step_size, beta1=beta1, beta2=beta2, weight_decay=0.0,
                                    eps=group["eps"], amsgrad=False, maximize=False)
            for it, out in zip(bucket, outs):
                if it[4] is not None:  # masked: add the compact update at the masked positions only
                    it[1].view(-1).index_add_(0, it[4], out)
        targets = [it[1] for it in items]
        if wd > 0:  # decoupled, after the update, with the scheduled lr and without the warmup factor
            torch._foreach_add_(targets, targets, alpha=-lr * wd)
        for p, target, *_ in items:
            if target is not p:
                p.copy_(target)

    # ---- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["spam"] = {"step": self._step, "since_restart": self._since_restart,
                       "mask_generator": self._mask_gen.get_state()}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch casts every state tensor to the param dtype; keep float32 moments and int32 masks.
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            for key, value in state_dict["state"].get(i, {}).items():
                if torch.is_tensor(value):
                    self.state[p][key] = value.to(device=p.device)
        extra = state_dict.get("spam")
        if extra is not None:
            self._step, self._since_restart = int(extra["step"]), int(extra["since_restart"])
            self._mask_gen.set_state(extra["mask_generator"])


def _clip(g: torch.Tensor, v: torch.Tensor, theta: float, guard_zero_v: bool) -> torch.Tensor:
    """sign(g)·sqrt(θv) where g² > θv, with v the previous, not bias-corrected second moment.

    g² > θv  <=>  |g| > sqrt(θv), so this is a clamp to ±sqrt(θv): it keeps the sign, needs no
    boolean masks, and never writes into the user's gradient.
    """
    limit = torch.mul(v, theta).sqrt_()
    if guard_zero_v:
        limit.masked_fill_(v == 0, math.inf)
    clipped = torch.minimum(g, limit)
    return torch.maximum(clipped, limit.neg_(), out=clipped)


def _spam_kernel(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, hp: torch.Tensor,
                 clip: bool, guard_zero_v: bool) -> None:
    """Clip + Adam moments + update for one flat tensor; torch.compile fuses it into one pass."""
    theta, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, eps = hp.to(v.dtype).unbind(0)
    if clip:
        limit = torch.sqrt(v * theta)
        if guard_zero_v:
            limit = torch.where(v == 0, torch.full_like(limit, math.inf), limit)
        g = torch.maximum(torch.minimum(g, limit), -limit)
    m.lerp_(g, one_minus_beta1)
    v.mul_(beta2).add_(one_minus_beta2 * g * g)
    p.sub_(step_size * (m / (v.sqrt() + eps)))


_COMPILED: list[Callable[..., None]] = []


def _compiled_kernel() -> Callable[..., None]:
    """Compiled on first use (about 25 s cold on 2 CPU cores, a few seconds from inductor's cache)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(_spam_kernel, dynamic=True, fullgraph=True))
    return _COMPILED[0]


@dataclass
class SPAMConfig:
    beta1: float = param(0.9, "First-moment decay.", ge=0.0, lt=1.0)
    beta2: float = param(0.999, "Second-moment decay; sets the time scale the step counts refer to.", ge=0.0, lt=1.0)
    eps: float = param(1e-6, "Denominator epsilon, added after the sqrt; official default 1e-6 (not 1e-8).", ge=0.0)
    weight_decay: float = param(0.0, "Decoupled weight decay after the update; 0 in all published runs.", ge=0.0)
    reset_interval: int = param(500, "ΔT (official DeltaT): zero m, v on calls t ≡ 0 mod ΔT and resample masks; 0 = never.", ge=0)
    warmup_steps: int = param(150, "N: cosine ramp 0.01 -> 1 of the update after each reset (official 150).", ge=0)
    spike_threshold: float = param(5000.0, "θ: clip g to ±sqrt(θ v) where g² > θ v; 0 disables clipping.", ge=0.0)
    clip_delay: int = param(20, "A (official grad_accu_steps): no clipping for A calls after start and after each reset.", ge=0)
    density: float = param(1.0, "Sparse-momentum density on 2-D attention/MLP weights; 1 = dense Adam state.", gt=0.0, le=1.0)
    guard_zero_v: bool = param(False, "Do not clip entries whose v is exactly 0 (official code freezes them).")
    state_dtype: str = param("param", "Moment dtype: 'param' (official: bf16 with bf16 models) or 'float32'.", choices=STATE_DTYPES)
    mask_seed: int = param(0, "Seed of the optimizer's own mask generator (saved in state_dict).", ge=0)
    compiled: bool = param(False, "Fuse clip + Adam into one torch.compile kernel: ~1.2x fused AdamW instead of "
                                  "~4x, after a one-off compile of ~25 s (needs a C++ compiler; triton on CUDA).")


def make(model: torch.nn.Module, model_info: ModelInfo, *, lr: float, beta1: float = 0.9, beta2: float = 0.999,
         eps: float = 1e-6, weight_decay: float = 0.0, reset_interval: int = 500, warmup_steps: int = 150,
         spike_threshold: float = 5000.0, clip_delay: int = 20, density: float = 1.0,
         guard_zero_v: bool = False, state_dtype: str = "param", mask_seed: int = 0,
         compiled: bool = False) -> SPAM:
    """SPAM for `model`; with density < 1, 2-D attention/MLP weights get masks (as the paper's script)."""
    named = [(n, p, r) for n, p, r in model_info.named_parameters_with_roles(model) if p.requires_grad]
    if density < 1.0:
        sparse = [p for _, p, r in named if r in MATRIX_ROLES and p.ndim == 2]
        dense = [p for _, p, r in named if not (r in MATRIX_ROLES and p.ndim == 2)]
        groups: list[dict[str, Any]] = [g for g in ({"params": dense}, {"params": sparse, "density": density})
                                         if g["params"]]
    else:
        groups = [{"params": [p for _, p, _ in named]}]
    return SPAM(groups, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
                reset_interval=reset_interval, warmup_steps=warmup_steps, spike_threshold=spike_threshold,
                clip_delay=clip_delay, guard_zero_v=guard_zero_v, state_dtype=state_dtype, mask_seed=mask_seed,
                compiled=compiled)


SPEC = OptimizerSpec(
    name="spam",
    factory=make,
    config_cls=SPAMConfig,
    description="SPAM: Adam + spike-aware clipping + momentum reset (+ sparse momentum)",
    reference="Huang et al. 2025, arXiv 2501.06842; official HEAD e8185fb semantics",
)
