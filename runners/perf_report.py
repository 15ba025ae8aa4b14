"""Benchmark: `spambench report` on a large synthetic results store (`make perf-report`).

Why: a leaderboard sweep leaves hundreds to thousands of complete runs in one store, each with
thousands of metric rows, and the report reads them all; it must stay fast and its memory must not
grow with every run added. Real stores of that size are slow to make, so this writes one from
copies of a few realistic run folders: spec.json, summary.json and metrics.jsonl shaped like a tiny
llm run with gradient telemetry (per step: training loss and lr, the total and per-role gradient
norms and maxima; a validation point every 250 steps; rare per-step spike events and, for SPAM-style
optimizers, momentum resets), about 8,100 metric rows per run. The summaries carry the current code
fingerprint of each (task, optimizer) pair; the report runs with --all-code all the same, so that an
edit to the code while the benchmark runs cannot hide runs (it checks that the report counted them all).

The store lives in a temporary folder outside the checkout. It is grown to a quarter, a half and all
of `--runs` runs, and after each step `spambench report` runs on it in a fresh process; the wall time
and that process's peak resident memory (ru_maxrss of the waited-for child) are printed, so that
growth with the number of runs is visible. Usage:

    python -m spam_bench.runners.perf_report [--runs 1000] [--sizes 250,500,1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spam_bench.suite.errors import ConfigError
from spam_bench.suite.resolve import code_of
from spam_bench.suite.results import METRICS, SPEC, SUMMARY
from spam_bench.suite.step_log import FINAL as STEPS_FILE
from spam_bench.suite.step_log import SPLIT as STEP_SPLIT
from spam_bench.suite.step_log import StepLog

TASK, SCALE, METRIC = "llm", "tiny", "val_ppl"
OPTIMIZERS = ("adamw", "spam", "adam", "stable_spam")  # registered names: the report fingerprints them
RESETTING = {"spam", "stable_spam"}  # optimizers that log momentum resets (every RESET_EVERY steps)
ROLES = ("attention", "mlp", "embedding")
STEPS = 900  # 9 rows per step (loss, lr, grad_norm, grad_norm/<role>, grad_max/<role>): ~8,100 rows a run
EVAL_EVERY = 250
RESET_EVERY = 500
SPIKE_RATE = 0.003  # per step and role: a few grad_spike/<role> events per run, as real runs log them
VARIANTS = 8  # distinct metrics.jsonl bodies per optimizer; runs are copies of them, like a sweep's seeds
TASK_CONFIG = {
    "batch_size": 8,
    "checkpoint_every": 250,
    "eval_every": EVAL_EVERY,
    "eval_tokens": 16384,
    "grad_clip": None,
    "hidden_size": 128,
    "intermediate_size": 352,
    "lr": 0.001,
    "lr_warmup_steps": 100,
    "n_heads": 4,
    "n_layers": 2,
    "seq_len": 128,
    "steps": STEPS,
    "telemetry": True,
    "threads": 1,
}
VERSIONS = {"python": "3.11.7", "spam-bench": "0.1.0", "torch": "2.13.0+cpu"}
HARDWARE = {"cpu": "x86_64", "cpu_count": 2, "device": "cpu", "torch_threads": 1}


@dataclass(frozen=True)
class Template:
    """One run's metrics.jsonl and steps.parquet (as bytes, copied into every run that uses them) and
    what its summary says."""

    body: bytes
    steps: bytes
    rows: int
    final: float
    wall_time_s: float
    spikes: dict[str, int]
    resets: int


def _template(optimizer: str, variant: int) -> Template:
    """A deterministic metrics.jsonl in the recorder's format (one JSON object a line, in step order)."""
    rng = random.Random(f"{optimizer}/{variant}")
    speed = 1.0 + 0.05 * OPTIMIZERS.index(optimizer)
    lines: list[str] = []
    spikes = dict.fromkeys(ROLES, 0)
    resets, wall, val = 0, 0.4, math.nan
    scratch = tempfile.TemporaryDirectory(prefix="spambench-perf-report-")
    step_log = StepLog(Path(scratch.name))  # the instruments' per-step rows, as the recorder stores them

    def log(step: int, split: str, name: str, value: float) -> None:
        if split == STEP_SPLIT:
            step_log.append(step, {name: value})
            return
        lines.append(json.dumps({"step": step, "split": split, "name": name, "value": value, "wall": round(wall, 4)}))

    for step in range(1, STEPS + 1):
        wall += 0.031 * speed + 0.004 * rng.random()
        spiked = [r for r in ROLES if rng.random() < SPIKE_RATE]
        for role in ROLES:
            norm = rng.lognormvariate(-0.5, 0.3) * (50.0 if role in spiked else 1.0)
            log(step, "optim", f"grad_norm/{role}", norm)
            log(step, "optim", f"grad_max/{role}", norm * rng.uniform(0.05, 0.4))
        for role in spiked:
            log(step, "optim", f"grad_spike/{role}", 1.0)
            spikes[role] += 1
        if optimizer in RESETTING and step % RESET_EVERY == 0:
            log(step, "optim", "optimizer_reset", 1.0)
            resets += 1
        log(step, "optim", "grad_norm", rng.lognormvariate(0.2, 0.3) * (50.0 if spiked else 1.0))
        loss = 3.2 + 7.0 * math.exp(-step / (250.0 * speed)) + rng.gauss(0.0, 0.08)
        log(step, "train", "loss", loss)
        log(step, "train", "lr", 0.001 * min(1.0, step / 100) * (0.5 + 0.5 * math.cos(math.pi * step / STEPS)))
        if step % EVAL_EVERY == 0 or step == STEPS:
            val = 3.2 + 7.0 * math.exp(-step / (250.0 * speed)) + rng.gauss(0.0, 0.02)
            log(step, "val", "loss", val)
            log(step, "val", "ppl", math.exp(val))
    body = ("\n".join(lines) + "\n").encode()
    rows = len(lines) + step_log.position()["rows"]
    parquet: list[bytes] = []
    with scratch:
        step_log.finish(lambda _path, data: parquet.append(data))  # the bytes a run folder gets
    return Template(body, parquet[0], rows, math.exp(val), round(wall + 0.5, 3), spikes, resets)


def _code_ids() -> dict[str, dict[str, Any] | None]:
    """Each optimizer's current code fingerprint with the llm task (None where a plug-in is missing)."""
    ids: dict[str, dict[str, Any] | None] = {}
    for optimizer in OPTIMIZERS:
        try:
            ids[optimizer] = code_of(TASK, optimizer)
        except ConfigError:
            ids[optimizer] = None
    return ids


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


class StoreBuilder:
    """Writes run folders into `<root>/runs/llm/`; `grow(n)` adds runs until the store holds n of them.

    `fingerprint=False` leaves the code fingerprints out of the summaries (computing them imports every
    optimizer plug-in, seconds a unit test need not spend; the report then needs --all-code)."""

    def __init__(self, root: Path, fingerprint: bool = True) -> None:
        self.root = Path(root)
        self.count = 0
        self.code = _code_ids() if fingerprint else dict.fromkeys(OPTIMIZERS)
        self.templates: dict[tuple[str, int], Template] = {}

    def template(self, optimizer: str, variant: int) -> Template:
        """Made on first use: a small store needs only a few."""
        if (optimizer, variant) not in self.templates:
            self.templates[(optimizer, variant)] = _template(optimizer, variant)
        return self.templates[(optimizer, variant)]

    def rows_per_run(self) -> float:
        """Mean metric rows of a run folder (the metrics.jsonl lines) over the templates made so far."""
        made = list(self.templates.values()) or [self.template(OPTIMIZERS[0], 0)]
        return sum(t.rows for t in made) / len(made)

    def grow(self, runs: int) -> None:
        while self.count < runs:
            self._write_run(self.count)
            self.count += 1

    def _write_run(self, index: int) -> None:
        optimizer, seed = OPTIMIZERS[index % len(OPTIMIZERS)], index // len(OPTIMIZERS)
        t = self.template(optimizer, seed % VARIANTS)
        digest = hashlib.sha256(f"{TASK}/{optimizer}/{seed}/{SCALE}".encode()).hexdigest()[:10]
        run_id = f"{optimizer}-s{seed}-{SCALE}-{digest}"
        run_dir = self.root / "runs" / TASK / run_id
        run_dir.mkdir(parents=True)
        spec = {
            "task": TASK,
            "optimizer": optimizer,
            "seed": seed,
            "scale": SCALE,
            "overrides": {},
            "opt_hparams": {},
            "device": "cpu",
        }
        code = self.code[optimizer]
        common = {"run_id": run_id, "primary_metric": METRIC, "direction": "min", "grad_clip": None, "code": code}
        _write_json(
            run_dir / SPEC,
            {**common, "spec": spec, "task_config": TASK_CONFIG, "optimizer_config": {"weight_decay": 0.0}},
        )
        (run_dir / METRICS).write_bytes(t.body)
        (run_dir / STEPS_FILE).write_bytes(t.steps)
        _write_json(
            run_dir / SUMMARY,  # last, as the recorder does: its presence makes the run complete
            {
                **spec,
                **common,
                "status": "complete",
                "value": t.final,
                "diverged_step": None,
                "reason": None,
                "steps": STEPS,
                "optimizer_steps": STEPS,
                "wall_time_s": t.wall_time_s,
                "tokens_per_s": round(STEPS * 8 * 128 / t.wall_time_s, 1),
                "optimizer_state_bytes": 2_162_688,
                "peak_memory_bytes": 412_000_000,
                "n_params": 270_336,
                "git": {"commit": "0123456789ab", "dirty": False},
                "versions": VERSIONS,
                "hardware": HARDWARE,
                "gss_spikes": {role: n for role, n in t.spikes.items() if n},
                "spike_events": {**{f"grad_spike/{r}": n for r, n in t.spikes.items()}, "loss_spikes": 0},
                "clipped_entries": None,
                "reset_steps": [RESET_EVERY * (k + 1) for k in range(t.resets)] or None,
            },
        )


def measure(root: Path, *extra: str) -> tuple[float, float, int, str]:
    """(wall s, peak RSS MB, exit status, stderr) of `spambench report --out root --all-code` in a fresh
    process (the figures included: the report as users run it).

    The peak is that child's ru_maxrss as os.wait4 returns it (Linux: KiB), so every size is measured
    on its own rather than as the maximum over every child this process has waited for."""
    cmd = [sys.executable, "-m", "spam_bench.runners.cli", "report", "--out", str(root), "--all-code", *extra]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "MPLBACKEND": "Agg"})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return wall, usage.ru_maxrss / 1024, proc.returncode, stderr


def _sizes(runs: int, sizes: str | None) -> list[int]:
    if sizes:
        return sorted({int(s) for s in sizes.split(",") if s.strip()})
    return sorted({max(1, runs // 4), max(1, runs // 2), runs})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spam_bench.runners.perf_report", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000, help="runs in the largest store (default 1000)")
    p.add_argument("--sizes", help="comma-separated store sizes to measure (default: runs/4, runs/2, runs)")
    p.add_argument("--keep", type=Path, help="build the store in this (new) folder and keep it")
    args = p.parse_args(argv)
    sizes = _sizes(args.runs, args.sizes)
    with tempfile.TemporaryDirectory(prefix="spambench-perf-report-") as tmp:
        root = args.keep or Path(tmp) / "store"
        builder = StoreBuilder(root)
        print(
            f"store: {root} ({TASK}/{SCALE}, {len(OPTIMIZERS)} optimizers, ~{builder.rows_per_run():,.0f} rows a run)"
        )
        print(f"{'runs':>6} {'metric rows':>12} {'build s':>8} {'report wall s':>14} {'peak RSS MB':>12}")
        results = []
        for n in sizes:
            start = time.perf_counter()
            builder.grow(n)
            built = time.perf_counter() - start
            wall, peak, code, stderr = measure(root)
            header = (root / "report" / "leaderboard.md").read_text() if code == 0 else ""
            if code != 0 or stderr.strip() or f"\n{n} complete runs (" not in header:
                print(f"spambench report failed on {n} runs (exit {code}):\n{stderr}{header[:400]}", file=sys.stderr)
                return 1
            results.append((n, wall, peak))
            rows = n * builder.rows_per_run()
            print(f"{n:>6} {rows:>12,.0f} {built:>8.1f} {wall:>14.1f} {peak:>12.0f}", flush=True)
        if len(results) > 1:
            (n0, _, m0), (n1, _, m1) = results[0], results[-1]
            print(f"peak RSS growth: {(m1 - m0) / (n1 - n0) * 1024:.0f} KiB per run added ({n0} -> {n1} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
