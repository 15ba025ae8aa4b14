"""The Triton kernels behind `SPAM(kernel="triton")` (optimizers/spam_triton.py says why and how they
are launched). Importing this module needs Triton; nothing imports it until the kernel is used.

Module-level functions, because Triton's interpreter (TRITON_INTERPRET=1, the tests' CPU path)
resolves a jitted function's callees among its module's globals."""

import triton
import triton.language as tl


@triton.jit
def clip_spikes(g, v, inside, theta, clipped_ptr, GUARD: tl.constexpr):
    """g with spikes (g² > θv) replaced by sign(g)·sqrt(θv); counts them into *clipped_ptr."""
    limit2 = v * theta
    spike = (g * g > limit2) & inside
    if GUARD:
        spike = spike & (v > 0.0)
    tl.atomic_add(clipped_ptr, tl.sum(spike.to(tl.int32), axis=0))
    return tl.where(spike, tl.where(g < 0.0, -tl.sqrt(limit2), tl.sqrt(limit2)), g)


@triton.jit
def spam_step(
    p_ptr,
    g_ptr,
    index_ptr,
    m_ptr,
    v_ptr,
    clipped_ptr,
    n,
    theta,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    step_size,
    eps,
    MASKED: tl.constexpr,
    CLIP: tl.constexpr,
    GUARD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Entries [pid * BLOCK, +BLOCK) of the moments: of p and g at the same offsets (dense), or at the
    flat positions index_ptr holds there (MASKED: compact moments, p and g gathered and p scattered)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    if MASKED:
        at = tl.load(index_ptr + offs, mask=inside, other=0)
    else:
        at = offs
    g = tl.load(g_ptr + at, mask=inside, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + at, mask=inside, other=0.0)
    if CLIP:
        g = clip_spikes(g, v, inside, theta, clipped_ptr, GUARD)
    m = m + one_minus_beta1 * (g - m)  # torch's lerp for a weight below 0.5
    v = v * beta2 + one_minus_beta2 * g * g
    update = step_size * (m / (tl.sqrt(v) + eps))
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=inside)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=inside)
    tl.store(p_ptr + at, (p.to(tl.float32) - update).to(p_ptr.dtype.element_ty), mask=inside)
