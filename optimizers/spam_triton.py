"""SPAM's per-tensor step as one Triton kernel (`SPAM(kernel="triton")`), for CUDA.

Why: on a GPU the eager kernel is a chain of torch ops, each a pass over memory, and fused AdamW is
one. This kernel does SPAM's whole step in one pass, like the C kernel does on CPU: load g, m, v and
p; clip spikes (g² > θv, the test of docs/spam.md#spike-aware-clipping); update the moments; write
p. For a masked tensor it does the same for a list of flat positions with compact moments (gather,
clip, Adam, scatter). Arithmetic is in float32 whatever the state dtype, and each tensor's clipped entries
are counted with one atomic add per block.

Triton is optional: the `gpu` extra installs it (and `dev`, for the tests); CUDA builds of torch
bring it. With `TRITON_INTERPRET=1` Triton runs the kernel on CPU tensors with its interpreter, which
is how the tests check it against the oracle on a machine without a GPU; its speed is measured on CUDA by
`spambench perf --device cuda` (`make gpu-check`).
"""

from __future__ import annotations

import importlib.util
import os

import torch

BLOCK = 1024  # entries per program: 4 KiB of each fp32 stream, a few warps' worth


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the kernels cannot run (on `device`, if given), or None."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    if device is not None and device.type != "cuda" and not interpreted():
        return (
            f"Triton compiles for CUDA; {device.type} tensors need TRITON_INTERPRET=1 (Triton's interpreter, for tests)"
        )
    return None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def step(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    hyper: tuple[float, ...],
    clip: bool,
    guard_zero_v: bool,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """One SPAM step of flat contiguous `p` (all of it, or its entries at `index`) with gradient `g` and
    moments `m`, `v` (compact when `index` is given); `hyper` = (θ, 1-β1, β2, 1-β2, step size, eps).
    Returns the number of clipped entries as a 0-d int32 tensor on p's device (no host sync)."""
    import triton

    from spam_bench.optimizers.spam_triton_kernels import spam_step

    n = m.numel()
    clipped = torch.zeros((), dtype=torch.int32, device=p.device)
    if n == 0:
        return clipped
    masked = index is not None
    spam_step[(triton.cdiv(n, BLOCK),)](
        p,
        g,
        index if masked else m,
        m,
        v,
        clipped,
        n,
        *hyper,
        MASKED=masked,
        CLIP=clip,
        GUARD=guard_zero_v,
        BLOCK=BLOCK,
    )
    return clipped
