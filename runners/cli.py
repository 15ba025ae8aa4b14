"""`spambench`: run | sweep | sensitivity | tune | report | list | perf | fetch-data.

Every user error (unknown name, bad value, malformed flag) prints ONE line naming the field, the
value and what is allowed, exits with status 2, and writes nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from spam_bench.suite.config import field_docs, json_ready, parse_assignments
from spam_bench.suite.config_file import FileConfig, load_config, use_scale
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.paths import out_root, writable_dir
from spam_bench.suite.registry import OPTIMIZERS, TASKS

if TYPE_CHECKING:
    from spam_bench.runners.ray_tune import SweepOptions

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error over several lines; we promise one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"spambench: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _ray_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="join an existing Ray cluster (host:port, ray://host:port or auto)")
    p.add_argument("--cpus-per-trial", default="1", help="CPUs reserved per trial (also its torch threads)")
    p.add_argument("--gpus-per-trial", default="0", help="whole GPUs per trial (CUDA runs get at least 1)")
    p.add_argument("--max-concurrent", default=None, help="at most this many trials at once")
    p.add_argument("--max-failures", default="2", help="retries per crashing trial (from its checkpoint)")
    p.add_argument(
        "--workers-per-trial",
        default="1",
        help="train each run data-parallel on N Ray Train workers, each with --cpus-per-trial CPUs and "
        "--gpus-per-trial GPUs (tasks llm and llm4bit; default 1: the trial trains in one process)",
    )
    p.add_argument("--name", help="experiment name (default: derived from the runs, so re-running finds it)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep (Tuner.restore)")
    p.add_argument("--out", help="results store root (default $SPAMBENCH_OUT or ./out)")


def _file_flags(p: argparse.ArgumentParser) -> None:
    """--config and the tracking flags: run, sweep and tune take the same ones."""
    p.add_argument(
        "--config", metavar="FILE.yaml", help="settings from a YAML file (task fields, opt.*, ...); --set wins"
    )
    p.add_argument(
        "--track",
        metavar="NAMES",
        help="also report to experiment trackers: tensorboard, wandb, mlflow (comma-separated)",
    )
    p.add_argument(
        "--track-every",
        metavar="N",
        help="send per-step training and telemetry records to trackers once per N steps (default 10)",
    )


def _tracking(args: argparse.Namespace, file: FileConfig) -> tuple[tuple[str, ...], int]:
    """(tracker names, rate) from the flags, else the config file; validated before anything runs."""
    from spam_bench.suite.tracking import parse_every, parse_trackers

    names = parse_trackers(args.track if args.track is not None else file.track)
    return names, parse_every(args.track_every if args.track_every is not None else file.track_every)


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="spambench", description="A benchmark suite for deep-learning optimizers around SPAM.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser("run", help="run one spec (resumes an interrupted run; skips a complete one)")
    run.add_argument("--task", required=True, help="a registered task (see `spambench list`)")
    run.add_argument("--opt", required=True, help="a registered optimizer (see `spambench list`)")
    run.add_argument("--seed", default="0", help="random seed, an int >= 0")
    run.add_argument(
        "--scale", default="tiny", help="a scale of the task (tiny, paper-60m, ...) or a path to your own scale .yaml"
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a task field, or an optimizer hyperparameter as opt.KEY=VALUE (repeatable)",
    )
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    run.add_argument("--out", help="results store root (default $SPAMBENCH_OUT or ./out)")
    run.add_argument("--force", action="store_true", help="discard an existing run folder and start over")
    run.add_argument(
        "--nproc",
        default=None,
        help="data-parallel processes for this one run, launched with torchrun (tasks llm and llm4bit)",
    )
    run.add_argument(
        "--keep-checkpoint",
        action="store_true",
        help="keep a completed run's last checkpoint (default: deleted once the summary is written), to train it on later",
    )
    _file_flags(run)

    sw = sub.add_parser("sweep", help="optimizers x seeds x grid on Ray Tune (embedded, or a cluster with --address)")
    sw.add_argument("--task", required=True)
    sw.add_argument("--opt", help="comma-separated optimizers, e.g. spam,adamw (or opt: in --config)")
    sw.add_argument("--seeds", help="seed ranges and lists, e.g. 0-4 or 0,2,5-7 (default 0)")
    sw.add_argument(
        "--grid", action="append", metavar="KEY=V1,V2", help="a grid axis (task key or opt.KEY); repeatable"
    )
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fixed override for every run; repeatable")
    sw.add_argument("--scale", default="tiny", help="a scale of the task or a path to your own scale .yaml")
    sw.add_argument("--device", default="cpu")
    sw.add_argument(
        "--from-tuning", action="store_true", help="use each optimizer's best configuration from `spambench tune`"
    )
    _ray_flags(sw)
    sw.add_argument("--keep-checkpoint", action="store_true", help="keep each completed run's last checkpoint")
    sw.add_argument(
        "--published",
        metavar="DIR",
        help="count runs in this published snapshot (spambench publish) as done when the current code made "
        "them, e.g. results: a new machine runs only what the snapshot lacks",
    )
    sw.add_argument(
        "--check-placement",
        nargs="?",
        const="5",
        metavar="HOLD_S",
        help="train nothing: place every trial as the sweep would, print its node, host and CUDA_VISIBLE_DEVICES, "
        "and check that no two trials at once shared a GPU; each trial holds its resources HOLD_S seconds "
        "(default 5) so that trials that fit at once overlap (docs/clusters.md)",
    )
    _file_flags(sw)

    sn = sub.add_parser(
        "sensitivity",
        help="LR sensitivity: a sweep of the learning rate (optimizers x --lrs x seeds) on Ray Tune; "
        "`spambench report` then adds its section",
    )
    sn.add_argument("--task", required=True)
    sn.add_argument("--opt", help="comma-separated optimizers, e.g. adamw,adam_clip,spam (or opt: in --config)")
    sn.add_argument(
        "--lrs",
        required=True,
        help="A..B:N = N log-spaced lrs from A to B inclusive (3 significant digits), or a comma list of lrs",
    )
    sn.add_argument("--seeds", help="seed ranges and lists (default 0-2: the CI bands need seeds)")
    sn.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fixed override for every run; repeatable")
    sn.add_argument("--scale", default="tiny", help="a scale of the task or a path to your own scale .yaml")
    sn.add_argument("--device", default="cpu")
    _ray_flags(sn)
    sn.add_argument("--keep-checkpoint", action="store_true", help="keep each completed run's last checkpoint")
    sn.add_argument(
        "--published",
        metavar="DIR",
        help="count runs in this published snapshot (spambench publish) as done when the current code made "
        "them, e.g. results: a new machine runs only what the snapshot lacks",
    )
    _file_flags(sn)

    tn = sub.add_parser(
        "tune", help="the same number of quasi-random trials per optimizer from its search space (ASHA)"
    )
    tn.add_argument("--task", required=True)
    tn.add_argument("--opt", help="comma-separated optimizers (or opt: in --config)")
    tn.add_argument("--trials", default="8", help="trials per optimizer")
    tn.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fixed override for every trial; repeatable")
    tn.add_argument("--scale", default="tiny", help="a scale of the task or a path to your own scale .yaml")
    tn.add_argument("--device", default="cpu")
    _ray_flags(tn)
    _file_flags(tn)

    rep = sub.add_parser("report", help="leaderboard (Markdown + HTML + plots) of every complete run")
    rep.add_argument("--out", help="results store root (default $SPAMBENCH_OUT or ./out)")
    rep.add_argument("--task", help="only these tasks (comma-separated)")
    rep.add_argument("--opt", help="only these optimizers (comma-separated)")
    rep.add_argument("--scale", help="only these scales (comma-separated)")
    rep.add_argument(
        "--since", help="only runs finished since an ISO date/time (2025-06-01) or within an age (7d, 12h)"
    )
    rep.add_argument(
        "--all-code",
        action="store_true",
        help="also runs made by other code versions (default: only the current code's runs)",
    )

    pub = sub.add_parser(
        "publish", help="RESULTS.md and its snapshot from a results store, added to the snapshot already there"
    )
    pub.add_argument("--out", help="results store root (default $SPAMBENCH_OUT or ./out)")
    pub.add_argument(
        "--into", default="results", help="folder to write RESULTS.md and its snapshot into (default results)"
    )
    pub.add_argument(
        "--replace",
        action="store_true",
        help="start the snapshot afresh (default: the store's runs are added to the snapshot already in --into)",
    )

    lst = sub.add_parser("list", help="show registered tasks and optimizers")
    lst.add_argument("what", nargs="?", choices=("tasks", "optimizers"), default=None)
    lst.add_argument("--json", action="store_true", help="machine-readable: one JSON object on stdout")

    perf = sub.add_parser(
        "perf",
        help="optimizer step time and state memory on LLaMA-60M shapes (--device cuda: fused AdamW vs SPAM on GPU)",
        add_help=False,
    )
    perf.add_argument("perf_args", nargs=argparse.REMAINDER)

    check = sub.add_parser(
        "check-optimizer",
        add_help=False,
        help="run the conformance kit on an optimizer (a registered name or module:attribute)",
    )
    check.add_argument("check_args", nargs=argparse.REMAINDER)

    fetch = sub.add_parser("fetch-data", help="download and verify a task's offline data")
    fetch.add_argument("--task", required=True)
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    from spam_bench.runners.local import execute
    from spam_bench.suite.distributed import World
    from spam_bench.suite.object_store import open_store
    from spam_bench.suite.resolve import resolve
    from spam_bench.suite.tracking import TrackSettings, tracked_recorder

    file = load_config(args.config, "run") if args.config else FileConfig()
    track, every = _tracking(args, file)
    nproc = _nproc(args)
    run = resolve(
        task=args.task,
        optimizer=args.opt,
        seed=args.seed,
        scale=use_scale(TASKS.get(args.task), args.scale),
        sets={**file.sets, **parse_assignments(args.set)},  # the command line wins
        device=args.device,
    )
    store = open_store(args.out)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # everything checked here: now torchrun's processes
        run.task.check_world(run.config, nproc)  # type: ignore[attr-defined]  # distributed tasks have it
        return _launch_torchrun(nproc, args.argv)
    world = World.from_env(args.device)
    if world.active and not getattr(run.task, "distributed", False):
        raise ConfigError("nproc", world.size, f"1 for task {args.task} (data-parallel tasks: llm, llm4bit)")
    recorder_cls = tracked_recorder(TrackSettings(track, group=args.task, every=every))
    try:
        summary, run_dir, cached = execute(
            run,
            store,
            force=args.force,
            recorder_cls=recorder_cls,
            keep_checkpoint=args.keep_checkpoint,
            world=world,
        )
    except KeyboardInterrupt:
        saved = (store.run_dir(run.spec.task, run.spec.run_id) / "checkpoint.pt").exists()
        where = "from its checkpoint" if saved else "(no checkpoint yet: it starts over)"
        print(f"\ninterrupted: run the same command again to resume {run.spec.run_id} {where}", file=sys.stderr)
        return 130
    world.close()  # after success only: a failed rank exits and torchrun stops the others
    if not world.is_main:
        return 0  # rank 0 prints the result
    metric, value = summary["primary_metric"], summary.get("value")
    shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"
    status = "already complete" if cached else summary["status"]
    extra = f" at step {summary['diverged_step']}" if summary.get("diverged_step") else ""
    extra += f": {summary['reason']}" if summary.get("reason") else ""
    speed = summary.get("tokens_per_s")
    speed_text = f", {speed:,.0f} tokens/s" if speed else ""
    print(
        f"{run.spec.task} {run.spec.optimizer} seed {run.spec.seed}: {metric} = {shown} ({status}{extra}; "
        f"{summary.get('wall_time_s', 0):.1f}s{speed_text}) -> {store.where(run_dir)}"
    )
    return 0


def _nproc(args: argparse.Namespace) -> int:
    """--nproc N (default 1), checked before anything starts."""
    from spam_bench.suite.config import coerce

    if args.nproc is None:
        return 1
    nproc = coerce("nproc", args.nproc, int)
    if not 1 <= nproc <= 1024:
        raise ConfigError("nproc", nproc, "an int from 1 to 1024")
    if nproc > 1 and not getattr(TASKS.get(args.task), "distributed", False):
        raise ConfigError("nproc", nproc, f"1 for task {args.task} (data-parallel tasks: llm, llm4bit)")
    return nproc


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    """This same command in `nproc` processes under torchrun (torch.distributed.run, standalone: one
    machine, a free port); for several machines, run `torchrun ... -m spam_bench.runners.cli run ...`."""
    rest, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.run([*cmd, "-m", "spam_bench.runners.cli", *rest]).returncode


def _ray_options(args: argparse.Namespace, out: Path, name: str) -> SweepOptions:
    """Validate the Ray flags (one-line errors) and check the cluster address, before Ray starts."""
    from spam_bench.runners.ray_tune import SweepOptions, check_address
    from spam_bench.suite.config import coerce

    cpus = coerce("cpus-per-trial", args.cpus_per_trial, float)
    gpus = coerce("gpus-per-trial", args.gpus_per_trial, int)
    max_conc = coerce("max-concurrent", args.max_concurrent, int | None)
    max_fail = coerce("max-failures", args.max_failures, int)
    workers = coerce("workers-per-trial", args.workers_per_trial, int)
    if not 1 <= workers <= 1024:
        raise ConfigError("workers-per-trial", workers, "an int from 1 to 1024")
    if not math.isfinite(cpus) or cpus <= 0:  # NaN passed `cpus <= 0` and left every trial PENDING
        raise ConfigError("cpus-per-trial", cpus, "a finite number > 0")
    if gpus < 0 or max_fail < 0:
        raise ConfigError("gpus-per-trial" if gpus < 0 else "max-failures", min(gpus, max_fail), "an int >= 0")
    if max_conc is not None and max_conc < 1:
        raise ConfigError("max-concurrent", max_conc, "an int >= 1")
    if args.address:
        check_address(args.address)
    # What each trial will request (sweep(): CUDA runs own at least one whole GPU, CPU runs none), so
    # that ray_tune.check_resources compares the real request with the cluster's nodes.
    gpus = max(1, gpus) if str(args.device).startswith("cuda") else 0
    return SweepOptions(
        name=args.name or name,
        out=out,
        address=args.address,
        cpus_per_trial=cpus,
        gpus_per_trial=gpus,
        max_concurrent=max_conc,
        max_failures=max_fail,
        resume=args.resume,
        workers_per_trial=workers,
    )


def _print_trials(results: list[dict], name: str, where: Path | str) -> int:
    failed = [r for r in results if r.get("error")]
    for r in results:
        print(
            f"  {r.get('run_id', '?')}: {r.get('status', 'stopped early' if not r.get('error') else 'error')} "
            f"{r.get('value', '')} {r.get('error') or ''}".rstrip()
        )
    print(f"{name}: {len(results) - len(failed)} trials finished, {len(failed)} failed; results in {where}")
    return 1 if failed else 0


def _optimizers(args: argparse.Namespace, file: FileConfig) -> list[str]:
    """--opt, else the config file's `opt:` list; one of the two is required."""
    from spam_bench.suite.sweep import parse_list

    if args.opt is not None:
        return parse_list(args.opt, "opt")
    if file.optimizers:
        return parse_list(",".join(file.optimizers), "opt")  # the same checks as --opt
    raise ConfigError("opt", None, "comma-separated optimizers, from --opt or `opt:` in --config")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from spam_bench.suite.object_store import ObjectStore, open_store
    from spam_bench.suite.sweep import expand, parse_grid, parse_seeds, sweep_name
    from spam_bench.suite.tuning import load_best

    store = open_store(args.out)  # on object storage, `out` is its local staging folder
    out = store.root
    if args.from_tuning and isinstance(store, ObjectStore):
        store.pull_tree("tuning/best")
    file = load_config(args.config, "sweep") if args.config else FileConfig()
    track, every = _tracking(args, file)
    optimizers = _optimizers(args, file)
    scale = use_scale(TASKS.get(args.task), args.scale)
    tuned = {o: load_best(out, args.task, scale, o) for o in optimizers} if args.from_tuning else None
    # The command line wins, key by key: its --set fixes a key the file sweeps, its --grid sweeps a
    # key the file fixes (a key both fixed and swept by the same layer stays an error, in expand).
    cli_sets, cli_grid = parse_assignments(args.set), parse_grid(args.grid)
    runs = expand(
        task=args.task,
        optimizers=optimizers,
        seeds=parse_seeds(args.seeds if args.seeds is not None else file.seeds or "0"),
        grid={**{k: v for k, v in file.grid.items() if k not in cli_sets}, **cli_grid},
        sets={**{k: v for k, v in file.sets.items() if k not in cli_grid}, **cli_sets},
        scale=scale,
        device=args.device,
        opt_sets=tuned,
    )
    options = _ray_options(args, out, sweep_name(runs))
    options.track, options.track_every = track, every
    options.keep_checkpoint = args.keep_checkpoint
    options.url = store.url if isinstance(store, ObjectStore) else None
    if getattr(args, "check_placement", None) is not None:
        return _check_placement(args.check_placement, runs, options, args.resume)
    from spam_bench.suite.lifecycle import reusable

    pending = [r for r in runs if not reusable(r, store)]
    published = ""
    if getattr(args, "published", None):
        pending, n = _not_published(pending, args.published)
        published = f" ({n} of them published in {args.published})" if n else ""
    stale = sum(store.completed(r.spec.task, r.spec.run_id) for r in pending)
    again = f" ({stale} complete by other code, re-run)" if stale else ""
    complete = len(runs) - len(pending)
    print(f"sweep: {len(runs)} runs, {complete} already complete{published}, {len(pending)} to run{again}")
    if not pending and not args.resume:
        return 0
    from spam_bench.runners.ray_tune import sweep

    return _print_trials(sweep(pending, options), options.name, store.where(store.root / "runs" / args.task))


def _not_published(runs: list, folder: str) -> tuple[list, int]:
    """(the runs the snapshot in `folder` lacks, how many it has): a published run counts when the
    current code would make it (its code fingerprint is the run's), as `lifecycle.reusable` has it."""
    from spam_bench.reports.snapshot import published_codes

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError("published", folder, "a folder holding a snapshot written by `spambench publish`")
    done = published_codes(root)
    left = [r for r in runs if done.get((r.spec.task, r.spec.run_id)) != r.code["id"]]
    return left, len(runs) - len(left)


def _check_placement(hold_text: str, runs: list, options: SweepOptions, resume: bool) -> int:
    """`sweep --check-placement`: every run of the sweep placed as a trial, none trained (runners/placement.py)."""
    from spam_bench.runners.placement import placement_report
    from spam_bench.runners.ray_tune import sweep
    from spam_bench.suite.config import coerce

    hold = coerce("check-placement", hold_text, float)
    if not math.isfinite(hold) or hold < 0:
        raise ConfigError("check-placement", hold_text, "seconds to hold each trial, a finite number >= 0")
    if resume:
        raise ConfigError("--resume", True, "not with --check-placement, which trains nothing to resume")
    options.check_placement = hold
    options.name = f"{options.name}-check-placement"  # its own Tune experiment: a later --resume never finds it
    print(f"check-placement: {len(runs)} trials, each placed and held {hold:g} s, none trained")
    lines, code = placement_report(sweep(runs, options), options.name)
    print("\n".join(lines))
    return code


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    """A sweep (`_cmd_sweep`, the same store and Ray flags) whose grid is the lr over `--lrs`."""
    from spam_bench.suite.lr_grid import parse_lrs

    lrs = parse_lrs(args.lrs)
    if "lr" in parse_assignments(args.set):
        raise ConfigError("--set", f"lr={parse_assignments(args.set)['lr']}", "no lr: --lrs gives the lrs")
    if args.seeds is None:
        file = load_config(args.config, "sweep") if args.config else FileConfig()
        args.seeds = file.seeds or "0-2"
    print(f"sensitivity: lr in {', '.join(f'{lr:g}' for lr in lrs)} ({len(lrs)} lrs)")
    args.grid, args.from_tuning = [f"lr={','.join(repr(lr) for lr in lrs)}"], False
    return _cmd_sweep(args)


def _cmd_tune(args: argparse.Namespace) -> int:
    from spam_bench.runners.ray_tune import sweep
    from spam_bench.suite.config import coerce
    from spam_bench.suite.sweep import sweep_name
    from spam_bench.suite.tuning import plan_trials, save_best_trials, tuning_store

    out = out_root(args.out)
    file = load_config(args.config, "tune") if args.config else FileConfig()
    track, every = _tracking(args, file)
    trials = coerce("trials", args.trials, int)
    if trials < 1:
        raise ConfigError("trials", trials, "an int >= 1")
    runs, drawn = plan_trials(
        task=args.task,
        optimizers=_optimizers(args, file),
        trials=trials,
        sets={**file.sets, **parse_assignments(args.set)},
        scale=use_scale(TASKS.get(args.task), args.scale),
        device=args.device,
    )
    options = _ray_options(args, tuning_store(out), "tune-" + sweep_name(runs)[len("sweep-") :])
    options.track, options.track_every = track, every
    options.asha = (runs[0].task.primary_metric, runs[0].task.direction, runs[0].task.budget(runs[0].config))
    code = _print_trials(sweep(runs, options), options.name, tuning_store(out))
    for line, ok in save_best_trials(out, runs, drawn, trials):
        print(line)
        code = code if ok else 1
    return code


def _cmd_report(args: argparse.Namespace) -> int:
    """Flags are checked before the store is read: reading it warns about each malformed run folder,
    and a bad flag must still be the only line on stderr."""
    from spam_bench.reports.build import write_report
    from spam_bench.reports.summary import parse_since
    from spam_bench.suite.object_store import open_store

    store = open_store(args.out)
    if args.since is not None:
        parse_since(args.since)
    markdown, report_dir = write_report(
        store, task=args.task, opt=args.opt, scale=args.scale, since=args.since, all_code=args.all_code
    )
    print(markdown)
    print(f"written: {report_dir}/ (leaderboard.md, leaderboard.html, summary.md, results.parquet, *.png)")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from spam_bench.reports.published import write_published

    out = out_root(args.out)
    into = writable_dir("into", args.into)
    path = write_published(out, into, replace=args.replace)
    print(
        f"written: {path}, with its snapshot {path.with_name('runs.parquet')} and {path.with_name('results.parquet')}"
    )
    return 0


def _list_json(what: str | None) -> dict:
    """`spambench list --json`: what scripts (the Makefile's leaderboard, CI) read instead of the text."""
    out: dict = {}
    if what in (None, "tasks"):
        out["tasks"] = [
            {
                "name": name,
                "description": t.description,
                "scales": list(t.scales()),
                "metric": t.primary_metric,
                "direction": t.direction,
            }
            for name, t in ((n, TASKS.get(n)) for n in TASKS.names())
        ]
    if what in (None, "optimizers"):
        out["optimizers"] = [
            {
                "name": name,
                "description": o.description,
                "reference": o.reference,
                "defaults": o.defaults(),
                "grad_clip": o.grad_clip,
                "lr_scale": o.lr_scale,
                "search_space": sorted(o.search_space),
                "capabilities": {
                    "needs_closure": o.needs_closure,
                    "needs_roles": o.needs_roles,
                    "sparse_state": o.sparse_state,
                    "devices": list(o.devices),
                    "dtypes": list(o.dtypes),
                },
            }
            for name, o in ((n, OPTIMIZERS.get(n)) for n in OPTIMIZERS.names())
        ]
        out["families"] = [
            {"prefix": prefix, "description": fam.description, "members": list(fam.members())}
            for prefix, fam in sorted(OPTIMIZERS.families.items())
        ]
    out["broken"] = {
        f"{registry.kind}:{name}": reason
        for registry in (TASKS, OPTIMIZERS)
        for name, reason in sorted(registry.broken.items())
    }
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    if args.json:
        import json

        print(json.dumps(json_ready(_list_json(args.what)), indent=2, default=str))
        return 0
    if args.what in (None, "tasks"):
        print("tasks:")
        for name in TASKS.names():
            t = TASKS.get(name)
            print(
                f"  {name:10s} {t.description}  [scales: {', '.join(t.scales())}; "
                f"metric: {t.primary_metric}, {'lower' if t.direction == 'min' else 'higher'} is better]"
            )
    if args.what in (None, "optimizers"):
        print("optimizers:")
        for name in OPTIMIZERS.names():
            o = OPTIMIZERS.get(name)
            defaults = ", ".join(f"{k}={v}" for k, v in o.defaults().items())
            print(f"  {name:10s} {o.description}  [{defaults}]")
            if args.what == "optimizers":
                for field, doc in field_docs(o.config_cls).items():
                    print(f"      opt.{field}: {doc}")
        for prefix, fam in sorted(OPTIMIZERS.families.items()):
            print(f"  {prefix}:<name>  {fam.description}  [{len(fam.members())}: {', '.join(fam.members())}]")
    for registry in (TASKS, OPTIMIZERS):
        for name, reason in sorted(registry.broken.items()):
            print(f"  (broken {registry.kind} plug-in {name}: {reason})")
    return 0


def _cmd_perf(args: argparse.Namespace) -> int:
    if any(a == "--device" or a.startswith("--device=") for a in args.perf_args):
        from spam_bench.runners import device_perf  # CUDA timing on the llm task's paper shapes

        return int(device_perf.main(args.perf_args))
    from spam_bench.optimizers import perf

    return int(perf.main(args.perf_args) or 0)


def _cmd_check(args: argparse.Namespace) -> int:
    from spam_bench.runners import conformance

    return int(conformance.main(args.check_args))


def _cmd_fetch(args: argparse.Namespace) -> int:
    TASKS.get(args.task).fetch_data()
    print(f"data for {args.task}: ready")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "sweep": _cmd_sweep,
    "sensitivity": _cmd_sensitivity,
    "tune": _cmd_tune,
    "report": _cmd_report,
    "publish": _cmd_publish,
    "list": _cmd_list,
    "perf": _cmd_perf,
    "check-optimizer": _cmd_check,
    "fetch-data": _cmd_fetch,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["perf"]:  # argparse's REMAINDER drops leading options: hand them over untouched
        return _cmd_perf(argparse.Namespace(perf_args=argv[1:]))
    if argv[:1] == ["check-optimizer"]:
        return _cmd_check(argparse.Namespace(check_args=argv[1:]))
    args = _parser().parse_args(argv)
    args.argv = argv
    if args.command in ("run", "sweep", "sensitivity", "tune") and args.device == "cpu":
        # The tiny scale never needs the hub; fail in a second instead of retrying for half a minute.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"spambench: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE


def _one_line(text: str) -> str:
    """The promise is one line: a value or a plug-in's import error may carry newlines of its own."""
    return " ".join(text.splitlines())


if __name__ == "__main__":
    raise SystemExit(main())
