"""`make perf-roofline`: how close the tiny language models' forward and backward run to this CPU's
matmul peak, which bounds what any speed-up that keeps the computation can buy.

For `llm` and `llm4bit` at the tiny scale (their real model, batch and sequence length; random token
ids, since the cost does not depend on them) it measures, on one thread as the leaderboard's trials
run:

- the FLOPs of one forward + backward pass, counted by torch's own `FlopCounterMode`
  (torch.utils.flop_counter: the matmuls, and attention by torch's own formulas, mapped here onto the
  CPU attention kernels, which torch 2.13 does not count; full, not causal, attention FLOPs, as torch
  counts them);
- its wall time (median of `--steps` passes after warm-up) and so the achieved GFLOP/s;
- the peak: the GFLOP/s of a float32 `torch.mm` at the fastest of the models' own matmul shapes and
  a 1024-cube, timed in alternation with the pass (one of each per round), so that the share of peak
  is a ratio measured side by side under the same load (the median of the rounds' ratios);
- where the pass's time goes: the dense kernels' share (torch.profiler's self time of aten::mm, bmm
  and addmm and of the attention kernels) against everything else (log-softmax and cross-entropy,
  norms, rotary embeddings, activations, fills, and llm4bit's fake quantisation);
- two ceilings on a speed-up that keeps the computation: every op but the dense kernels made free,
  and on top of that the FLOPs run at the matmul peak. The first is what fusing (torch.compile, hand kernels)
  could approach at best; both assume nothing else changes.

    python -m spam_bench.runners.roofline [--tasks llm,llm4bit] [--steps 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from spam_bench.suite.resolve import resolve

TASKS = ("llm", "llm4bit")


@dataclass
class Roofline:
    task: str
    gflop: float  # per forward + backward
    ms: float  # median wall time of one forward + backward
    dense_share: float  # matmuls' and attention kernels' share of the profiled pass's self time
    peak_gflops: float  # median over the rounds of the peak-shape matmul's GFLOP/s
    share_of_peak: float  # median over the rounds of (the pass's GFLOP/s) / (the matmul's), side by side

    @property
    def gflops(self) -> float:
        return self.gflop / (self.ms / 1000)

    @property
    def ceiling_free_other_ops(self) -> float:
        """Speed-up if every op but the dense kernels took no time."""
        return 1 / self.dense_share

    @property
    def ceiling_at_peak(self) -> float:
        """Speed-up if the pass's FLOPs ran at the matmul peak and nothing else took time."""
        return 1 / self.share_of_peak


def _model_and_batch(task: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from spam_bench.tasks.llm.model import Llama
    from spam_bench.tasks.llm.train import model_shape

    config = resolve(task=task, optimizer="adamw", scale="tiny").config
    shape = model_shape(config, config.vocab_size)
    if task == "llm4bit":
        from spam_bench.tasks.llm4bit.model import QuantSpec, build_quantized_llama

        model = build_quantized_llama(shape, QuantSpec.from_config(config), seed=0)
    else:
        model = Llama(shape)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (config.batch_size, config.seq_len + 1), generator=generator)
    return model, tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model.loss(x, y).backward()  # type: ignore[operator]


def _ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def peak_shape(shapes: list[tuple[int, int, int]], tries: int = 3) -> tuple[int, int, int]:
    """The (m, k, n) of `shapes` at which float32 `torch.mm` runs fastest per FLOP on the current threads."""

    def gflops(shape: tuple[int, int, int]) -> float:
        m, k, n = shape
        a, b = torch.randn(m, k), torch.randn(k, n)
        return max(2 * m * k * n / _ms(partial(torch.mm, a, b)) / 1e6 for _ in range(tries + 1))

    return max(shapes, key=gflops)


def _linear_shapes(model: torch.nn.Module, tokens: int) -> list[tuple[int, int, int]]:
    """(tokens, in, out) of each distinct Linear: the model's own matmuls, forward."""
    return sorted({(tokens, m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)})


ATTENTION_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward")
ATTENTION = tuple(getattr(torch.ops.aten, name) for name in ATTENTION_OPS)
DENSE = ("aten::mm", "aten::bmm", "aten::addmm", *(f"aten::{name}" for name in ATTENTION_OPS))


def _attention_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return int(sdpa_flop_count(query, key, value))


def _attention_backward_flops(grad: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return int(sdpa_backward_flop_count(grad, query, key, value))


# torch's own attention formulas (FlopCounterMode passes shapes), for the CPU kernels it does not map.
CPU_ATTENTION_FLOPS = {ATTENTION[0]: _attention_flops, ATTENTION[1]: _attention_backward_flops}


def dense_share(fn: Callable[[], object], passes: int = 3) -> float:
    """The dense kernels' share of the self CPU time of `passes` calls of `fn`, by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(passes):
            fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in DENSE) / total


def measure(task: str, rounds: int, peak_at: tuple[int, int, int]) -> Roofline:
    """One task's roofline. The pass and the peak-shape matmul are timed in alternation, round by
    round, so that both see the same machine load; their ratio is taken per round, then the median."""
    model, x, y = _model_and_batch(task)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        _pass(model, x, y)
    gflop = counter.get_total_flops() / 1e9
    run = partial(_pass, model, x, y)
    m, k, n = peak_at
    matmul = partial(torch.mm, torch.randn(m, k), torch.randn(k, n))
    matmul_gflop = 2 * m * k * n / 1e9
    for _ in range(2):  # warm-up
        run(), matmul()
    pass_ms, peak, ratio = [], [], []
    for _ in range(rounds):
        ms, matmul_ms = _ms(run), _ms(matmul)
        pass_ms.append(ms)
        peak.append(matmul_gflop / (matmul_ms / 1000))
        ratio.append((gflop / ms) / (matmul_gflop / matmul_ms))
    return Roofline(
        task, gflop, statistics.median(pass_ms), dense_share(run), statistics.median(peak), statistics.median(ratio)
    )


def table(rows: list[Roofline]) -> str:
    lines = [
        "| task | GFLOP per fwd+bwd | ms per fwd+bwd | achieved GFLOP/s | fp32 matmul peak GFLOP/s "
        "| share of peak | matmul + attention share of the time | ceiling: other ops free | ceiling: and FLOPs at peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.gflop:.2f} | {r.ms:.1f} | {r.gflops:.1f} | {r.peak_gflops:.1f} | {r.share_of_peak:.0%} "
            f"| {r.dense_share:.0%} | {r.ceiling_free_other_ops:.2f}x | {r.ceiling_at_peak:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spam_bench.runners.roofline", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--steps", type=int, default=8, help="rounds (one pass and one peak matmul each); medians")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the leaderboard's trials use 1)")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks or args.steps < 1 or args.threads < 1:
        bad = ("tasks", args.tasks, f"a comma list of {', '.join(TASKS)}") if unknown or not tasks else None
        bad = bad or (
            ("steps", args.steps, "an int >= 1") if args.steps < 1 else ("threads", args.threads, "an int >= 1")
        )
        parser.exit(2, f"roofline: {bad[0]}: invalid value {bad[1]!r} (allowed: {bad[2]})\n")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [(1024, 1024, 1024)]
    for task in tasks:
        model, x, _ = _model_and_batch(task)
        shapes += _linear_shapes(model, x.numel())
    at = peak_shape(sorted(set(shapes)))
    rows = [measure(t, args.steps, at) for t in tasks]
    print(f"{args.threads} thread(s), torch {torch.__version__}, float32; peak = torch.mm at {at[0]}x{at[1]}x{at[2]}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
