"""Sweeps on Ray Tune: one trial per run, locally (embedded Ray) or on an existing cluster.

Each trial runs `runners.local.execute`, the same code path as `spambench run`, and writes to the
same results store; Ray's own files only drive scheduling and retries. Checkpoints live in the
run folder; each one is also announced to Tune (`tune.report(..., checkpoint=...)`) as a pointer,
so a retried trial (FailureConfig) finds the run it belongs to and resumes from the store.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spam_bench.suite.errors import ConfigError
from spam_bench.suite.registry import OPTIMIZERS
from spam_bench.suite.resolve import ResolvedRun
from spam_bench.suite.results import RunRecorder, RunStore


@dataclass
class SweepOptions:
    name: str
    out: Path
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: int = 0
    max_concurrent: int | None = None
    max_failures: int = 2
    resume: bool = False
    # Early stopping (tuning only): ASHA on the task's primary metric, counted in steps.
    asha: tuple[str, str, int] | None = None  # (metric, "min" | "max", max steps)


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail with one line, before Ray starts, if a host:port address does not answer."""
    if address in ("auto", "local") or address.startswith("ray://"):
        target = address[len("ray://") :] if address.startswith("ray://") else None
    else:
        target = address
    if target is None:
        return
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError("address", address, "auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError("address", address, f"a reachable Ray head ({err.strerror or err})") from None


# Splits logged every training or optimizer step. They stay in the store only: each tune.report is a
# round trip to the driver plus a line in three Tune files, and an rl run logs its per-step spike
# telemetry ("optim") 19,200 times, which made a tiny rl trial take about twice as long (README).
PER_STEP_SPLITS = frozenset({"train", "optim"})


class TuneRecorder(RunRecorder):
    """A RunRecorder that streams evaluation metrics to Tune (`<split>_<name>`, e.g. val_ppl, for
    schedulers such as ASHA) and announces each checkpoint as a pointer into the store."""

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        super().log(step, split, metrics)
        if split not in PER_STEP_SPLITS:
            from ray import tune

            tune.report(
                {"step": step, "run_id": self.dir.name, **{f"{split}_{k}": float(v) for k, v in metrics.items()}}
            )

    def save_checkpoint(self, state: dict[str, Any], step: int | None = None) -> None:
        super().save_checkpoint(state, step)
        from ray import tune

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "pointer.json").write_text(json.dumps({"run_dir": str(self.dir), "step": step}))
            tune.report(
                {"step": step, "run_id": self.dir.name, "done": False}, checkpoint=tune.Checkpoint.from_directory(tmp)
            )


def carried_plugins(runs: list[ResolvedRun]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Optimizers registered in this process, as (import path, kwargs) for the trials to re-register.

    Ray workers are other processes: they see entry points, not what a notebook or script registered.
    An optimizer whose module they can import travels by import path; one defined in `__main__` (a
    notebook, a script) cannot, and is refused in one line before Ray starts.
    """
    carried = {}
    for name in sorted({r.spec.optimizer for r in runs}):
        if name not in OPTIMIZERS.local:
            continue
        found = OPTIMIZERS.import_path(name)
        if found is None:
            raise ConfigError(
                "opt",
                name,
                "an optimizer Ray workers can import: this one is registered only in "
                "this process (e.g. defined in a notebook or __main__); define it in an importable "
                "module, or declare an entry point in group spam_bench.optimizers",
            )
        carried[name] = found
    return carried


def _register_carried(plugins: dict[str, Any]) -> None:
    import importlib

    from spam_bench.runners.api import register_optimizer

    for name, (path, kwargs) in plugins.items():
        if OPTIMIZERS.registered(name) is None:
            module, _, attr = path.partition(":")
            register_optimizer(getattr(importlib.import_module(module), attr), name=name, **kwargs)


def _trial(config: dict[str, Any]) -> None:
    """One Ray trial: rebuild the run from its canonical spec and execute it like the local runner."""
    import torch
    from ray import tune

    from spam_bench.runners.local import execute
    from spam_bench.suite.sweep import resolve_canonical

    config = config["trial"]
    _register_carried(config.get("plugins", {}))
    torch.set_num_threads(max(1, int(config["cpus"])))
    run = resolve_canonical(config["spec"])
    store = RunStore(Path(config["out"]))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry: the store's checkpoint is the one we resume from
        with checkpoint.as_directory() as d:
            pointer = json.loads((Path(d) / "pointer.json").read_text())
        assert Path(pointer["run_dir"]) == store.run_dir(run.spec.task, run.spec.run_id)
    summary, _, _ = execute(run, store, recorder_cls=TuneRecorder)
    value = summary.get("value")
    tune.report(
        {
            "done": True,
            "status": summary["status"],
            "value": value if value is not None else float("nan"),
            "run_id": summary["run_id"],
        }
    )


def _init_ray(options: SweepOptions) -> None:
    import ray

    # Checkpoint reports carry no evaluation metric; schedulers skip them instead of failing the trial.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if options.address:
        ray.init(address=options.address, log_to_driver=False)
        _require_shared_store(options.out)
    else:
        # Token auth protects clusters; an embedded single-machine Ray has nothing to protect it from.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)


def _require_shared_store(out: Path) -> None:
    """Refuse a multi-node cluster whose nodes cannot all see the results store."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    out.mkdir(parents=True, exist_ok=True)
    marker = out / f".shared-check-{uuid.uuid4().hex}"
    marker.write_text("spam-bench")
    try:

        @ray.remote(num_cpus=0)
        def visible(path: str) -> bool:
            return os.path.exists(path)

        checks = [
            visible.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(marker)
            )
            for n in nodes
        ]
        missing = [n["NodeManagerAddress"] for n, ok in zip(nodes, ray.get(checks)) if not ok]
    finally:
        marker.unlink(missing_ok=True)
    if missing:
        ray.shutdown()
        raise ConfigError(
            "out", str(out), f"a path on storage shared by every node (not visible on {', '.join(missing)})"
        )


def _trial_dirname(trial: Any) -> str:
    return f"{trial.config['trial']['spec']['optimizer']}-s{trial.config['trial']['spec']['seed']}-{trial.trial_id}"


def sweep(runs: list[ResolvedRun], options: SweepOptions) -> list[dict[str, Any]]:
    """Run every spec as a Tune trial; returns Tune's last result per trial."""
    import ray
    from ray import tune

    plugins = carried_plugins(runs)  # refuses what workers cannot see, before Ray starts
    storage = (options.out / "ray").resolve()
    exp_path = storage / options.name
    if options.resume and not tune.Tuner.can_restore(str(exp_path)):
        raise ConfigError("--resume", options.name, f"a sweep started before under {storage}")
    resources: dict[str, float] = {"cpu": options.cpus_per_trial}
    if any(r.spec.device.startswith("cuda") for r in runs):
        # A trial whose time and memory we report must own whole GPUs (Ray's fractions are bookkeeping only).
        resources["gpu"] = max(1, options.gpus_per_trial)
    trainable = tune.with_resources(_trial, resources)
    _init_ray(options)
    try:
        if options.resume:
            tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            specs = [
                {
                    "spec": r.spec.canonical(),
                    "out": str(options.out),
                    "cpus": options.cpus_per_trial,
                    "plugins": plugins,
                }
                for r in runs
            ]
            scheduler = None
            if options.asha:
                from ray.tune.schedulers import ASHAScheduler

                metric, mode, steps = options.asha
                # max_t one past the budget: ASHA stops trials that reach max_t, and a trial that
                # reached the full budget must live to write its summary.
                scheduler = ASHAScheduler(
                    time_attr="step",
                    metric=metric,
                    mode=mode,
                    max_t=steps + 1,
                    grace_period=max(1, steps // 9),
                    reduction_factor=3,
                )
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(specs)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=options.max_concurrent,
                    scheduler=scheduler,
                    reuse_actors=True,  # skip re-importing torch per trial
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=options.name,
                    storage_path=str(storage),
                    verbose=1,
                    failure_config=tune.FailureConfig(max_failures=options.max_failures),
                ),
            )
        results = tuner.fit()
        return [
            dict(results[i].metrics or {}, error=str(results[i].error) if results[i].error else None)
            for i in range(len(results))
        ]
    finally:
        ray.shutdown()
