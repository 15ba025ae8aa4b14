"""`make perf-tasks`: each task's tiny-scale throughput and where one step's time goes.

Each task runs a shortened tiny run (the same model, batch and recipe; fewer steps, so the whole
table takes minutes) in a fresh process, one thread, and the table shows its optimizer steps per
second and the split of its time (`time_split_s` in the summary, suite/phase_clock.py): data,
forward/backward, the optimizer (clip rule, update, schedule), the telemetry, and other (evaluation,
checkpoints, a library's own loop).

`--against REF` adds an A/B: the same commands on the code of a git commit (checked out into a temp
folder, from this repository), interleaved with the current code (A B A B ...) so that both sides
see the same machine load, and the ratio of medians. The old side may predate the time split; its
wall time per optimizer step is still compared. Only commits with the `spam_bench` layout (the
package rename onwards) can be compared.

    python -m spam_bench.runners.perf_tasks [--tasks llm,rl] [--opt adamw] [--against REF] [--repeat 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spam_bench.suite.phase_clock import PHASES
from spam_bench.suite.registry import TASKS

# Per task: the shortened tiny run (a few percent of the full one, past its warm-up and first
# evaluation) and the unit its throughput is counted in.
SHORT: dict[str, list[str]] = {
    "llm": ["steps=60", "eval_every=60", "checkpoint_every=60"],
    "llm4bit": ["steps=30", "eval_every=30", "checkpoint_every=30"],
    "rl": ["total_timesteps=4096", "eval_every=4096", "checkpoint_every=4096"],
    "tsf": ["epochs=2"],
    "spikes": [],
    "vision": ["steps=100", "eval_every=100", "checkpoint_every=100"],
}
DEFAULT_TASKS = ("llm", "llm4bit", "rl", "tsf", "spikes")  # the leaderboard's tasks
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Measured:
    task: str
    code: str  # "current" or the ref
    wall_s: float  # the run's own wall time (summary), without process start
    optimizer_steps: int
    split: dict[str, float] | None

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.wall_s / max(1, self.optimizer_steps)


def _threads_flag(task: str) -> list[str]:
    """One torch thread, for the tasks whose config has the field (rl sets one thread itself)."""
    fields = {f.name for f in dataclasses.fields(TASKS.get(task).config_cls)}
    return ["--set", "threads=1"] if "threads" in fields else []


# Runs the console script of the tree on PYTHONPATH, with this checkout's editable-install finder
# removed: a module the old tree lacks must fail, not quietly come from the current code.
_ISOLATE = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', '')]\n"
_LAUNCH = (
    "import importlib, sys; module, _, func = sys.argv.pop(1).partition(':'); sys.argv[0] = 'spambench'; "
    "sys.exit(getattr(importlib.import_module(module), func)())"
)


def run_once(task: str, opt: str, out: Path, pythonpath: str | None, code: str, entry: str) -> Measured:
    launch = _ISOLATE + _LAUNCH if pythonpath is not None else _LAUNCH
    cmd = [sys.executable, "-c", launch, entry, "run", "--task", task, "--opt", opt]
    cmd += ["--scale", "tiny", "--out", str(out), "--force", *_threads_flag(task)]
    for item in SHORT[task]:
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise RuntimeError(f"{task} on {code} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    (summary_path,) = Path(out).glob(f"runs/{task}/*/summary.json")
    s: dict[str, Any] = json.loads(summary_path.read_text())
    steps = int(s.get("optimizer_steps") or s.get("steps") or 0)  # older summaries of spikes lack the first
    return Measured(task, code, float(s["wall_time_s"]), steps, s.get("time_split_s"))


CURRENT_ENTRY = "spam_bench.runners.cli:main"


def checkout(ref: str, into: Path) -> tuple[str, str]:
    """`ref` as a source tree with an importable `spam_bench` (the package-dir mapping rebuilt with
    links); returns the PYTHONPATH entry and its `spambench` entry point (module:function)."""
    tree = into / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref], check=True, capture_output=True
    )
    shim = into / "path" / "spam_bench"
    shim.mkdir(parents=True)
    for item in (tree / "spam_bench").iterdir():
        (shim / item.name).symlink_to(item)
    for folder in ("suite", "optimizers", "tasks", "runners", "reports"):
        (shim / folder).symlink_to(tree / folder)
    scripts = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["scripts"]
    return str(into / "path"), scripts["spambench"]


def remove_checkout(into: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(into / "tree")], capture_output=True)


def _split_row(m: Measured) -> str:
    if not m.split:
        return "| n/a " * (len(PHASES) + 1)
    total = m.split["total"] or 1.0
    return "".join(f"| {100 * m.split[p] / total:.0f}% " for p in (*PHASES, "other"))


def table(rows: list[Measured]) -> str:
    head = "| task | optimizer steps | wall s | ms/step | steps/s " + "".join(f"| {p} " for p in (*PHASES, "other"))
    lines = [head + "|", "|---" * (5 + len(PHASES) + 1) + "|"]
    for m in rows:
        rate = 1000 / m.ms_per_step if m.ms_per_step else float("nan")
        lines.append(
            f"| {m.task} | {m.optimizer_steps} | {m.wall_s:.1f} | {m.ms_per_step:.1f} | {rate:.1f} "
            + _split_row(m)
            + "|"
        )
    return "\n".join(lines)


def ab_table(current: dict[str, list[Measured]], old: dict[str, list[Measured]], ref: str) -> str:
    lines = [f"| task | {ref} ms/step (median) | current ms/step (median) | speed-up |", "|---|---:|---:|---:|"]
    for task in current:
        a = statistics.median(m.ms_per_step for m in old[task])
        b = statistics.median(m.ms_per_step for m in current[task])
        lines.append(f"| {task} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spam_bench.runners.perf_tasks", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma-separated, of {', '.join(SHORT)}")
    p.add_argument("--opt", default="adamw", help="the optimizer every task runs (default adamw)")
    p.add_argument("--against", help="a git commit to compare with (A/B, interleaved)")
    p.add_argument("--repeat", type=int, default=1, help="runs per task and side (medians are compared)")
    args = p.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in SHORT]
    if unknown or args.repeat < 1:
        bad = f"tasks: {','.join(unknown)} is not one of {', '.join(SHORT)}" if unknown else "repeat: must be >= 1"
        print(f"spambench: error: {bad}", file=sys.stderr)
        return 2
    current: dict[str, list[Measured]] = {t: [] for t in tasks}
    old: dict[str, list[Measured]] = {t: [] for t in tasks}
    with tempfile.TemporaryDirectory(prefix="spambench-perf-tasks-") as tmp:
        root = Path(tmp)
        old_path, old_entry = checkout(args.against, root / "ref") if args.against else (None, "")
        try:
            for task in tasks:
                for i in range(args.repeat):
                    cur = run_once(task, args.opt, root / f"cur-{task}-{i}", None, "current", CURRENT_ENTRY)
                    current[task].append(cur)
                    if old_path is not None:
                        out = root / f"old-{task}-{i}"
                        old[task].append(run_once(task, args.opt, out, old_path, args.against, old_entry))
                    print(f"{task}: {current[task][-1].ms_per_step:.1f} ms/step", file=sys.stderr, flush=True)
        finally:
            if args.against:
                remove_checkout(root / "ref")
    print(f"Tiny-scale runs of {args.opt}, shortened (runners/perf_tasks.py SHORT), one thread each:\n")
    print(table([min(ms, key=lambda m: m.wall_s) for ms in current.values()]))
    if args.against:
        print(f"\nA/B against {args.against} ({args.repeat} interleaved run(s) per side):\n")
        print(ab_table(current, old, args.against))
    return 0


if __name__ == "__main__":
    sys.exit(main())
