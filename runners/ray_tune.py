"""Sweeps on Ray Tune: one trial per run, locally (embedded Ray) or on an existing cluster.

Each trial runs `runners.local.execute`, the same code path as `spambench run`, and writes to the
same results store; Ray's own files only drive scheduling and retries. Checkpoints live in the
run folder; each one is also announced to Tune (`tune.report(..., checkpoint=...)`) as a pointer,
so a retried trial (FailureConfig) finds the run it belongs to and resumes from the store.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spam_bench.runners import ray_train
from spam_bench.runners.placement import placement_trainable
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.object_store import open_store
from spam_bench.suite.paths import is_url
from spam_bench.suite.registry import OPTIMIZERS
from spam_bench.suite.resolve import ResolvedRun
from spam_bench.suite.results import RunRecorder, RunStore
from spam_bench.suite.tracking import DEFAULT_EVERY


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
    # Experiment trackers (suite/tracking.py): every trial reports to them itself, grouped under the
    # sweep's name, so a sweep is one group in each tool. Not part of any run's identity.
    track: tuple[str, ...] = ()
    track_every: int = DEFAULT_EVERY
    keep_checkpoint: bool = False  # keep each completed run's last checkpoint (suite/lifecycle.py)
    # --check-placement: place each trial, report where it landed (runners/placement.py) and hold its
    # resources this many seconds, without training. None: a real sweep.
    check_placement: float | None = None
    # Ray Train workers per trial, each a data-parallel rank of the trial's run (runners/ray_train.py);
    # 1: the trial itself trains, in one process.
    workers_per_trial: int = 1
    # A store on object storage (suite/object_store.py): its URL, which trials get as their `out`
    # (`out` is then its local staging folder); Tune's files go to `<url>/ray`.
    url: str | None = None


# How long a Ray GCS may take to answer one call before the address is refused. A port that accepts
# TCP but is not Ray made `ray.init` retry for minutes (its GCS client waits ~40 s per attempt).
GCS_PROBE_TIMEOUT_S = 10.0
_ADDRESS_ALLOWED = "auto, host:port or ray://host:port"


def check_address(address: str, timeout: float = 3.0, probe_timeout: float | None = None) -> None:
    """Fail with one line, before Ray starts, unless the address answers as Ray does, in bounded time.

    host:port: a TCP connect, then one gRPC call that Ray's GCS answers (GetClusterId; a cluster with
    token auth answers UNAUTHENTICATED, which is Ray too). ray://host:port (Ray Client): a TCP connect
    and a gRPC handshake. auto: the address Ray itself would pick (RAY_ADDRESS, else the cluster
    `ray start` last started on this machine), probed as host:port.
    """
    if address == "local":  # ray.init's "start a new local instance"
        return
    probe_timeout = GCS_PROBE_TIMEOUT_S if probe_timeout is None else probe_timeout
    client = address.startswith("ray://")
    target = _auto_address() if address == "auto" else address[len("ray://") :] if client else address
    host, sep, port = target.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError("address", address, _ADDRESS_ALLOWED)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:  # ValueError: a host no resolver accepts (NUL, too long for IDNA)
        raise ConfigError("address", address, f"a reachable Ray head ({_one_line(err)})") from None
    why = _probe_client(target, probe_timeout) if client else _probe_gcs(target, probe_timeout)
    if why:
        raise ConfigError("address", address, f"a Ray head ({target} {why})")


def _one_line(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())


def _auto_address() -> str:
    """The host:port `ray.init(address="auto")` would connect to, or a one-line refusal."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except Exception as err:  # a malformed RAY_ADDRESS or cluster file
        raise ConfigError("address", "auto", f"a Ray cluster this machine can find ({_one_line(err)})") from None
    if not found:
        raise ConfigError(
            "address", "auto", "a running Ray cluster (none found: set RAY_ADDRESS or run `ray start --head`)"
        )
    return found


def _probe_gcs(target: str, timeout: float) -> str | None:
    """None if a Ray GCS answers at host:port within `timeout` seconds, else why not (a few words)."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]  # generated by protoc
            stub.GetClusterId(request, timeout=timeout)
        except grpc.RpcError as err:
            code = err.code()
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return None  # a Ray GCS that wants a token: ray.init brings it
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"accepts connections but no Ray GCS answered within {timeout:g} s"
            return f"answers, but not as a Ray GCS: {code.name}"
    return None


def _probe_client(target: str, timeout: float) -> str | None:
    """None if a gRPC server (Ray Client) completes a handshake at host:port within `timeout` seconds."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return f"accepts connections but no Ray Client answered within {timeout:g} s"
    return None


def check_resources(options: SweepOptions) -> None:
    """After connecting: refuse, in one line, a per-trial request that no live node can ever grant.

    Tune would otherwise keep every trial PENDING without a word. A trial runs on one node, so the
    request is compared with the largest node (and named with the cluster's total). An autoscaling
    cluster whose node types are larger than its live nodes is refused too: start one such node first.
    """
    import ray

    nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    for flag, key, wanted in (
        ("cpus-per-trial", "CPU", options.cpus_per_trial),
        ("gpus-per-trial", "GPU", options.gpus_per_trial),
    ):
        most = max((float(r.get(key, 0.0)) for r in nodes), default=0.0)
        if wanted > most:
            ray.shutdown()
            raise ConfigError(
                flag,
                wanted,
                f"at most {most:g}, the most {key}s one node of this Ray cluster has "
                f"({float(total.get(key, 0.0)):g} in all, {len(nodes)} node{'s' if len(nodes) != 1 else ''})",
            )


# Splits logged every training or optimizer step. They stay in the store only: each tune.report is a
# round trip to the driver plus a line in three Tune files, and an rl run logs its per-step spike
# telemetry ("optim") 19,200 times, which made a tiny rl trial take about twice as long (README).
PER_STEP_SPLITS = frozenset({"train", "optim"})


class TuneRecorder(RunRecorder):
    """A RunRecorder that streams evaluation metrics to Tune (`<split>_<name>`, e.g. val_ppl, for
    schedulers such as ASHA) and announces each checkpoint as a pointer into the store.

    Experiment trackers are the recorder's sinks (`tracked_recorder(settings, TuneRecorder)`), as in
    a local run; Ray Tune's own tracker callbacks (WandbLoggerCallback, MLflowLoggerCallback) are not
    used, so each run reaches each tool once, with the same names and content whichever runner ran it.
    """

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


def carried_plugins(runs: list[ResolvedRun]) -> dict[str, tuple[str, dict[str, Any], float]]:
    """Optimizers registered in this process, as (import path, kwargs, declared lr scale) for the trials
    to re-register (the scale may have been given at registration rather than by the object itself).

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
        carried[name] = (*found, OPTIMIZERS.get(name).lr_scale)
    return carried


def _register_carried(plugins: dict[str, Any]) -> None:
    import importlib

    from spam_bench.runners.api import register_optimizer

    for name, (path, kwargs, lr_scale) in plugins.items():
        if OPTIMIZERS.registered(name) is None:
            module, _, attr = path.partition(":")
            register_optimizer(getattr(importlib.import_module(module), attr), name=name, lr_scale=lr_scale, **kwargs)


def _trial(config: dict[str, Any]) -> None:
    """One Ray trial: rebuild the run from its canonical spec and execute it like the local runner."""
    import torch
    from ray import tune

    from spam_bench.runners.local import execute
    from spam_bench.suite.config_file import register_scale
    from spam_bench.suite.registry import TASKS
    from spam_bench.suite.sweep import resolve_canonical
    from spam_bench.suite.tracking import TrackSettings, tracked_recorder

    config = config["trial"]
    _register_carried(config.get("plugins", {}))
    torch.set_num_threads(max(1, int(config["cpus"])))
    for name, values in config.get("scales", {}).items():  # a scale file read by the driver
        register_scale(TASKS.get(config["spec"]["task"]), name, values)
    run = resolve_canonical(config["spec"])
    remote = is_url(config["out"])  # object storage: each node stages it in a folder of its own
    store = open_store(config["out"]) if remote else RunStore(Path(config["out"]))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry: the store's checkpoint is the one we resume from
        with checkpoint.as_directory() as d:
            pointer = json.loads((Path(d) / "pointer.json").read_text())
        found, expected = Path(pointer["run_dir"]), store.run_dir(run.spec.task, run.spec.run_id)
        assert found.parts[-2:] == expected.parts[-2:] if remote else found == expected
    recorder_cls: type[RunRecorder] = TuneRecorder
    if config.get("track"):
        recorder_cls = tracked_recorder(TrackSettings.from_dict(config["track"]), TuneRecorder)
    summary, _, _ = execute(run, store, recorder_cls=recorder_cls, keep_checkpoint=bool(config.get("keep_checkpoint")))
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

    # Ray's INFO lines ("Connected to Ray cluster", "Started a local Ray instance") go to stderr, where
    # a refusal after connecting (check_resources) must be the only line; warnings still show.
    # Checkpoint reports carry no evaluation metric; schedulers skip them instead of failing the trial.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if options.address:
        try:
            ray.init(address=options.address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as err:  # gone since check_address
            ray.shutdown()
            raise ConfigError("address", options.address, f"a Ray cluster to join ({_one_line(err)})") from None
        check_resources(options)
        if options.url is None:  # object storage is shared by every node by nature
            _require_shared_store(options.out)
    else:
        cpus = os.cpu_count() or 1
        if options.cpus_per_trial > cpus:  # known before Ray starts: refuse without its seconds of start-up
            raise ConfigError(
                "cpus-per-trial", options.cpus_per_trial, f"at most {cpus}, the CPUs of this machine (an embedded Ray)"
            )
        # Token auth protects clusters; an embedded single-machine Ray has nothing to protect it from.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # address="local" always starts a private instance: without it, ray.init joins any cluster
        # already running on this machine (and then refuses num_cpus).
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        check_resources(options)


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


def _require_private_experiment(exp_path: Path) -> None:
    """Refuse, in one line, to restore an experiment folder that someone else could have written.

    Trust boundary (docs/architecture.md#trust-boundaries): `Tuner.restore` unpickles Ray's
    `tuner.pkl` (and its trials' state) from the experiment folder, and unpickling runs whatever code
    the pickle names. So `--resume` restores only a folder that nobody else can have written: every
    file and folder in it, the folder itself and the one holding it (which could swap it), owned by the
    current user, not writable by group or others, and no symbolic links. Restoring from a copy or a
    shared store means trusting whoever wrote it: start the sweep afresh instead (finished runs are
    reused from the store, which never runs code: its checkpoints are loaded weights-only).
    """
    import stat

    uid = os.getuid()

    def problem(path: Path) -> str | None:
        try:
            st = os.lstat(path)
        except OSError as err:
            return f"{path} cannot be checked ({err.strerror or err})"
        if stat.S_ISLNK(st.st_mode):
            return f"{path} is a symbolic link"
        if st.st_uid != uid:
            return f"{path} is owned by uid {st.st_uid}, not by you (uid {uid})"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
        return None

    paths = [exp_path.parent, exp_path]
    for folder, dirs, files in os.walk(exp_path):  # os.walk does not follow symbolic links
        paths += [Path(folder) / name for name in [*dirs, *files]]
    for path in paths:
        found = problem(path)
        if found:
            raise ConfigError(
                "--resume",
                str(exp_path.name),
                "an experiment folder only you can have written, since restoring it unpickles Ray's "
                f"tuner.pkl, which can run code; but {found}",
            )


def sweep(runs: list[ResolvedRun], options: SweepOptions) -> list[dict[str, Any]]:
    """Run every spec as a Tune trial; returns Tune's last result per trial."""
    import ray
    from ray import tune

    from spam_bench.suite.config_file import user_scales
    from spam_bench.suite.tracking import TrackSettings

    plugins = carried_plugins(runs)  # refuses what workers cannot see, before Ray starts
    if options.workers_per_trial > 1:
        if options.check_placement is not None:
            raise ConfigError("workers-per-trial", options.workers_per_trial, "1 with --check-placement")
        ray_train.check_workers(runs, options.workers_per_trial)
    if options.url is not None and options.resume:
        raise ConfigError(
            "--resume",
            options.name,
            "a sweep whose Ray experiment is on local storage: restoring unpickles Ray's tuner.pkl, which "
            f"anyone who can write to {options.url}/ray could have written; run the sweep again without "
            "--resume (its finished runs are reused from the store)",
        )
    storage = (options.out / "ray").resolve()
    exp_path = storage / options.name
    if options.resume and not tune.Tuner.can_restore(str(exp_path)):
        raise ConfigError("--resume", options.name, f"a sweep started before under {storage}")
    if options.resume:
        _require_private_experiment(exp_path)  # before anything unpickles its tuner.pkl
    resources: dict[str, float] = {"cpu": options.cpus_per_trial}
    if any(r.spec.device.startswith("cuda") for r in runs):
        # A trial whose time and memory we report must own whole GPUs (Ray's fractions are bookkeeping only).
        resources["gpu"] = max(1, options.gpus_per_trial)
    body = _trial if options.check_placement is None else placement_trainable(options.check_placement)
    trainable = tune.with_resources(body, resources)
    if options.workers_per_trial > 1:  # the trial drives a Ray Train run; its workers hold `resources`
        trainable = ray_train.data_parallel_trainable(resources, options.workers_per_trial)
    _init_ray(options)
    try:
        if options.workers_per_trial > 1 and options.max_concurrent is None:
            options.max_concurrent = ray_train.trials_at_once(resources, options.workers_per_trial)
        if options.resume:
            tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            track = TrackSettings(options.track, group=options.name, every=options.track_every)
            specs = [
                {
                    "spec": r.spec.canonical(),
                    "out": options.url or str(options.out),
                    "cpus": options.cpus_per_trial,
                    "plugins": plugins,
                    # a scale file exists on the driver's disk only: its values travel with the trial
                    "scales": {k: v for k, v in user_scales(r.task).items() if k == r.spec.scale},
                    "track": track.as_dict() if track.names else None,
                    "keep_checkpoint": options.keep_checkpoint,
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
                    # skip re-importing torch per trial; a Train-driving trial's actor must end with it
                    # (its Train run ends with it, runners/ray_train.py)
                    reuse_actors=options.workers_per_trial == 1,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=options.name,
                    storage_path=f"{options.url}/ray" if options.url else str(storage),
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
