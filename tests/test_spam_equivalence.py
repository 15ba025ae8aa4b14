"""SPAM's fast path against the literal oracle, pytorch_optimizer, itself after a checkpoint, and bf16."""

from __future__ import annotations

import importlib.metadata
import io
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from spam_oracle import OracleSPAM

from spam_bench.optimizers import spam_native, spam_triton
from spam_bench.optimizers.spam import SPAM

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    ),
]
SHAPES = {"masked_a": (12, 10), "masked_b": (6, 16), "dense_2d": (7, 5), "dense_1d": (9,), "sometimes": (4, 3)}


def make_params(device: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen).to(device=device, dtype=dtype).requires_grad_() for k, s in SHAPES.items()}


def groups(ps: dict[str, torch.Tensor], density: float | None = 0.25) -> list[dict]:
    """masked_a at `density`, masked_b at 0.2: with 0.4, both mask encodings (uint8 gaps, int32 indices)."""
    dense = {"params": [ps["dense_2d"], ps["dense_1d"], ps["sometimes"]]}
    if density is None:
        return [{"params": [ps["masked_a"], ps["masked_b"], *dense["params"]]}]
    return [dense, {"params": [ps["masked_a"]], "density": density}, {"params": [ps["masked_b"]], "density": 0.2}]


def grads(
    step: int, ps: dict[str, torch.Tensor], seed: int = 1, skip: bool = True, period: int = 500
) -> dict[str, torch.Tensor | None]:
    """Deterministic gradients: noise with a drift, rare 1e4 spikes, zero early rows, skipped steps."""
    gen = torch.Generator().manual_seed(seed * 100_003 + step)
    out: dict[str, torch.Tensor | None] = {}
    for k, p in ps.items():
        g = torch.randn(p.shape, generator=gen) + 0.1
        if step % 97 == 5:
            g.view(-1)[step % g.numel()] *= 1e4
        if k == "dense_2d" and step % period < 25:
            g[0] = 0.0  # a row that first sees a gradient in the clip window
        out[k] = None if (skip and k == "sometimes" and step % 3 == 0) else g.to(device=p.device, dtype=p.dtype)
    return out


def drive(opt, ps: dict[str, torch.Tensor], steps: range, seed: int = 1) -> None:
    for t in steps:
        for k, g in grads(t, ps, seed).items():
            ps[k].grad = g
        opt.step()


HP = dict(
    lr=1e-2, weight_decay=0.01, eps=1e-6, reset_interval=500, warmup_steps=150, spike_threshold=5000.0, clip_delay=20
)


KERNELS = [
    "eager",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            spam_native.load() is None, reason=f"the C kernel is unavailable: {spam_native.unavailable_reason()}"
        ),
    ),
    pytest.param(
        "compiled",
        marks=[
            pytest.mark.skipif(
                shutil.which("g++") is None and shutil.which("cc") is None, reason="torch.compile needs a C++ compiler"
            ),
            pytest.mark.slow,  # torch.compile's one-off compile: seconds per case
        ],
    ),
    pytest.param(  # on CUDA here; on CPU through Triton's interpreter, in its own test below
        "triton", marks=pytest.mark.skipif(spam_triton.unavailable_reason() is not None, reason="no triton")
    ),
]


TRITON_CPU = pytest.param(
    "triton",
    marks=[
        pytest.mark.skipif(spam_triton.unavailable_reason() is not None, reason=f"{spam_triton.unavailable_reason()}"),
        pytest.mark.slow,  # Triton's interpreter runs the kernels in numpy: seconds per case
    ],
)


PORTABLE = pytest.param(
    "x86-64-v3", marks=pytest.mark.skipif(platform.machine() != "x86_64", reason="an x86-64 -march")
)


@pytest.mark.parametrize("block_size", [None, 7], ids=["whole", "blocks_of_7"])  # 7: many blocks, shared ones
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_matches_oracle_over_1200_steps_with_spikes_resets_and_resampling(
    device: str, kernel: str, block_size: int | None
) -> None:
    if kernel == "native" and (device != "cpu" or block_size):
        pytest.skip("the C kernel takes CPU tensors whole (block_size is the torch-ops kernel's)")
    if kernel == "triton" and device != "cuda":
        pytest.skip("Triton compiles for CUDA; on CPU its interpreter runs the kernels in their own test")
    check_against_oracle(device, kernel, block_size)


@pytest.mark.parametrize("kernel", [TRITON_CPU])
def test_triton_kernels_match_oracle_in_tritons_interpreter(kernel: str) -> None:
    """The CUDA kernels' arithmetic, masked gather/scatter and clip counts, run on CPU tensors by Triton's
    interpreter. In a process of its own: TRITON_INTERPRET is read as Triton's own jitted helpers are
    defined, at its import, and torch.compile elsewhere in a test process may import Triton first."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import {Path(__file__).stem} as t; t._triton_checks()"
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def _triton_checks() -> None:
    # A shorter schedule, past the first reset and mask resample: the interpreter is slow (40 ms a
    # step here), and the later steps repeat what these exercise (the CUDA test runs all 1200).
    check_against_oracle("cpu", "triton", None, steps=130, period=100)
    counts = []
    for k in ("triton", "eager"):  # the entries each clips, as the telemetry reads them
        ps = make_params("cpu")
        opt = SPAM(groups(ps, 0.4), **HP, mask_seed=7, kernel=k)
        opt.track_clipping = True
        seen = 0
        for t in range(1, 110):  # the spikes of step 102 fall in the clip window
            drive(opt, ps, range(t, t + 1))
            seen += sum(opt.clipped_last_step.values())
        counts.append(seen)
    assert counts[0] == counts[1] > 0, counts
    print("ok")


@pytest.mark.parametrize("march", [PORTABLE])
def test_c_kernel_without_avx512_matches_oracle(march: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AVX-512 compress/expand path is the default on CPUs that have it; the portable one
    (one count-trailing-zeros per masked entry) must give the same results."""
    monkeypatch.setenv("SPAMBENCH_KERNEL_ARCH", march)
    if spam_native.load() is None:
        pytest.skip(f"the C kernel is unavailable: {spam_native.unavailable_reason()}")
    check_against_oracle("cpu", "native", None)


def check_against_oracle(
    device: str, kernel: str, block_size: int | None, steps: int = 1200, period: int = 500
) -> None:
    """`period` is the reset interval (masks are resampled one step before); the warmup scales with it."""
    hp = {**HP, "reset_interval": period, "warmup_steps": HP["warmup_steps"] * period // HP["reset_interval"]}
    fast_p, ref_p = make_params(device), make_params(device)
    fast = SPAM(
        groups(fast_p, 0.4), **hp, mask_seed=7, kernel=kernel, **({"block_size": block_size} if block_size else {})
    )
    ref = OracleSPAM(groups(ref_p, 0.4), **hp, mask_seed=7)
    for t in range(1, steps + 1):
        for k, g in grads(t, fast_p, period=period).items():
            fast_p[k].grad = g
            ref_p[k].grad = None if g is None else g.clone()
        fast.step()
        ref.step()
        if t in (period - 1, period, period + 1, 2 * period, steps):
            for k in SHAPES:
                torch.testing.assert_close(
                    fast_p[k].detach(), ref_p[k].detach(), rtol=1e-6, atol=1e-6, msg=f"{k} t={t}"
                )
    for k in ("masked_a", "masked_b"):
        assert torch.equal(fast.mask(fast_p[k]), ref.state[ref_p[k]]["mask"])
        torch.testing.assert_close(fast.state[fast_p[k]]["exp_avg_sq"], ref.state[ref_p[k]]["v"], rtol=1e-5, atol=1e-9)
    assert fast.state[fast_p["dense_2d"]]["exp_avg_sq"][0].eq(0).all()  # the frozen-row quirk, reproduced


def test_matches_pytorch_optimizer_before_the_first_reset() -> None:
    po = pytest.importorskip("pytorch_optimizer")
    version = tuple(int(x) for x in importlib.metadata.version("pytorch_optimizer").split(".")[:2])
    assert version >= (4, 1), "pytorch_optimizer 3.x SPAM does not clip (docs/measured-facts.md#pytorch-optimizer-spam)"
    ours_p, theirs_p = make_params("cpu"), make_params("cpu")
    ours = SPAM(groups(ours_p, density=None), lr=1e-2, clip_delay=20, warmup_steps=150, reset_interval=500)
    theirs = po.SPAM(
        groups(theirs_p, density=None),
        lr=1e-2,
        density=1.0,
        weight_decay=0.0,
        warmup_epoch=150,
        threshold=5000,
        grad_accu_steps=20,
        update_proj_gap=500,
        eps=1e-6,
    )
    for t in range(1, 400):
        for k, g in grads(t, ours_p, skip=False).items():  # PO counts bias correction per group
            ours_p[k].grad = g
            theirs_p[k].grad = None if g is None else g.clone()
        ours.step()
        theirs.step()
    for k in SHAPES:
        torch.testing.assert_close(ours_p[k].detach(), theirs_p[k].detach(), rtol=1e-6, atol=1e-6, msg=k)


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_round_trip_continues_bit_identically(device: str) -> None:
    kw = dict(lr=1e-2, weight_decay=0.01, reset_interval=8, warmup_steps=3, clip_delay=2, mask_seed=3)
    straight_p = make_params(device)
    straight = SPAM(groups(straight_p, 0.4), **kw)
    drive(straight, straight_p, range(1, 41))

    first_p = make_params(device)
    first = SPAM(groups(first_p, 0.4), **kw)
    drive(first, first_p, range(1, 21))
    buf = io.BytesIO()
    torch.save({"params": {k: v.detach() for k, v in first_p.items()}, "opt": first.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed_p = {k: v.clone().requires_grad_() for k, v in ckpt["params"].items()}
    resumed = SPAM(groups(resumed_p, 0.4), **{**kw, "mask_seed": 99})  # generator state comes from the checkpoint
    resumed.load_state_dict(ckpt["opt"])
    drive(resumed, resumed_p, range(21, 41))

    for k in SHAPES:
        assert torch.equal(resumed_p[k], straight_p[k]), k
        for key in ("exp_avg", "exp_avg_sq", "mask_bits"):
            if key in straight.state[straight_p[k]]:
                assert torch.equal(resumed.state[resumed_p[k]][key], straight.state[straight_p[k]][key]), (k, key)
        assert resumed.state[resumed_p[k]].get("mask_count") == straight.state[straight_p[k]].get("mask_count")


@pytest.mark.parametrize("state_dtype, expected", [("param", torch.bfloat16), ("float32", torch.float32)])
def test_bfloat16_params_train_close_to_float32_with_chosen_state_dtype(
    state_dtype: str, expected: torch.dtype
) -> None:
    kw = dict(lr=1e-2, reset_interval=20, warmup_steps=5, clip_delay=3)
    low_p, ref_p = make_params("cpu", torch.bfloat16), make_params("cpu")
    for k in SHAPES:  # same starting point
        ref_p[k].data.copy_(low_p[k].detach().float())
    start = {k: v.detach().clone() for k, v in ref_p.items()}
    low = SPAM(groups(low_p), **kw, state_dtype=state_dtype)
    ref = SPAM(groups(ref_p), **kw)
    drive(low, low_p, range(1, 41))
    drive(ref, ref_p, range(1, 41))
    for k in SHAPES:
        assert low_p[k].dtype == torch.bfloat16
        assert low.state[low_p[k]]["exp_avg"].dtype == expected
        # bf16 weights round every update (ulp 2^-7 near 1 vs steps of ~1e-2): compare on average.
        error = (low_p[k].detach().float() - ref_p[k].detach()).abs().mean()
        assert error < 0.3 * (ref_p[k].detach() - start[k]).abs().mean(), k
    buf = io.BytesIO()
    torch.save(low.state_dict(), buf)
    buf.seek(0)
    again = SPAM(groups(low_p), **kw, state_dtype=state_dtype)
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert again.state[low_p["masked_a"]]["exp_avg_sq"].dtype == expected
