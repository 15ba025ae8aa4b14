"""Fake quantizers for quantization-aware training, with straight-through estimators.

"Fake" means quantize then dequantize: tensors stay floating point but only take values the low-
precision format can represent, so the forward pass sees the quantization error while the optimizer
still updates full-precision weights. Everything here is per group of `group_size` consecutive
entries of the last dimension; a last dimension that is not a multiple of the group is padded (with
values that cannot change the group's statistics) and the padding is dropped again.

What we follow: the SPAM paper did not release its quantizer; its authors' follow-up (Stable-SPAM,
arXiv 2502.17055; docs/spam.md#4-bit-qat) has `utils/act_weight_quantization.py`, `utils/dummy_quant.py`
and `utils/act_weight_fp4.py`, which we re-implement in our own words:
- weights (int): asymmetric min-max per group, integer zero point, round to nearest
  (`int_asymmetric`). Deviation: the official code clamps the zero point into [0, 2^b-1], which
  only matters for a group that does not contain 0 (then values get clipped); we leave it
  unclamped, so the error stays within half a step for every group.
- activations (int): symmetric absmax per group; the top-k |x| of each group are taken out before
  the absmax and put back unquantized; optional stochastic rounding, which here is
  floor(y + U[0,1)) (exactly unbiased; the official adds U[-0.5,0.5) then rounds half to even)
  drawn from an explicit, seeded generator (`int_symmetric`).
- fp4: an E1M2 minifloat grid scaled so the largest representable value is the group's absmax,
  top-k outliers kept (`minifloat`). Note: the official formula multiplies the step by
  absmax * 2^-bias, so its grid collapses to 9 uniform levels {-4..4} * absmax/4 (checked
  numerically); true E1M2 has 15 levels {-7..7} * absmax/7, which is what we implement.
- straight-through estimators (`ste`): the full-precision tensor receives the gradient of its
  quantized value unchanged, as the official `qweight.detach() + w - w.detach()` does for weights
  and its custom backward (grad_input = grad_output @ W) does for activations.

This module must stay free of model and training code: tensors in, tensors out.
"""

from __future__ import annotations

import torch

# The official clamps (`dummy_quant.py`: absmax >= 1e-6; `_quantize_tensor`: max - min >= 1e-5).
ABSMAX_EPS = 1e-6
RANGE_EPS = 1e-5


def ste(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """`xq` in the forward pass, identity gradient to `x` in the backward pass.

    The official weight STE's form; x + (xq - x) equals xq up to one rounding of x's dtype, which
    is far below a 4-bit step even in bfloat16.
    """
    return x + (xq - x).detach()


def _grouped(x: torch.Tensor, group_size: int, pad: str) -> tuple[torch.Tensor, int]:
    """x[..., n] as float32 [..., ceil(n/g), g]; pad "zero" (safe for absmax) or "edge" (repeats the
    last entry, safe for min and max)."""
    n = x.shape[-1]
    extra = -n % group_size
    xf = x.float()
    if extra:
        fill = xf[..., -1:].expand(*xf.shape[:-1], extra) if pad == "edge" else xf.new_zeros(*xf.shape[:-1], extra)
        xf = torch.cat((xf, fill), dim=-1)
    return xf.reshape(*x.shape[:-1], -1, group_size), n


def _ungrouped(g: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    return g.reshape(*like.shape[:-1], -1)[..., :n].to(like.dtype)


def _top_abs_indices(g: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest |g| along the last dimension, largest first (as topk orders them).

    k max passes, each knocking its winner out: for the k = 2 of every int4 run this is 2.5x
    faster than torch.topk on CPU over many short rows (64-wide groups), where topk was a quarter of
    a tiny llm4bit training step. |g| >= 0, so -1 can never win again (NaN still wins, as in topk).
    `max(dim).indices` picks what `argmax` picks (the first of equal maxima; NaN wins), and on CPU
    it takes about half argmax's time over these short rows (torch 2.13), so it is the one used.
    """
    remaining = g.abs()
    picks = []
    for _ in range(k):
        pick = remaining.max(-1, keepdim=True).indices
        remaining.scatter_(-1, pick, -1.0)
        picks.append(pick)
    return torch.cat(picks, dim=-1)


def _take_outliers(g: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Zero the top-k |g| of each group; return (rest, their indices, their values)."""
    k = min(topk, g.shape[-1])
    if k <= 0:
        return g, None, None
    idx = _top_abs_indices(g, k)
    return g.scatter(-1, idx, 0.0), idx, g.gather(-1, idx)


def _put_back(q: torch.Tensor, idx: torch.Tensor | None, values: torch.Tensor | None) -> torch.Tensor:
    return q if idx is None else q.scatter(-1, idx, values)


@torch.no_grad()
def int_asymmetric(x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Asymmetric min-max fake quantization to unsigned `bits` per group (the weight quantizer).

    step s = (max - min) / (2^b - 1), zero point z = round(-min / s), q = clamp(round(x/s) + z, 0,
    2^b - 1), value (q - z) * s: 0 is exact whenever the group contains it, and |error| <= s/2.
    """
    g, n = _grouped(x, group_size, pad="edge")
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    levels = 2**bits - 1
    step = (hi - lo).clamp(min=RANGE_EPS) / levels
    zero = torch.round(-lo / step)
    q = (torch.round(g / step) + zero).clamp(0, levels)
    return _ungrouped((q - zero) * step, n, x)


@torch.no_grad()
def int_symmetric(
    x: torch.Tensor, bits: int, group_size: int, topk: int = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Symmetric absmax fake quantization to signed `bits` per group (the activation quantizer).

    The top-k |x| of each group stay in full precision and do not set the scale. Round to nearest
    (|error| <= absmax / (2^(b-1) - 1) / 2), or stochastically when a generator is given (unbiased,
    |error| < one step).
    """
    g, n = _grouped(x, group_size, pad="zero")
    rest, idx, outliers = _take_outliers(g, topk)
    qmax = 2 ** (bits - 1) - 1
    scale = rest.abs().amax(-1, keepdim=True).clamp(min=ABSMAX_EPS) / qmax
    y = rest / scale
    if generator is None:
        y = torch.round(y)
    else:
        y = torch.floor(y + torch.rand(y.shape, generator=generator, device=y.device, dtype=y.dtype))
    q = y.clamp(-qmax - 1, qmax) * scale
    return _ungrouped(_put_back(q, idx, outliers), n, x)


@torch.no_grad()
def minifloat(x: torch.Tensor, group_size: int, exp_bits: int = 1, man_bits: int = 2, topk: int = 0) -> torch.Tensor:
    """Fake quantization to a sign + `exp_bits` + `man_bits` minifloat, per group, round to nearest.

    Every code is finite (no inf/NaN, as in OCP FP4) and subnormals are kept; the per-group scale
    maps the format's largest value onto the group's absmax (top-k outliers excluded and kept).
    E1M2 is a uniform grid k * absmax / 7, |k| <= 7; E2M1 is {0, .5, 1, 1.5, 2, 3, 4, 6} * absmax / 6.
    """
    g, n = _grouped(x, group_size, pad="zero")
    rest, idx, outliers = _take_outliers(g, topk)
    bias = 1  # any bias works: the per-group scale absorbs it
    min_exp, max_exp = 1 - bias, 2**exp_bits - 1 - bias
    fmax = (2 - 2.0**-man_bits) * 2.0**max_exp
    scale = rest.abs().amax(-1, keepdim=True).clamp(min=ABSMAX_EPS) / fmax
    y = rest.abs() / scale
    # log2(0) = -inf is clamped to the subnormal exponent, so zeros stay exact.
    step = torch.exp2(torch.floor(torch.log2(y)).clamp(min_exp, max_exp) - man_bits)
    q = (torch.round(y / step) * step).clamp(max=fmax)
    return _ungrouped(_put_back(torch.sign(rest) * q * scale, idx, outliers), n, x)
