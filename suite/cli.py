"""`spambench`: run | report | list | perf | fetch-data.

Every user error (unknown name, bad value, malformed flag) prints ONE line naming the field, the
value and what is allowed, exits with status 2, and writes nothing.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Sequence

from suite.config import field_docs, parse_assignments
from suite.errors import ConfigError
from suite.paths import out_root
from suite.registry import OPTIMIZERS, TASKS

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error over several lines; we promise one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"spambench: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="spambench", description="A benchmark suite for deep-learning optimizers around SPAM.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser("run", help="run one spec (resumes an interrupted run; skips a complete one)")
    run.add_argument("--task", required=True, help="a registered task (see `spambench list`)")
    run.add_argument("--opt", required=True, help="a registered optimizer (see `spambench list`)")
    run.add_argument("--seed", default="0", help="random seed, an int >= 0")
    run.add_argument("--scale", default="tiny", help="a scale of the task (tiny, paper-60m, ...)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a task field, or an optimizer hyperparameter as opt.KEY=VALUE (repeatable)")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    run.add_argument("--out", help="results store root (default $SPAMBENCH_OUT or ./out)")
    run.add_argument("--force", action="store_true", help="discard an existing run folder and start over")

    rep = sub.add_parser("report", help="summarise every complete run")
    rep.add_argument("--out", help="results store root (default $SPAMBENCH_OUT or ./out)")

    lst = sub.add_parser("list", help="show registered tasks and optimizers")
    lst.add_argument("what", nargs="?", choices=("tasks", "optimizers"), default=None)

    perf = sub.add_parser("perf", help="optimizer step time and state memory on LLaMA-60M shapes", add_help=False)
    perf.add_argument("perf_args", nargs=argparse.REMAINDER)

    fetch = sub.add_parser("fetch-data", help="download and verify a task's offline data")
    fetch.add_argument("--task", required=True)
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    from runners.local import execute
    from suite.resolve import resolve
    from suite.results import RunStore

    run = resolve(task=args.task, optimizer=args.opt, seed=args.seed, scale=args.scale,
                  sets=parse_assignments(args.set), device=args.device)
    store = RunStore(out_root(args.out))
    try:
        summary, run_dir, cached = execute(run, store, force=args.force)
    except KeyboardInterrupt:
        saved = (store.run_dir(run.spec.task, run.spec.run_id) / "checkpoint.pt").exists()
        where = "from its checkpoint" if saved else "(no checkpoint yet: it starts over)"
        print(f"\ninterrupted: run the same command again to resume {run.spec.run_id} {where}", file=sys.stderr)
        return 130
    metric, value = summary["primary_metric"], summary.get("value")
    shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"
    status = "already complete" if cached else summary["status"]
    extra = f" at step {summary['diverged_step']}" if summary.get("diverged_step") else ""
    speed = summary.get("tokens_per_s")
    speed_text = f", {speed:,.0f} tokens/s" if speed else ""
    print(f"{run.spec.task} {run.spec.optimizer} seed {run.spec.seed}: {metric} = {shown} ({status}{extra}; "
          f"{summary.get('wall_time_s', 0):.1f}s{speed_text}) -> {run_dir}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from reports.summary import write_report

    markdown, report_dir = write_report(out_root(args.out))
    print(markdown)
    print(f"written: {report_dir / 'summary.md'}, {report_dir / 'results.parquet'}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what in (None, "tasks"):
        print("tasks:")
        for name in TASKS.names():
            t = TASKS.get(name)
            print(f"  {name:10s} {t.description}  [scales: {', '.join(t.scales())}; "
                  f"metric: {t.primary_metric}, {'lower' if t.direction == 'min' else 'higher'} is better]")
    if args.what in (None, "optimizers"):
        print("optimizers:")
        for name in OPTIMIZERS.names():
            o = OPTIMIZERS.get(name)
            defaults = ", ".join(f"{k}={v}" for k, v in o.defaults().items())
            print(f"  {name:10s} {o.description}  [{defaults}]")
            if args.what == "optimizers":
                for field, doc in field_docs(o.config_cls).items():
                    print(f"      opt.{field}: {doc}")
    for registry in (TASKS, OPTIMIZERS):
        for name, reason in sorted(registry.broken.items()):
            print(f"  (broken {registry.kind} plug-in {name}: {reason})")
    return 0


def _cmd_perf(args: argparse.Namespace) -> int:
    # The benchmark knows optimizers by name, so it lives with them; the suite only dispatches.
    return int(importlib.import_module("optimizers.perf").main(args.perf_args) or 0)


def _cmd_fetch(args: argparse.Namespace) -> int:
    TASKS.get(args.task).fetch_data()
    print(f"data for {args.task}: ready")
    return 0


COMMANDS = {"run": _cmd_run, "report": _cmd_report, "list": _cmd_list, "perf": _cmd_perf, "fetch-data": _cmd_fetch}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run" and args.device == "cpu":
        # The tiny scale never needs the hub; fail in a second instead of retrying for half a minute.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"spambench: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
