"""SPAM: Spike-Aware Adam with Momentum Reset (Huang et al., arXiv 2501.06842, ICLR 2025).

Our own implementation of the official HEAD semantics (TianjinYellow/SPAM-Optimizer `e8185fb`, as
docs/spam.md#update-rule and #sparse-momentum describe them). Four kernels, same results (tests
compare each with a literal oracle); `kernel="auto"` (default) takes the first that applies:

- native: float32 tensors on CPU go through `spam_kernel.c` (built on first use by `spam_native`),
  one pass over memory per tensor like torch's fused AdamW, with the spike test folded in: each
  chunk of 2048 entries first checks g² > θv with one vectorised comparison, and only chunks with a
  spike clip. Masked tensors stream through their bitmap: packed gradient entries, contiguous Adam
  on the compact moments, updates unpacked onto p (AVX-512 compress/expand where the CPU has it),
  so a masked step reads and writes only the masked entries' moments.
- eager: torch ops (accelerators, bf16 state, no C compiler). On CPU tensors go in cache blocks of
  `block_size` = 2^18 elements: g² - θv and a max find whether a block has a spike at all; then
  torch's fused AdamW kernel runs on the block while it is still in cache. Masked entries: the
  bitmap is decoded per block (nonzero), gathered (index_select), updated, added back (index_add_);
  on CPU that decoding makes it slow, on accelerators a whole tensor decodes without a host sync.
- `kernel="compiled"`: clip + Adam fused into one torch.compile kernel per tensor (and gather +
  clip + Adam + scatter for masked entries): every process pays a one-off compile, which is why it
  is never chosen automatically; useful on accelerators.
- `kernel="triton"`: the same fusion written as Triton kernels (`spam_triton`), for CUDA, counting
  clipped entries on the device; needs `triton` installed. Never chosen automatically either.

`make perf` (`spambench perf`) measures each kernel's speed and state size against fused AdamW; the
README records the results next to that command.

Names (ours -> official HEAD -> pytorch_optimizer 4.1):

| ours              | official `galore_torch/SPAM.py`              | pytorch_optimizer `SPAM` |
|-------------------|----------------------------------------------|--------------------------|
| `reset_interval`  | `DeltaT` (Jan-14: group `update_proj_gap`)   | `update_proj_gap`        |
| `warmup_steps`    | `warmup_steps` (before HEAD: `warmup_epoch`) | `warmup_epoch` (default 50!) |
| `spike_threshold` | `threshold`                                  | `threshold`              |
| `clip_delay`      | `grad_accu_steps` (not gradient accumulation)| `grad_accu_steps`        |
| `density`         | group key `density`                          | `density` (all 2-D params) |

Defects of the official code (docs/spam.md#official-quirks) and what we do (the reasons are in
docs/spam.md#deviations-spam):

| official behaviour                                          | here                                          |
|-------------------------------------------------------------|-----------------------------------------------|
| script passes the LR warmup (1000) as N                      | N = `warmup_steps` = 150 by default           |
| weight decay is a no-op on masked params                     | decoupled decay reaches every entry of every param |
| `DeltaT = 0` raises ZeroDivisionError                        | `reset_interval = 0` means never reset, never resample |
| `grad_accu_steps` name is misleading                         | `clip_delay`                                  |
| class named AdamW, deprecation warning, debug prints         | `SPAM`, silent                                |
| clipping writes into `p.grad`; `p.grad` reused as a buffer   | gradients are never modified                  |
| zero-v entries freeze in the clip window (quirk)             | kept (fidelity); `guard_zero_v=True` skips them |
| mask RNG is the global one; ΔT and warmup not saved          | own seeded generator, saved with the counters in `state_dict` |
| params without a gradient on a reset call keep stale m, v    | the reset zeroes every parameter's moments    |

Other choices: the per-parameter bias-correction count k_p is never reset (as official); state
dtype follows the parameter (`state_dtype="param"`, as official) or is float32. A mask is stored as
packed bits (bit j of byte b: flat position 8b + j), 1/8 B per weight, plus its entry count; with
fp32 moments the masked group's state is 8d + 1/8 bytes per weight (sorted int32 indices would be
12d, a bool mask 8d + 1). The spike test is g² > θv exactly as written
(docs/spam.md#spike-aware-clipping), in every kernel. The intersection copy at resampling is not
done: the call right after a resample is always a reset call, which zeroes every moment anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from spam_bench.optimizers import spam_native, spam_triton
from spam_bench.optimizers.state_io import restore_saved_dtypes
from spam_bench.suite.config import param
from spam_bench.suite.model_info import MATRIX_ROLES, ModelInfo
from spam_bench.suite.registry import OptimizerSpec
from spam_bench.suite.search_space import Dist

STATE_DTYPES = ("param", "float32")
KERNELS = ("auto", "native", "eager", "compiled", "triton")
DEFAULT_BLOCK = 1 << 18  # elements per CPU cache block (1 MiB of fp32 per buffer)


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """A flat bool mask as bits: bit j of byte b is position 8b + j, bytes padded to a multiple of 8
    (the C kernel reads 64-bit words; the padding bits are 0)."""
    padded = torch.zeros(-(-keep.numel() // 64) * 64, dtype=torch.uint8, device=keep.device)
    padded[: keep.numel()] = keep
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=keep.device)
    return padded.view(-1, 8).mul_(weights).sum(1, dtype=torch.uint8)


def _mask_block(block: int) -> int:
    """Positions per block of a masked tensor: a whole number of mask bytes."""
    return max(8, block // 8 * 8)


def unpack_mask(bits: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Positions [start, end) of a packed mask as bools; `start` is a multiple of 8."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    byte_bits = bits[start // 8 : (end + 7) // 8, None].bitwise_right_shift(shifts).bitwise_and_(1)
    return byte_bits.view(-1)[: end - start].bool()


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

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        reset_interval: int = 500,
        warmup_steps: int = 150,
        spike_threshold: float = 5000.0,
        clip_delay: int = 20,
        guard_zero_v: bool = False,
        state_dtype: str = "param",
        mask_seed: int = 0,
        kernel: str = "auto",
        block_size: int = DEFAULT_BLOCK,
    ):
        checks = {
            "lr": lr >= 0,
            "eps": eps >= 0,
            "weight_decay": weight_decay >= 0,
            "betas": all(0.0 <= b < 1.0 for b in betas),
            "spike_threshold": spike_threshold >= 0,
            "reset_interval": isinstance(reset_interval, int) and reset_interval >= 0,
            "warmup_steps": isinstance(warmup_steps, int) and warmup_steps >= 0,
            "clip_delay": isinstance(clip_delay, int) and clip_delay >= 0,
            "state_dtype": state_dtype in STATE_DTYPES,
            "kernel": kernel in KERNELS,
            "block_size": isinstance(block_size, int) and block_size > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SPAM: invalid {name}={locals()[name]!r}")
        self.reset_interval, self.warmup_steps = reset_interval, warmup_steps
        self.spike_threshold, self.clip_delay = float(spike_threshold), clip_delay
        self.guard_zero_v, self.state_dtype, self.kernel = guard_zero_v, state_dtype, kernel
        if kernel == "native" and spam_native.load() is None:
            raise RuntimeError(f"SPAM: kernel='native' is unavailable: {spam_native.unavailable_reason()}")
        if kernel == "triton" and spam_triton.unavailable_reason() is not None:
            raise RuntimeError(f"SPAM: kernel='triton' is unavailable: {spam_triton.unavailable_reason()}")
        self._mask_gen = torch.Generator(device="cpu")
        self._mask_gen.manual_seed(mask_seed)
        self._step = 0  # K: completed calls; call t = K + 1
        self._since_restart = warmup_steps + 1  # C: starts past N, so no warmup before the first reset
        self._inf_steps: dict[torch.device, torch.Tensor] = {}
        # Telemetry (off by default; spike instruments switch it on): entries clipped by the last
        # step per parameter (native and eager kernels; the compiled one does not count), and whether
        # the last step reset the moments.
        self.track_clipping = False
        self.clipped_last_step: dict[torch.Tensor, int] | None = {}
        self.reset_last_step = False
        # Work buffers of the cache blocks (per device and dtype, `block_size` elements each on CPU):
        # scratch, not optimizer state; they are neither saved nor counted.
        self.block_size = block_size
        self._scratch: dict[tuple[Any, ...], torch.Tensor] = {}
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
                raise ValueError(
                    f"SPAM: a param group with `density` may hold only 2-D parameters; "
                    f"got one of shape {tuple(p.shape)}"
                )
            # Masks are drawn here, in parameter order, so they depend only on mask_seed.
            perm = torch.randperm(p.numel(), generator=self._mask_gen)[: int(density * p.numel())]
            keep = torch.zeros(p.numel(), dtype=torch.bool)
            keep[perm] = True
            self._store_mask(p, keep)

    def _store_mask(self, p: torch.Tensor, keep: torch.Tensor) -> None:
        """Keep the mask as packed bits (1/8 B per weight) and its entry count: with fp32 moments the
        state is 8d + 1/8 bytes per weight of the masked group. Sorted int32 indices would be
        12d; the C kernel streams through a bitmap at full memory bandwidth (see spam_kernel.c)."""
        state = self.state[p]
        state["mask_bits"] = pack_mask(keep.view(-1)).to(p.device)
        state["mask_count"] = int(keep.sum())

    def _mask_count(self, p: torch.Tensor) -> int:
        return self.state[p]["mask_count"]

    def mask(self, p: torch.Tensor) -> torch.Tensor | None:
        """The dense boolean mask of `p` (None for unmasked params), for inspection and tests."""
        bits = self.state[p].get("mask_bits")
        return None if bits is None else unpack_mask(bits, 0, p.numel()).view_as(p)

    def _resample_masks(self) -> None:
        for group in self.param_groups:
            if "density" not in group:
                continue
            for p in group["params"]:
                keep = torch.rand(p.numel(), generator=self._mask_gen) < group["density"]
                self._store_mask(p, keep)
                state = self.state[p]
                if "exp_avg" in state:  # new sizes; values are zeroed by the reset on the next call
                    n = self._mask_count(p)
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
        self.reset_last_step = dt > 0 and t % dt == 0
        self.clipped_last_step = None if self.kernel == "compiled" else {}
        if self.reset_last_step:
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
        items: list[_Item] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("SPAM does not support sparse gradients")
            state = self.state[p]
            sdtype = p.dtype if self.state_dtype == "param" else torch.float32
            # The kernels need contiguous tensors of one dtype; others work on a copy.
            target = p if (p.dtype == sdtype and p.is_contiguous()) else p.detach().to(sdtype).contiguous()
            g = p.grad.to(sdtype).contiguous().view(-1)  # no copy in the common case
            masked = "mask_bits" in state
            if "exp_avg" not in state:
                n = self._mask_count(p) if masked else g.numel()
                state["step"] = 0
                state["exp_avg"] = torch.zeros(n, dtype=sdtype, device=p.device)
                state["exp_avg_sq"] = torch.zeros(n, dtype=sdtype, device=p.device)
                if not masked:
                    state["exp_avg"], state["exp_avg_sq"] = (
                        state["exp_avg"].view(p.shape),
                        state["exp_avg_sq"].view(p.shape),
                    )
            state["step"] += 1
            items.append(_Item(p, target, g, state, masked))
        if not items:
            return
        buckets: dict[tuple[Any, ...], list[_Item]] = {}
        for it in items:
            buckets.setdefault((it.target.device, it.g.dtype, it.state["step"]), []).append(it)
        for (device, dtype, k), bucket in buckets.items():
            step_size = lr * scale * math.sqrt(1.0 - beta2**k) / (1.0 - beta1**k)  # k_p is never reset
            kernel = self._kernel_for(device, dtype)
            if kernel == "native":
                self._native_bucket(bucket, step_size, beta1, beta2, group["eps"], clip)
            elif kernel == "compiled":
                self._compiled_bucket(bucket, device, step_size, beta1, beta2, group["eps"], clip)
            elif kernel == "triton":
                self._triton_bucket(bucket, device, step_size, beta1, beta2, group["eps"], clip)
            else:
                self._eager_bucket(bucket, device, dtype, step_size, beta1, beta2, group["eps"], clip)
        targets = [it.target for it in items]
        if wd > 0:  # decoupled, after the update, with the scheduled lr and without the warmup factor
            torch._foreach_add_(targets, targets, alpha=-lr * wd)
        for it in items:
            if it.target is not it.p:
                it.p.copy_(it.target)

    # ---- kernels -----------------------------------------------------------------------------
    def _kernel_for(self, device: torch.device, dtype: torch.dtype) -> str:
        """The kernel for one bucket: the C kernel takes float32 on CPU ('auto' and 'native') when
        it builds; everything else (bf16 state, accelerators, no compiler) takes the torch ops."""
        if self.kernel in ("auto", "native"):
            native = device.type == "cpu" and dtype == torch.float32 and spam_native.load() is not None
            return "native" if native else "eager"
        return self.kernel

    def _native_bucket(
        self, bucket: list[_Item], step_size: float, beta1: float, beta2: float, eps: float, clip: bool
    ) -> None:
        # Complements in float64 first (1 - float32(0.999) is off by 1e-5 relative), then float32 in C.
        hyper = (
            self.spike_threshold,
            beta1,
            1.0 - beta1,
            beta2,
            1.0 - beta2,
            step_size,
            eps,
            int(clip),
            int(self.guard_zero_v),
        )
        for it in bucket:
            flat, m, v = it.target.view(-1), it.state["exp_avg"].view(-1), it.state["exp_avg_sq"].view(-1)
            if not it.masked:
                clipped = spam_native.dense(flat, it.g, m, v, hyper)
            else:
                clipped = spam_native.masked(flat, it.g, it.state["mask_bits"], m, v, hyper)
            if clipped and self.track_clipping and self.clipped_last_step is not None:
                self.clipped_last_step[it.p] = self.clipped_last_step.get(it.p, 0) + clipped

    def _block(self, device: torch.device) -> int:
        """Elements per cache block: CPU works block by block; accelerators take whole tensors."""
        return self.block_size if device.type == "cpu" else 1 << 62

    def _buffer(self, name: str, device: torch.device, dtype: torch.dtype, n: int) -> torch.Tensor:
        """A reusable work buffer of >= n elements (no per-step allocation, hence no page faults)."""
        key = (name, device, dtype)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < n:
            buf = self._scratch[key] = torch.empty(n, dtype=dtype, device=device)
        return buf

    def _segments(self, it: _Item, block: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The masked entries of `it`, a block of `block` positions at a time: their range (start,
        end) in the compact moments and their flat positions (int64). A block that is the whole
        tensor uses the known count, so accelerators need no host sync."""
        n, bits, count = it.g.numel(), it.state["mask_bits"], it.state["mask_count"]
        if block >= n:
            yield 0, count, torch.nonzero_static(unpack_mask(bits, 0, n), size=count).squeeze(1)
            return
        block, k = _mask_block(block), 0
        for s in range(0, n, block):
            index = unpack_mask(bits, s, min(n, s + block)).nonzero().squeeze(1).add_(s)
            yield k, k + index.numel(), index
            k += index.numel()

    def _eager_bucket(
        self,
        bucket: list[_Item],
        device: torch.device,
        dtype: torch.dtype,
        step_size: float,
        beta1: float,
        beta2: float,
        eps: float,
        clip: bool,
    ) -> None:
        # The kernel's own bias correction is disabled with an infinite step count, so it computes
        # exactly p -= step_size * m / (sqrt(v) + eps).
        inf = self._inf_steps.setdefault(device, torch.tensor(math.inf, device=device))

        def adam(
            ps: list[torch.Tensor], gs: list[torch.Tensor], ms: list[torch.Tensor], vs: list[torch.Tensor]
        ) -> None:
            torch._fused_adamw_(
                ps,
                gs,
                ms,
                vs,
                [],
                [inf] * len(ps),
                lr=step_size,
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=eps,
                amsgrad=False,
                maximize=False,
            )

        dense = [it for it in bucket if not it.masked]
        masked = [it for it in bucket if it.masked]
        if dense and not clip:  # nothing to prepare: one multi-tensor call, no blocking needed
            adam(
                [it.target for it in dense],
                [it.g.view_as(it.target) for it in dense],
                [it.state["exp_avg"] for it in dense],
                [it.state["exp_avg_sq"] for it in dense],
            )
            dense = []
        if not dense and not masked:
            return
        # Cache blocking: clip (and gather) one block into work buffers, then run the fused Adam
        # kernel on it while it is still in cache. Small tensors share a block (one kernel call).
        block = self._block(device)
        if device.type == "cpu":
            size = max(block, _mask_block(block)) if masked else block
        else:
            size = max([it.g.numel() for it in dense] + [it.state["exp_avg"].numel() for it in masked])
        gbuf, sq, lim2 = (self._buffer(name, device, dtype, size) for name in ("g", "g_squared", "limit2"))
        pbuf = self._buffer("p", device, dtype, size) if masked else None
        theta, guard = self.spike_threshold, self.guard_zero_v
        ps: list[torch.Tensor] = []
        gs: list[torch.Tensor] = []
        ms: list[torch.Tensor] = []
        vs: list[torch.Tensor] = []
        scatters: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        used = 0

        def flush() -> None:
            nonlocal used
            if ps:
                adam(ps, gs, ms, vs)
                for flat, index, values in scatters:
                    flat.index_add_(0, index, values)
            ps.clear(), gs.clear(), ms.clear(), vs.clear(), scatters.clear()
            used = 0

        def clipped(
            g: torch.Tensor, v: torch.Tensor, at: int, n: int, out: torch.Tensor, owner: torch.Tensor
        ) -> torch.Tensor:
            """g with spikes (g² > θv, docs/spam.md#spike-aware-clipping) replaced by sign(g)·sqrt(θv)."""
            limit2, diff = torch.mul(v, theta, out=lim2[at : at + n]), sq[at : at + n]
            if device.type == "cpu":
                # Spikes are rare: look for one first (fl(g²) - fl(θv) > 0 has the sign of the
                # test, exactly). A block without one needs no sqrt and no copy. Float ops only:
                # bool outputs and any() are several times slower on CPU.
                torch.sub(torch.mul(g, g, out=diff), limit2, out=diff)
                if not bool(diff.max() > 0):
                    return g
            spike = torch.gt(torch.mul(g, g, out=diff), limit2)
            if guard:
                spike.logical_and_(v > 0)
            if self.track_clipping and self.clipped_last_step is not None:
                self.clipped_last_step[owner] = self.clipped_last_step.get(owner, 0) + int(spike.sum())
            return torch.where(spike, limit2.sqrt_().copysign_(g), g, out=out)

        for it in dense:
            pf, gf = it.target.view(-1), it.g
            mf, vf = it.state["exp_avg"].view(-1), it.state["exp_avg_sq"].view(-1)
            numel = gf.numel()
            for s in range(0, numel, block):
                e = min(numel, s + block)
                n = e - s
                if used + n > size:
                    flush()
                ps.append(pf[s:e]), ms.append(mf[s:e]), vs.append(vf[s:e])
                gs.append(clipped(gf[s:e], vf[s:e], used, n, gbuf[used : used + n], it.p))
                used += n
        for it in masked:
            pf, gf, mf, vf = it.target.view(-1), it.g, it.state["exp_avg"], it.state["exp_avg_sq"]
            for s, e, index in self._segments(it, block):
                n = e - s
                if n == 0:
                    continue
                if used + n > size:
                    flush()
                gsel = torch.index_select(gf, 0, index, out=gbuf[used : used + n])
                if clip:
                    gsel = clipped(gsel, vf[s:e], used, n, gsel, it.p)  # in place if there is a spike
                # The update lands in a zeroed block, then is added at the masked positions: as
                # fast as gathering p and copying it back.
                psel = pbuf[used : used + n].zero_()
                ps.append(psel), gs.append(gsel), ms.append(mf[s:e]), vs.append(vf[s:e])
                scatters.append((pf, index, psel))
                used += n
        flush()

    def _compiled_bucket(
        self,
        bucket: list[_Item],
        device: torch.device,
        step_size: float,
        beta1: float,
        beta2: float,
        eps: float,
        clip: bool,
    ) -> None:
        # Complements in float64 first: 1 - float32(0.999) is off by 1e-5 relative.
        hp = torch.tensor(
            [self.spike_threshold, beta1, 1 - beta1, beta2, 1 - beta2, step_size, eps],
            device=device,
            dtype=torch.float64,
        )
        block = self._block(device)
        for it in bucket:
            m, v = it.state["exp_avg"].view(-1), it.state["exp_avg_sq"].view(-1)
            if not it.masked:  # one pass over the whole tensor, no temporaries
                _compiled_kernel("dense")(it.target.view(-1), it.g, m, v, hp, clip, self.guard_zero_v)
                continue
            # Masked: gather, clip, Adam and scatter in one kernel, a cache block at a time (the
            # kernel's only temporary, the updated values before the scatter, stays small).
            for s, e, index in self._segments(it, block):
                if e > s:
                    _compiled_kernel("masked")(
                        it.target.view(-1), it.g, index, m[s:e], v[s:e], hp, clip, self.guard_zero_v
                    )

    def _triton_bucket(
        self,
        bucket: list[_Item],
        device: torch.device,
        step_size: float,
        beta1: float,
        beta2: float,
        eps: float,
        clip: bool,
    ) -> None:
        reason = spam_triton.unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"SPAM: kernel='triton' cannot step {device} tensors: {reason}")
        # Complements in float64 first (1 - float32(0.999) is off by 1e-5 relative), then float32 in the kernel.
        hyper = (self.spike_threshold, 1.0 - beta1, beta2, 1.0 - beta2, step_size, eps)
        block = self._block(device)
        for it in bucket:
            flat, m, v = it.target.view(-1), it.state["exp_avg"].view(-1), it.state["exp_avg_sq"].view(-1)
            if not it.masked:
                counts = [spam_triton.step(flat, it.g, m, v, hyper, clip, self.guard_zero_v)]
            else:
                counts = [
                    spam_triton.step(flat, it.g, m[s:e], v[s:e], hyper, clip, self.guard_zero_v, index)
                    for s, e, index in self._segments(it, block)
                    if e > s
                ]
            if clip and self.track_clipping and self.clipped_last_step is not None:
                clipped = int(sum(int(c) for c in counts))  # the one host sync, only when telemetry asks
                if clipped:
                    self.clipped_last_step[it.p] = self.clipped_last_step.get(it.p, 0) + clipped

    # ---- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["spam"] = {
            "step": self._step,
            "since_restart": self._since_restart,
            "mask_generator": self._mask_gen.get_state(),
        }
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        restore_saved_dtypes(self, state_dict)  # float32 moments and integer masks stay as saved
        extra = state_dict.get("spam")
        if extra is not None:
            self._step, self._since_restart = int(extra["step"]), int(extra["since_restart"])
            self._mask_gen.set_state(extra["mask_generator"])


def _clip_spikes(g: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, guard_zero_v: bool) -> torch.Tensor:
    """g with spikes, g² > θv (v: the previous, not bias-corrected second moment), replaced by
    sign(g)·sqrt(θv); exactly the test and the value of docs/spam.md#spike-aware-clipping."""
    limit2 = v * theta
    spike = g * g > limit2
    if guard_zero_v:
        spike = spike & (v > 0)
    return torch.where(spike, torch.sqrt(limit2).copysign(g), g)


def _dense_kernel(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, hp: torch.Tensor, clip: bool, guard_zero_v: bool
) -> None:
    """Clip + Adam moments + update for one flat tensor; torch.compile fuses it into one pass."""
    theta, _beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, eps = hp.to(v.dtype).unbind(0)
    if clip:
        g = _clip_spikes(g, v, theta, guard_zero_v)
    m.lerp_(g, one_minus_beta1)
    v.mul_(beta2).add_(one_minus_beta2 * g * g)
    p.sub_(step_size * (m / (v.sqrt() + eps)))


def _masked_kernel(
    p: torch.Tensor,
    g: torch.Tensor,
    index: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    hp: torch.Tensor,
    clip: bool,
    guard_zero_v: bool,
) -> None:
    """The same for the masked entries `index` of flat p and g, with compact m and v: gather,
    clip, Adam and scatter fused into one kernel."""
    theta, _beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, eps = hp.to(v.dtype).unbind(0)
    g = g[index]
    if clip:
        g = _clip_spikes(g, v, theta, guard_zero_v)
    m.lerp_(g, one_minus_beta1)
    v.mul_(beta2).add_(one_minus_beta2 * g * g)
    p.index_put_((index,), p[index] - step_size * (m / (v.sqrt() + eps)))


_COMPILED: dict[str, Callable[..., None]] = {}


def _compiled_kernel(kind: str) -> Callable[..., None]:
    """Compiled on first use, once per process (inductor's on-disk cache shortens later compiles)."""
    if kind not in _COMPILED:
        fn = _dense_kernel if kind == "dense" else _masked_kernel
        _COMPILED[kind] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _COMPILED[kind]


@dataclass(slots=True)
class _Item:
    """One parameter's share of a step: the tensor updated in place, its flat gradient, its state."""

    p: torch.Tensor
    target: torch.Tensor
    g: torch.Tensor
    state: dict[str, Any]
    masked: bool


@dataclass
class SPAMConfig:
    beta1: float = param(0.9, "First-moment decay.", ge=0.0, lt=1.0)
    beta2: float = param(0.999, "Second-moment decay; sets the time scale the step counts refer to.", ge=0.0, lt=1.0)
    eps: float = param(1e-6, "Denominator epsilon, added after the sqrt; official default 1e-6 (not 1e-8).", ge=0.0)
    weight_decay: float = param(0.0, "Decoupled weight decay after the update; 0 in all published runs.", ge=0.0)
    reset_interval: int = param(
        500, "ΔT (official DeltaT): zero m, v on calls t ≡ 0 mod ΔT and resample masks; 0 = never.", ge=0
    )
    warmup_steps: int = param(150, "N: cosine ramp 0.01 -> 1 of the update after each reset (official 150).", ge=0)
    spike_threshold: float = param(5000.0, "θ: clip g to ±sqrt(θ v) where g² > θ v; 0 disables clipping.", ge=0.0)
    clip_delay: int = param(
        20, "A (official grad_accu_steps): no clipping for A calls after start and after each reset.", ge=0
    )
    density: float = param(
        1.0,
        "Sparse-momentum density on 2-D attention/MLP weights; 1 = dense Adam state. State per masked "
        "weight with fp32 moments: 8d + 1/8 B (moments of the masked entries + a packed bitmap).",
        gt=0.0,
        le=1.0,
    )
    guard_zero_v: bool = param(False, "Do not clip entries whose v is exactly 0 (official code freezes them).")
    state_dtype: str = param(
        "param", "Moment dtype: 'param' (official: bf16 with bf16 models) or 'float32'.", choices=STATE_DTYPES
    )
    mask_seed: int = param(0, "Seed of the optimizer's own mask generator (saved in state_dict).", ge=0)
    kernel: str = param(
        "auto",
        "Step kernel: 'native' (C, float32 on CPU, built on first use), 'eager' (torch ops), "
        "'compiled' (torch.compile; a one-off compile per process), 'triton' (fused Triton kernels for "
        "CUDA; needs triton); 'auto' = native where it applies, else eager. Same results (tests compare "
        "each with the oracle).",
        choices=KERNELS,
    )


def make(
    model: torch.nn.Module,
    model_info: ModelInfo,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    reset_interval: int = 500,
    warmup_steps: int = 150,
    spike_threshold: float = 5000.0,
    clip_delay: int = 20,
    density: float = 1.0,
    guard_zero_v: bool = False,
    state_dtype: str = "param",
    mask_seed: int = 0,
    kernel: str = "auto",
) -> SPAM:
    """SPAM for `model`; with density < 1, 2-D attention/MLP weights get masks (as the paper's script)."""
    named = [(n, p, r) for n, p, r in model_info.named_parameters_with_roles(model) if p.requires_grad]
    if density < 1.0:
        sparse = [p for _, p, r in named if r in MATRIX_ROLES and p.ndim == 2]
        dense = [p for _, p, r in named if not (r in MATRIX_ROLES and p.ndim == 2)]
        groups: list[dict[str, Any]] = [
            g for g in ({"params": dense}, {"params": sparse, "density": density}) if g["params"]
        ]
    else:
        groups = [{"params": [p for _, p, _ in named]}]
    return SPAM(
        groups,
        lr=lr,
        betas=(beta1, beta2),
        eps=eps,
        weight_decay=weight_decay,
        reset_interval=reset_interval,
        warmup_steps=warmup_steps,
        spike_threshold=spike_threshold,
        clip_delay=clip_delay,
        guard_zero_v=guard_zero_v,
        state_dtype=state_dtype,
        mask_seed=mask_seed,
        kernel=kernel,
    )


# Log-uniform ranges centred (geometrically) near the paper's ΔT, N and θ. The warmup's range ends
# where the reset interval's begins, so every point ramps back to full steps before its next reset
# (docs/spam.md#warmup-after-reset); the ranges stay above the very short intervals and low
# thresholds the paper's ablations found harmful (docs/spam.md#step-counted-hyperparameters).
SEARCH = {
    "lr": Dist(1e-4, 1e-2, log=True),
    "opt.reset_interval": Dist(250, 1000, log=True, integer=True),
    "opt.warmup_steps": Dist(50, 250, log=True, integer=True),
    "opt.spike_threshold": Dist(500.0, 50000.0, log=True),
}

SPEC = OptimizerSpec(
    name="spam",
    factory=make,
    config_cls=SPAMConfig,
    description="SPAM: Adam + spike-aware clipping + momentum reset (+ sparse momentum)",
    reference="Huang et al. 2025, arXiv 2501.06842; official HEAD e8185fb semantics",
    search_space=SEARCH,
)
