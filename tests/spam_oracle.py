"""A slow, literal SPAM: one parameter at a time, line by line as docs/spam.md#update-rule and
#sparse-momentum write it.

It exists only to be compared with `optimizers.spam.SPAM`, so it must stay obvious, not fast:
boolean masks, full-size scatter buffers, no fused kernels. The deliberate differences from the
official code are the ones `optimizers/spam.py` documents (weight decay reaches masked params,
the reset zeroes every parameter, `reset_interval=0` means never), and masks come from the same
seeded generator calls, in the same order, as the fast optimizer's.
"""

from __future__ import annotations

import math

import torch


class OracleSPAM:
    def __init__(
        self,
        groups,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-6,
        weight_decay=0.0,
        reset_interval=500,
        warmup_steps=150,
        spike_threshold=5000.0,
        clip_delay=20,
        guard_zero_v=False,
        mask_seed=0,
    ):
        self.groups = [dict(g) for g in groups]
        self.lr, self.betas, self.eps, self.wd = lr, betas, eps, weight_decay
        self.delta_t, self.n, self.theta, self.a = reset_interval, warmup_steps, spike_threshold, clip_delay
        self.guard = guard_zero_v
        self.gen = torch.Generator().manual_seed(mask_seed)
        self.total_step = 0  # K
        self.current_step = warmup_steps + 1  # C
        self.state: dict[torch.Tensor, dict] = {}
        for group in self.groups:
            for p in group["params"]:
                self.state[p] = {}
                if "density" in group:
                    # exactly floor(d * numel) entries at uniformly random positions
                    mask = torch.zeros(p.numel(), dtype=torch.bool)
                    mask[torch.randperm(p.numel(), generator=self.gen)[: int(group["density"] * p.numel())]] = True
                    self.state[p]["mask"] = mask.view(p.shape).to(p.device)

    def scale(self) -> float:
        c, n = self.current_step, self.n
        if c >= n:
            return 1.0
        return 1.0 - 0.99 * (1.0 + math.cos(math.pi * c / (n + 1))) / 2.0

    @torch.no_grad()
    def step(self) -> None:
        t = self.total_step + 1
        beta1, beta2 = self.betas
        if self.delta_t != 0 and t % self.delta_t == 0:  # momentum reset, every parameter
            for st in self.state.values():
                if "m" in st:
                    st["m"].zero_()
                    st["v"].zero_()
        s = self.scale()
        for group in self.groups:
            lr = group.get("lr", self.lr)
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                mask = st.get("mask")
                g = p.grad[mask] if mask is not None else p.grad.clone()
                if "m" not in st:
                    st["m"], st["v"], st["k"] = torch.zeros_like(g), torch.zeros_like(g), 0
                m, v = st["m"], st["v"]
                st["k"] += 1
                k = st["k"]
                in_window = t >= self.a and (self.delta_t == 0 or t % self.delta_t >= self.a)
                if self.theta != 0 and in_window:
                    spike = g**2 > self.theta * v  # previous v, not bias-corrected
                    if self.guard:
                        spike &= v > 0
                    g[spike] = g[spike].sign() * torch.sqrt(self.theta * v[spike])
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                alpha = lr * math.sqrt(1 - beta2**k) / (1 - beta1**k)
                u = m / (v.sqrt() + self.eps)
                if mask is not None:
                    full = torch.zeros_like(p)
                    full[mask] = u
                    p.add_(full, alpha=-alpha * s)
                else:
                    p.add_(u, alpha=-alpha * s)
                if self.wd > 0:
                    p.add_(p, alpha=-lr * self.wd)  # decoupled, after, no warmup factor
        self.total_step += 1
        self.current_step += 1
        if self.delta_t != 0 and (self.total_step + 1) % self.delta_t == 0:
            for group in self.groups:
                if "density" not in group:
                    continue
                for p in group["params"]:
                    st = self.state[p]
                    new = (torch.rand(p.numel(), generator=self.gen) < group["density"]).view(p.shape).to(p.device)
                    if "m" in st:  # copy the intersection (dead: a reset follows)
                        both = new & st["mask"]
                        m, v = st["m"].new_zeros(int(new.sum())), st["v"].new_zeros(int(new.sum()))
                        m[both[new]] = st["m"][both[st["mask"]]]
                        v[both[new]] = st["v"][both[st["mask"]]]
                        st["m"], st["v"] = m, v
                    st["mask"] = new
            self.current_step = 0
