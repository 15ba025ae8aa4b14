"""Benchmark: what running a sweep through Ray Tune costs over the local runner.

The same 8 tiny llm specs (1 torch thread each) run (a) one after another in this process through
`runners.local.execute`, and (b) as a Ray Tune sweep with one trial at a time, so the difference
is Ray's own overhead (start-up, scheduling, trial processes, checkpoint reports); (c) the same
sweep with two trials at once shows what Ray buys on a 2-core machine. Each phase writes to its
own fresh store. Usage: `python -m spam_bench.runners.overhead [--trials 8] [--steps 600]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from spam_bench.runners.local import execute
from spam_bench.runners.ray_tune import SweepOptions, sweep
from spam_bench.suite.results import RunStore
from spam_bench.suite.sweep import expand


def _specs(trials: int, steps: int) -> list:
    sets = {
        "hidden_size": "64",
        "intermediate_size": "176",
        "n_heads": "2",
        "n_layers": "2",
        "seq_len": "64",
        "batch_size": "8",
        "steps": str(steps),
        "eval_every": str(steps),
        "eval_tokens": "4096",
        "checkpoint_every": "50",
        "threads": "1",
    }
    return expand(task="llm", optimizers=["adamw"], seeds=list(range(trials)), grid={}, sets=sets)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spam_bench.runners.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--steps", type=int, default=600)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = _specs(args.trials, args.steps)
        t0 = time.perf_counter()
        local_values = {}
        for run in runs:
            summary, _, _ = execute(run, RunStore(root / "local"))
            local_values[summary["run_id"]] = summary["value"]
        local_s = time.perf_counter() - t0
        timings = {}
        for concurrent in (1, 2):
            out = root / f"ray{concurrent}"
            t0 = time.perf_counter()
            results = sweep(runs, SweepOptions(name=f"overhead-{concurrent}", out=out, max_concurrent=concurrent))
            timings[concurrent] = time.perf_counter() - t0
            assert all(local_values[r["run_id"]] == r["value"] for r in results), "Ray and local runs differ"
    print(f"| runner | wall (s) | ratio to local |\n|---|---|---|\n| local, sequential | {local_s:.1f} | 1.00 |")
    for concurrent, wall in timings.items():
        print(f"| Ray Tune, {concurrent} trial(s) at once | {wall:.1f} | {wall / local_s:.2f} |")
    print(f"({args.trials} llm trials of {args.steps} steps, 1 torch thread each; same numbers from every runner)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
