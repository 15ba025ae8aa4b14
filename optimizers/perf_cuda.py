"""Step time of fused AdamW and SPAM's device kernels on one model's parameters, with torch.utils.benchmark.

The timing half of `spambench perf --device cuda` (runners/device_perf.py gives it the parameter shapes).
`torch.utils.benchmark.Timer` synchronises CUDA around each timed block, so a block's time is the
kernels' time, not their launch time. A row is the median over `blocks` blocks of `number` steps each,
after `warmup` untimed steps (default 25 > clip_delay 20: inside SPAM's clip window, where nearly all
its steps are, and past the one-off torch.compile of the `compiled` kernel).

SPAM's kernels share one optimizer per density: each kernel in turn steps the same state (masks,
moments), which the kernels lay out identically (tests compare every kernel with the oracle on the same
inputs). That draws the masks once (for LLaMA-1B, seconds of `randperm` on the host) instead of once
per kernel. All steps stay before SPAM's first momentum reset and mask resample (call 499 of 500).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.benchmark import Timer

from spam_bench.optimizers import spam_triton
from spam_bench.optimizers.perf import state_bytes
from spam_bench.optimizers.spam import make as make_spam
from spam_bench.suite.model_info import ModelInfo

BASELINE = "torch AdamW fused"
DENSE_TARGET = 1.2  # dense SPAM <= 1.2x fused AdamW; sparse (d = 0.25) no slower than dense
DENSITY = 0.25
DEVICE_KERNELS = ("eager", "compiled", "triton")  # the SPAM kernels that run on CUDA (native is CPU-only C)


def default_kernels() -> tuple[str, ...]:
    """The device kernels that can run here: triton only where Triton is installed."""
    return tuple(k for k in DEVICE_KERNELS if k != "triton" or spam_triton.unavailable_reason() is None)


@dataclass(frozen=True)
class Timing:
    """How many steps: `warmup` untimed, then `blocks` timed blocks of `number` steps each."""

    warmup: int = 25
    number: int = 10
    blocks: int = 10

    def steps_per_row(self) -> int:
        # Timer.timeit(number) runs max(number // 100, 2) untimed steps of its own before the block.
        return self.warmup + self.blocks * (self.number + max(self.number // 100, 2))


def median_ms(step: Callable[[], Any], timing: Timing) -> float:
    """Median ms per call of `step` over timed blocks (CUDA synchronised by the Timer)."""
    for _ in range(timing.warmup):
        step()
    timer = Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return statistics.median(timer.timeit(timing.number).mean for _ in range(timing.blocks)) * 1e3


def time_variants(
    model: torch.nn.Module, info: ModelInfo, timing: Timing, kernels: Sequence[str] = DEVICE_KERNELS
) -> list[dict[str, Any]]:
    """Rows {variant, kernel, density, ms_per_step, state_bytes_per_param, build_s, vs_fused_adamw, target,
    target_met} for fused AdamW, then SPAM dense and at density 0.25 with each kernel, on `model`'s
    parameters (random gradients already set); one optimizer alive at a time. `build_s` is the
    optimizer's construction (SPAM draws its masks there), on the first row of each optimizer only."""
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    rows: list[dict[str, Any]] = []

    def add(
        variant: str, kernel: str | None, density: float | None, opt: torch.optim.Optimizer, build: float | None
    ) -> None:
        rows.append(
            {
                "variant": variant,
                "kernel": kernel,
                "density": density,
                "ms_per_step": median_ms(opt.step, timing),
                "state_bytes_per_param": state_bytes(opt) / n_params,
                "build_s": build,
            }
        )

    start = time.perf_counter()
    adamw = torch.optim.AdamW(params, lr=1e-3, fused=True)
    add(BASELINE, None, None, adamw, time.perf_counter() - start)
    del adamw
    _free(params)
    for density in (1.0, DENSITY):
        start = time.perf_counter()
        spam = make_spam(model, info, lr=1e-3, density=density, kernel=kernels[0])
        _free(params)
        build: float | None = time.perf_counter() - start
        if len(kernels) * timing.steps_per_row() >= spam.reset_interval - 1:
            raise ValueError(f"{len(kernels)} kernels x {timing.steps_per_row()} steps would cross SPAM's reset")
        for kernel in kernels:
            spam.kernel = kernel  # same state layout in every kernel (see the module docstring)
            name = f"spam dense, {kernel}" if density == 1.0 else f"spam density {density:g}, {kernel}"
            add(name, kernel, density, spam, build)
            build = None
        del spam
        _free(params)
    return with_targets(rows)


def with_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's ratio to fused AdamW and its target: dense SPAM <= 1.2x fused AdamW, sparse SPAM
    <= dense SPAM with the same kernel. Reported, never enforced."""
    base = next(r["ms_per_step"] for r in rows if r["variant"] == BASELINE)
    dense = {r["kernel"]: r["ms_per_step"] for r in rows if r["density"] == 1.0}
    out = []
    for r in rows:
        r = {**r, "vs_fused_adamw": r["ms_per_step"] / base, "target": None, "target_met": None}
        if r["density"] == 1.0:
            r["target"] = f"<= {DENSE_TARGET:.2f}x fused AdamW"
            r["target_met"] = r["vs_fused_adamw"] <= DENSE_TARGET
        elif r["density"] is not None and r["kernel"] in dense:
            r["target"] = f"<= dense {r['kernel']} ({dense[r['kernel']]:.3f} ms)"
            r["target_met"] = r["ms_per_step"] <= dense[r["kernel"]]
        out.append(r)
    return out


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table, for rows that also carry `shapes` and `dtype`; "built in" is the optimizer's construction
    ("shared": the row above's optimizer, stepped by another kernel)."""
    lines = [
        "| shapes | dtype | variant | ms/step (median) | vs fused AdamW | target | state B/param | built in |",
        "|---|---|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        met = "" if r["target_met"] is None else (" (met)" if r["target_met"] else " (MISSED)")
        built = "shared" if r["build_s"] is None else f"{r['build_s']:.2f} s"
        lines.append(
            f"| {r['shapes']} | {r['dtype']} | {r['variant']} | {r['ms_per_step']:.3f} | "
            f"{r['vs_fused_adamw']:.2f}x | {r['target'] or ''}{met} | {r['state_bytes_per_param']:.2f} | {built} |"
        )
    return "\n".join(lines)


def _free(params: list[torch.Tensor]) -> None:
    """Give a freed optimizer's state back to the device, so the next one starts from the same memory."""
    if params and params[0].is_cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
