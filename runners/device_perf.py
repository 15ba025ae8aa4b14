"""`spambench perf --device cuda`: fused AdamW against SPAM's device kernels on the llm task's paper shapes.

The parameter shapes come from the llm task's scales (tasks/llm/configs/paper-60m.yaml, paper-1b.yaml):
the task's own LLaMA is built on the `meta` device (shapes and names, no memory), then only its
parameters are allocated on the device, in each dtype, with random gradients. The timing is
optimizers/perf_cuda.py (torch.utils.benchmark, CUDA-synchronised). `--shrink K` divides the widths,
vocabulary and depth by K: the CPU dry run (`--device cpu --shrink 16`) runs the same code in seconds.
The CPU-only table of every optimizer is plain `spambench perf` (optimizers/perf.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from spam_bench.optimizers import perf_cuda, spam_triton
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.registry import TASKS
from spam_bench.suite.resolve import check_device
from spam_bench.tasks.llm.config import LLMConfig
from spam_bench.tasks.llm.model import Llama, LlamaShape
from spam_bench.tasks.llm.train import DTYPES, model_shape

EXIT_USAGE = 2


def scale_shape(scale: str, shrink: int = 1) -> LlamaShape:
    """The LLaMA shape of an llm scale, optionally with widths, vocabulary and depth divided by `shrink`
    (heads too, keeping whole, even head dimensions; for dry runs on a CPU)."""
    config = LLMConfig(**TASKS.get("llm").scale_values(scale))
    shape = model_shape(config, config.vocab_size)
    if shrink == 1:
        return shape
    heads = max(1, shape.n_heads // shrink)
    kv = None if shape.n_kv_heads is None else math.gcd(heads, max(1, shape.n_kv_heads // shrink))
    return dataclasses.replace(
        shape,
        vocab_size=max(16, shape.vocab_size // shrink),
        hidden_size=max(2 * heads, shape.hidden_size // shrink // (2 * heads) * (2 * heads)),
        intermediate_size=max(8, shape.intermediate_size // shrink),
        n_heads=heads,
        n_kv_heads=kv,
        n_layers=max(1, shape.n_layers // shrink),
    )


def meta_model(shape: LlamaShape) -> Llama:
    """The task's LLaMA with every tensor on the meta device: names, shapes and roles, no memory."""
    with torch.device("meta"):
        return Llama(shape)


def parameters_on(shape: LlamaShape, device: str, dtype: torch.dtype) -> Llama:
    """The LLaMA's parameters on `device` in `dtype`, N(0, 0.02) with N(0, 1) gradients. Only the
    optimizer touches them: the RoPE buffers are left uninitialised (no forward pass runs)."""
    model = meta_model(shape).to_empty(device=device).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
            p.grad = torch.randn_like(p)
    return model


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="spambench perf --device", description=__doc__)
    ap.add_argument("--device", required=True, help="cuda, cuda:N or cpu (cpu: a dry run of the same code)")
    ap.add_argument("--scales", default="paper-60m,paper-1b", help="llm scales whose shapes are timed")
    ap.add_argument("--dtypes", default="bfloat16,float32", help="parameter (and SPAM state) dtypes")
    ap.add_argument(
        "--kernels",
        default=",".join(perf_cuda.default_kernels()),
        help="SPAM kernels, of eager,compiled,triton (default: those that can run here)",
    )
    ap.add_argument("--shrink", type=int, default=1, help="divide widths, vocabulary and depth by this (dry runs)")
    ap.add_argument("--warmup", type=int, default=25, help="untimed steps first (> clip_delay 20)")
    ap.add_argument("--number", type=int, default=10, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=10, help="timed blocks (the median is reported)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    return ap.parse_args(argv)


def _checked(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """Scales, dtypes and kernels from the flags, each refused in one line when unknown."""
    check_device(args.device)
    scales, dtypes, kernels = (v.split(",") for v in (args.scales, args.dtypes, args.kernels))
    for scale in scales:
        if scale not in TASKS.get("llm").scales():
            raise ConfigError("scales", scale, TASKS.get("llm").scales())
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ConfigError("dtypes", dtype, list(DTYPES))
    for kernel in kernels:
        if kernel not in perf_cuda.DEVICE_KERNELS:
            raise ConfigError("kernels", kernel, list(perf_cuda.DEVICE_KERNELS))
        reason = spam_triton.unavailable_reason(torch.device(args.device)) if kernel == "triton" else None
        if reason is not None:
            raise ConfigError("kernels", kernel, f"{', '.join(perf_cuda.DEVICE_KERNELS[:2])} here ({reason})")
    for name in ("shrink", "warmup", "number", "blocks"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise ConfigError(name, getattr(args, name), ">= 0" if name == "warmup" else ">= 1")
    return scales, dtypes, kernels


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    scales, dtypes, kernels = _checked(args)
    timing = perf_cuda.Timing(warmup=args.warmup, number=args.number, blocks=args.blocks)
    rows: list[dict[str, Any]] = []
    for scale in scales:
        shape = scale_shape(scale, args.shrink)
        label = scale if args.shrink == 1 else f"{scale}/{args.shrink}"
        for dtype in dtypes:
            torch.manual_seed(0)
            model = parameters_on(shape, args.device, DTYPES[dtype])
            n_params = sum(p.numel() for p in model.parameters())
            for r in perf_cuda.time_variants(model, model.model_info(), timing, kernels):
                rows.append({"shapes": label, "n_params": n_params, "dtype": dtype, **r})
            del model
    return {
        "device": args.device,
        "device_name": device_name(args.device),
        "torch": torch.__version__,
        "timing": dataclasses.asdict(timing),
        "targets": f"dense SPAM <= {perf_cuda.DENSE_TARGET}x fused AdamW; sparse (d = {perf_cuda.DENSITY}) <= dense",
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    try:
        result = run(args)
    except ConfigError as err:
        print(f"spambench: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return EXIT_USAGE
    t = result["timing"]
    sizes = ", ".join(sorted({f"{r['shapes']} {r['n_params'] / 1e6:.2f}M params" for r in result["rows"]}))
    print(
        f"{result['device_name']}, torch {result['torch']}: {sizes}; median of {t['blocks']} blocks of "
        f"{t['number']} steps after {t['warmup']} (torch.utils.benchmark)\n"
    )
    print(perf_cuda.markdown(result["rows"]))
    print(f"\ntargets (reported, not enforced): {result['targets']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
