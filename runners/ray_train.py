"""Sweep trials that train data-parallel: each Tune trial runs its run on N Ray Train workers.

`spambench sweep --workers-per-trial N` (N > 1; tasks that declare `distributed = True`: llm,
llm4bit) gives each trial a Ray Train `TorchTrainer` of N workers. Every worker calls the same
`execute(...)` as `spambench run --nproc N` does under torchrun, with a `World` read from the process
group Ray Train set up (`World.from_process_group`: gloo for CPU specs, NCCL for CUDA specs, where
Ray also selects each worker's GPU). So the store semantics are --nproc's: rank 0 holds the run's
lock and writes the one run folder, the run id is the one-process run's, the summary says
`world_size`, and the train-loss curve is the one-process curve up to summation order.

How Ray 2.60 combines Tune and Train, and what follows from it (read from the installed ray and its
docs, "Hyperparameter Tuning with Ray Tune" in the Train user guide):

- Train V2 is the default (`RAY_TRAIN_V2_ENABLED` unset means on). In V2 a trainer is no longer
  handed to the Tuner: a Tune trial builds the trainer and calls `fit()`, acting as the driver of
  one Train run (the guide shows a function trial; a class trial, used here, works the same way).
  V1 (`RAY_TRAIN_V2_ENABLED=0`) is refused in one line rather than run down a deprecated path.
- `fit()` starts a Train controller actor (0 CPUs, pinned to the trial's node) that reserves the
  workers in a placement group of its own, one bundle per worker. The trial's own placement group is
  not used for them, so a trial that also reserved the worker bundles would book every CPU twice
  (and on a machine whose CPUs the workers fill, wait forever). The trial therefore asks for what a
  waiting driver needs: no CPU and `DRIVER_MEMORY` bytes of memory (Tune refuses an empty request).
  Each worker asks for `--cpus-per-trial` CPUs (its torch threads too) and, for CUDA specs, the
  trial's whole GPUs.
- Since Train runs start only when all their workers fit, and trials cost nothing to start, Ray's
  guide recommends `max_concurrent_trials`: without `--max-concurrent`, a sweep runs as many trials
  at once as the cluster holds worker groups (`trials_at_once`), instead of starting every trial and
  leaving the rest of their Train runs waiting for resources.
- A Train controller that dies without shutting its run down leaves the workers' placement group
  reserved for the rest of the sweep's Ray job (Train's detached cleaner watches it through the
  state API, which an embedded Ray without a dashboard, as here, does not serve). So a trial never
  ends before its `fit()` has returned: the final report waits for it, and a trial that Tune stops
  mid-run (ASHA) first ends its Train run in `cleanup` (see `_trial_class`).

Reports to Tune (ASHA, the sweep's results) come from rank 0 only, through a queue. In V2
`ray.train.report` is a barrier every worker must reach equally often, while only rank 0 records (the
other ranks have no recorder), and Train's `TuneReportCallback` carries metrics but not Tune
checkpoints. So rank 0's recorder (`RelayRecorder`) puts exactly what a one-process trial's
`TuneRecorder` would report (evaluations named `<split>_<name>`, checkpoint pointers, the final
status) on a `ray.util.queue.Queue` made by the trial, and the trial, while `fit()` runs in a helper
thread, returns each as one Tune result (a checkpoint pointer as a result with `should_checkpoint`,
which Tune saves through `save_checkpoint`). ASHA thus sees evaluations as they happen.

Failures: Tune's retries (`--max-failures`, FailureConfig on the Tuner), not Train's. Train's own
`FailureConfig(max_failures=0)` turns a worker failure into `fit()` raising, which fails the trial;
Tune restarts it with its last checkpoint pointer, and the new workers resume from the store's
checkpoint, exactly as a retried one-process trial does. One retry budget covers both a worker and
the trial (the driver) dying, where Train's would cover only the workers, and retries stay counted in
one place. (Node preemptions that Ray Train detects are still recovered by Train itself, which runs
the workers again: they resume from the store's checkpoint the same way.)
"""

from __future__ import annotations

import importlib
import json
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spam_bench.suite.errors import ConfigError
from spam_bench.suite.object_store import open_store
from spam_bench.suite.paths import is_url
from spam_bench.suite.registry import OPTIMIZERS
from spam_bench.suite.resolve import ResolvedRun
from spam_bench.suite.results import RunRecorder, RunStore
from spam_bench.suite.tracking import PER_STEP_SPLITS

FLAG = "workers-per-trial"
DRIVER_MEMORY = 512 * 2**20  # bytes a trial asks for: Python with torch imported, waiting on fit()
_POLL_S = 0.5  # how long the trial waits on its queue before looking at the Train run again
_STOP_WAIT_S = 60.0  # how long a stopped trial waits for its Train run to wind down


def check_workers(runs: list[ResolvedRun], workers: int) -> None:
    """Refuse, in one line and before Ray starts, a worker count some run of the sweep cannot use."""
    from ray.train.v2._internal.constants import V2_ENABLED_ENV_VAR, is_v2_enabled

    if not is_v2_enabled():
        value = os.environ.get(V2_ENABLED_ENV_VAR)
        raise ConfigError(V2_ENABLED_ENV_VAR, value, f"1 or unset: --{FLAG} runs Ray Train V2 inside each Tune trial")
    for run in runs:
        if not getattr(run.task, "distributed", False):
            raise ConfigError(FLAG, workers, f"1 for task {run.spec.task} (data-parallel tasks: llm, llm4bit)")
        try:
            run.task.check_world(run.config, workers)  # type: ignore[attr-defined]  # distributed tasks have it
        except ConfigError as err:  # the task names --nproc; here the flag is ours
            raise ConfigError(FLAG, workers, err.allowed) from None


def worker_bundle(resources: Mapping[str, float]) -> dict[str, float]:
    """One worker's reservation: a one-process trial's request (`sweep`'s {"cpu", "gpu"})."""
    bundle = {"CPU": float(resources["cpu"])}
    if resources.get("gpu"):
        bundle["GPU"] = float(resources["gpu"])
    return bundle


def trials_at_once(resources: Mapping[str, float], workers: int) -> int:
    """How many trials' worker groups this Ray cluster holds at once (>= 1), or a one-line refusal.

    Call after connecting. The total is what matters: Train places a group's workers anywhere
    (`check_resources` already checked that one worker fits on some node).
    """
    import ray

    total = ray.cluster_resources()
    fits = []
    for key, per_worker in worker_bundle(resources).items():
        have = float(total.get(key, 0.0))
        fits.append(math.floor(have / per_worker / workers + 1e-9))
        if fits[-1] < 1:
            ray.shutdown()
            raise ConfigError(
                FLAG,
                workers,
                f"at most {math.floor(have / per_worker + 1e-9)} workers of {per_worker:g} {key}{'' if per_worker == 1 else 's'} each "
                f"(this Ray cluster has {have:g} {key}s in all)",
            )
    return max(1, min(fits))


def data_parallel_trainable(resources: Mapping[str, float], workers: int) -> Any:
    """The Tune trainable of a sweep whose trials train on `workers` Ray Train workers each."""
    from ray import tune

    return tune.with_resources(_trial_class(workers, worker_bundle(resources)), {"cpu": 0, "memory": DRIVER_MEMORY})


def _trial_class(workers: int, bundle: dict[str, float]) -> type:
    """A Tune class trainable (made here so that importing this module does not import Ray).

    A class rather than a function because a trial stopped by Tune (ASHA) must end its Train run
    before its actor goes (module docstring): Tune calls `cleanup` on the actor first and waits for
    it, while a function trial learns of the stop only as its actor is already exiting.
    """
    import ray
    from ray import train, tune
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    class DataParallelTrial(tune.Trainable):
        def setup(self, config: dict[str, Any]) -> None:
            self.trial = config["trial"]
            self.channel = Queue(actor_options={"num_cpus": 0})
            self.workers: list[Any] = []  # the Train workers' actor handles, which each sends first
            self.pointer: dict[str, Any] | None = None  # the checkpoint `save_checkpoint` announces
            self.final: dict[str, Any] | None = None
            self.failed: list[BaseException] = []
            self.runner: threading.Thread | None = None

        def _fit(self) -> None:
            trainer = TorchTrainer(
                _worker,
                train_loop_config={"trial": self.trial, "channel": self.channel},
                scaling_config=train.ScalingConfig(
                    num_workers=workers, use_gpu="GPU" in bundle, resources_per_worker=dict(bundle)
                ),
                run_config=train.RunConfig(
                    name="train",  # Train's own bookkeeping, inside this trial's folder
                    storage_path=self.logdir,
                    failure_config=train.FailureConfig(max_failures=0),  # retries are Tune's (module docstring)
                ),
            )
            try:
                trainer.fit()
            except BaseException as err:
                self.failed.append(err)

        def _next(self) -> dict[str, Any] | None:
            """The next item rank 0 sent; None once the Train run is over and everything is read."""
            assert self.runner is not None
            while True:
                running = self.runner.is_alive()  # before the queue: a finished run's items are all there
                try:
                    item: dict[str, Any] = self.channel.get(block=running, timeout=_POLL_S if running else None)
                except Empty:
                    if running:
                        continue
                    return None
                if "worker" in item:
                    self.workers.append(item["worker"])
                    continue
                return item

        def step(self) -> dict[str, Any]:
            if self.runner is None:
                self.runner = threading.Thread(target=self._fit, name="train-fit", daemon=True)
                self.runner.start()
            while (item := self._next()) is not None:
                metrics = dict(item["metrics"])
                if metrics.get("done"):  # held back until fit() returns: ending the trial ends its actor
                    self.final = metrics
                elif item.get("pointer") is not None:
                    self.pointer = item["pointer"]
                    return {**metrics, "should_checkpoint": True}  # Tune then calls save_checkpoint
                else:
                    return metrics
            if self.failed:
                raise self.failed[0]
            if self.final is None:
                raise RuntimeError("the Train run ended without rank 0's summary")
            return self.final

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            (Path(checkpoint_dir) / "pointer.json").write_text(json.dumps(self.pointer))

        def load_checkpoint(self, checkpoint: Any) -> None:
            """A retry: the workers resume from the store's checkpoint; this one only points at it."""
            pointer = json.loads((Path(checkpoint) / "pointer.json").read_text())
            if pointer is None:  # saved before rank 0 checkpointed anything (Tune's own save)
                return
            run = _prepare(self.trial, threads=False)
            expected = _store(self.trial["out"]).run_dir(run.spec.task, run.spec.run_id)
            if is_url(self.trial["out"]):  # staged on rank 0's node: a folder of that node's own
                assert Path(pointer["run_dir"]).parts[-3:] == expected.parts[-3:]
            else:
                assert Path(pointer["run_dir"]) == expected

        def cleanup(self) -> None:
            """Stopped mid-run (ASHA): end the Train run through its own controller, which then
            stops the other workers and frees their placement group, before this actor goes. A worker
            killed is a worker crashed: the run keeps its last checkpoint, as a killed trial's does."""
            if self.runner is None or not self.runner.is_alive():
                return
            while True:  # handles sent but not read yet
                try:
                    item = self.channel.get_nowait()
                except Empty:
                    break
                if "worker" in item:
                    self.workers.append(item["worker"])
            for handle in self.workers:
                ray.kill(handle, no_restart=True)
            self.runner.join(timeout=_STOP_WAIT_S)

    return DataParallelTrial


class RelayRecorder(RunRecorder):
    """Rank 0's recorder in a Train worker: what `ray_tune.TuneRecorder` reports to Tune goes on the
    trial's queue (`channel`, set on a subclass made per run) for the trial to relay."""

    channel: Any = None

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        super().log(step, split, metrics)
        if split not in PER_STEP_SPLITS:
            named = {f"{split}_{k}": float(v) for k, v in metrics.items()}
            self.channel.put({"metrics": {"step": step, "run_id": self.dir.name, **named}})

    def save_checkpoint(self, state: dict[str, Any], step: int | None = None) -> None:
        super().save_checkpoint(state, step)
        self.channel.put(
            {
                "metrics": {"step": step, "run_id": self.dir.name, "done": False},
                "pointer": {"run_dir": str(self.dir), "step": step},
            }
        )


def _prepare(trial: Mapping[str, Any], threads: bool = True) -> ResolvedRun:
    """The run a trial's config names, with the optimizers and scales the driver carried registered.

    The same set-up as `ray_tune._trial` (one-process trials). It is repeated here rather than
    imported because ray_tune imports this module, and the layer contracts forbid import cycles.
    """
    import torch

    from spam_bench.runners.api import register_optimizer
    from spam_bench.suite.config_file import register_scale
    from spam_bench.suite.registry import TASKS
    from spam_bench.suite.sweep import resolve_canonical

    for name, (path, kwargs) in trial.get("plugins", {}).items():
        if OPTIMIZERS.registered(name) is None:
            module, _, attr = path.partition(":")
            register_optimizer(getattr(importlib.import_module(module), attr), name=name, **kwargs)
    if threads:
        torch.set_num_threads(max(1, int(trial["cpus"])))
    for name, values in trial.get("scales", {}).items():
        register_scale(TASKS.get(trial["spec"]["task"]), name, values)
    return resolve_canonical(trial["spec"])


def _store(out: str) -> RunStore:
    """The trial's store as `ray_tune._trial` opens it: a folder, or object storage (staged per node)."""
    return open_store(out) if is_url(out) else RunStore(Path(out))


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the run's `execute` in the world Ray Train set up; rank 0 reports."""
    import ray

    from spam_bench.runners.local import execute
    from spam_bench.suite.distributed import World
    from spam_bench.suite.tracking import TrackSettings, tracked_recorder

    trial, channel = config["trial"], config["channel"]
    channel.put({"worker": ray.get_runtime_context().current_actor})  # for the trial to stop us with
    world = World.from_process_group()
    run = _prepare(trial)
    recorder_cls: type[RunRecorder] = type("RelayRecorder", (RelayRecorder,), {"channel": channel})
    if trial.get("track"):
        recorder_cls = tracked_recorder(TrackSettings.from_dict(trial["track"]), recorder_cls)
    summary, _, _ = execute(
        run,
        _store(trial["out"]),
        recorder_cls=recorder_cls,
        keep_checkpoint=bool(trial.get("keep_checkpoint")),
        world=world,
    )
    if world.is_main:
        value = summary.get("value")
        done = {
            "done": True,
            "status": summary["status"],
            "value": value if value is not None else float("nan"),
            "run_id": summary["run_id"],
            "world_size": world.size,
        }
        channel.put({"metrics": done})


__all__ = ["check_workers", "data_parallel_trainable", "trials_at_once"]
