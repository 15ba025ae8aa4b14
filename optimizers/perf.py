"""`spambench perf`: optimizer step time and state memory on LLaMA-60M parameter shapes.

One process, plain `nn.Parameter`s with a `ModelInfo` of roles (no task import), random gradients,
median of `--steps` timed steps after `--warmup` untimed ones; the optimizers take turns step by step
so that load from other processes hits them alike. The warm-up (default 25 > clip_delay 20) puts the
timed steps inside SPAM's clip window, where nearly all of its steps are; it also absorbs the
one-off build of SPAM's C kernel and, with `--kernels`, the torch.compile of the `compiled` rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from spam_bench.optimizers.spam import make as make_spam
from spam_bench.suite.model_info import ModelInfo

LLAMA_60M = dict(vocab=32000, hidden=512, intermediate=1376, layers=8)
SMALL = dict(vocab=256, hidden=32, intermediate=88, layers=2)


def llama_params(vocab: int, hidden: int, intermediate: int, layers: int) -> tuple[torch.nn.Module, ModelInfo]:
    """Parameters shaped like the GaLore/SPAM LLaMA (untied lm_head, RMSNorm weights, no biases)."""
    shapes: dict[str, tuple[tuple[int, ...], str]] = {"embed": ((vocab, hidden), "embedding")}
    for i in range(layers):
        for n in "qkvo":
            shapes[f"l{i}_{n}"] = ((hidden, hidden), f"attn_{n}")
        shapes[f"l{i}_gate"] = ((intermediate, hidden), "mlp")
        shapes[f"l{i}_up"] = ((intermediate, hidden), "mlp")
        shapes[f"l{i}_down"] = ((hidden, intermediate), "mlp")
        shapes[f"l{i}_norm1"] = ((hidden,), "norm")
        shapes[f"l{i}_norm2"] = ((hidden,), "norm")
    shapes["norm"] = ((hidden,), "norm")
    shapes["lm_head"] = ((vocab, hidden), "output")
    model = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.randn(s) * 0.02) for k, (s, _) in shapes.items()})
    return model, ModelInfo(
        roles={k: r for k, (_, r) in shapes.items()},
        hidden_size=hidden,
        n_heads=max(1, hidden // 64),
        n_kv_heads=max(1, hidden // 64),
    )


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        if isinstance(s, dict)
        for v in s.values()
        if torch.is_tensor(v)
    )


def masked_numel(opt: torch.optim.Optimizer) -> int:
    return sum(p.numel() for g in opt.param_groups if "density" in g for p in g["params"])


def time_round_robin(opts: dict[str, torch.optim.Optimizer], steps: int, warmup: int) -> dict[str, float]:
    """Median ms/step of each optimizer, timed in turns so that a busy machine slows all alike."""
    for opt in opts.values():
        for _ in range(warmup):
            opt.step()
    times: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(steps):
        for name, opt in opts.items():
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def _telemetry_overhead(model: torch.nn.Module, info: Any, adamw_ms: float, steps: int) -> str:
    """The spike telemetry's cost per step (per-role norms and max |g|, 64 sampled coordinates per
    tensor), against the optimizer step alone: a strict bound, since a training step adds the
    forward and backward passes on top."""
    from spam_bench.suite.clipping import ClipRule
    from spam_bench.suite.instruments import Instruments
    from spam_bench.suite.spike_config import SpikeFields

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # only its parameters matter here
    instruments = Instruments(
        model,
        info,
        SpikeFields(),
        seed=0,
        optimizer=optimizer,
        clip=ClipRule(task=None, optimizer=None),
        log=lambda *_: None,
    )
    times = []
    for _ in range(steps + 3):
        start = time.perf_counter()
        instruments.before_step()
        times.append(time.perf_counter() - start)
        instruments.after_step()
    ms = statistics.median(times[3:]) * 1e3
    return (
        f"\nspike telemetry: {ms:.1f} ms/step = {100 * ms / adamw_ms:.0f}% of a fused AdamW step "
        f"(the < 5% target is of a whole training step, forward and backward included)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spambench perf", description=__doc__)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per optimizer (median reported)")
    ap.add_argument("--warmup", type=int, default=25, help="untimed steps first (> clip_delay 20)")
    ap.add_argument("--small", action="store_true", help="tiny shapes, for smoke tests")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--no-third-party", action="store_true", help="skip pytorch_optimizer's SPAM (slow on CPU)")
    ap.add_argument("--no-zoo", action="store_true", help="skip the other registered optimizers")
    ap.add_argument(
        "--kernels",
        action="store_true",
        help="add SPAM's torch-ops kernels (eager, compiled: ~25 s compile) beside the default C kernel",
    )
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model, info = llama_params(**(SMALL if args.small else LLAMA_60M))
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    n_params = sum(p.numel() for p in params)

    rows: list[dict[str, Any]] = []
    candidates: list[tuple[str, Callable[[], torch.optim.Optimizer]]] = [
        ("torch AdamW foreach", lambda: torch.optim.AdamW(params, lr=1e-3, foreach=True)),
        ("torch AdamW fused", lambda: torch.optim.AdamW(params, lr=1e-3, fused=True)),
        ("spam dense", lambda: make_spam(model, info, lr=1e-3)),
        ("spam density 0.25 (attn/MLP)", lambda: make_spam(model, info, lr=1e-3, density=0.25)),
        ("spam density 0.3225 (authors' memory match)", lambda: make_spam(model, info, lr=1e-3, density=0.3225)),
    ]
    if args.kernels:
        for kernel in ("eager", "compiled"):
            candidates += [
                (f"spam dense, {kernel}", lambda k=kernel: make_spam(model, info, lr=1e-3, kernel=k)),
                (
                    f"spam density 0.25, {kernel}",
                    lambda k=kernel: make_spam(model, info, lr=1e-3, density=0.25, kernel=k),
                ),
            ]
    try:
        if args.no_third_party:
            raise ImportError
        import pytorch_optimizer as po

        candidates.append(("pytorch_optimizer SPAM", lambda: po.SPAM(params, lr=1e-3, warmup_epoch=150)))
    except ImportError:
        pass
    if not args.no_zoo:
        # Every other registered optimizer at its defaults, built through the registry like a task would.
        from spam_bench.suite.registry import OPTIMIZERS

        for name in OPTIMIZERS.names():
            if name not in ("adamw", "spam"):
                spec = OPTIMIZERS.get(name)
                candidates.append((name, lambda spec=spec: spec.build(model, info, 1e-3, {})))
    opts = {name: build() for name, build in candidates}
    timings = time_round_robin(opts, args.steps, args.warmup)
    for name, opt in opts.items():
        total, masked = state_bytes(opt), masked_numel(opt)
        row = {
            "optimizer": name,
            "ms_per_step": timings[name],
            "state_bytes": total,
            "bytes_per_param": total / n_params,
        }
        if masked:
            masked_bytes = sum(
                v.numel() * v.element_size()
                for g in opt.param_groups
                if "density" in g
                for p in g["params"]
                for v in opt.state[p].values()
                if torch.is_tensor(v)
            )
            row["bytes_per_masked_param"] = masked_bytes / masked
        rows.append(row)

    base = next(r for r in rows if r["optimizer"] == "torch AdamW fused")
    print(
        f"{n_params / 1e6:.2f}M params, {torch.get_num_threads()} threads, median of {args.steps} steps "
        f"after {args.warmup}\n"
    )
    print("| optimizer | ms/step | vs fused AdamW | state B/param | state vs fused AdamW |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        per = f"{r['bytes_per_param']:.2f}"
        if "bytes_per_masked_param" in r:
            per += f" ({r['bytes_per_masked_param']:.2f} per masked-group param)"
        print(
            f"| {r['optimizer']} | {r['ms_per_step']:.1f} | {r['ms_per_step'] / base['ms_per_step']:.2f}x | "
            f"{per} | {r['state_bytes'] / base['state_bytes']:.2f}x |"
        )
    print(_telemetry_overhead(model, info, base["ms_per_step"], args.steps))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"params": n_params, "threads": torch.get_num_threads(), "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
