"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) as extra sinks of the one run recorder.

The results store stays the source of truth: a sink gets a copy of what `RunRecorder.log` writes to
metrics.jsonl and of the summary `RunRecorder.finish` writes, so that runs show up in the tools
researchers already use. Tracking never changes a run's identity or its numbers:
- nothing here is part of the spec, so `--track` leaves the run_id alone;
- this module is not imported by the run's training path (suite/context.py and what it reaches), so
  it is not part of the code fingerprint either, and editing it never makes stored runs stale;
- the libraries are imported lazily, on a sink's first call, and every call runs with the global RNG
  states (Python, NumPy, torch CPU) saved and restored, so a library that draws from them (or seeds
  them) cannot move the run's random streams;
- a sink that raises is disabled by the recorder after its first failure and named once on stderr.

Per-step splits ("train", "optim") go at a bounded rate: each metric's first value in each window of
`every` steps (steps 1, 10, 20, ... for a metric logged at every step; an event logged on a few steps,
such as a spike, goes unless the same event already went in that window). Evaluations (every other
split) and the final summary always go.

Where each tool writes (the defaults; the tools' own environment variables win):
- TensorBoard: `<run_dir>/tb/`, tags `<split>/<name>`, step = the logged step;
- W&B: offline unless WANDB_MODE is set, under `<run_dir>/wandb/` (or WANDB_DIR); run name
  `<task>-<optimizer>-s<seed>`, group = the sweep name (or the task), config = spec.json's content;
- MLflow: the file store `<out>/mlruns` unless MLFLOW_TRACKING_URI is set; experiment = the sweep
  name (or the task), params = the flattened spec, metrics per step, the final metric and status.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import random
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast

import numpy as np
import torch

from spam_bench.suite.config import coerce
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.results import RunRecorder, atomic_write_json

TRACKERS = ("tensorboard", "wandb", "mlflow")
# Splits logged at every training or optimizer step (the tiny rl run logs "optim" 19,200 times):
# they reach a tracker once per window of `every` steps. Everything else is an evaluation and always goes.
PER_STEP_SPLITS = frozenset({"train", "optim"})
DEFAULT_EVERY = 10
IDS_FILE = "tracking.json"  # per run folder: the trackers' own run ids, so a resumed run continues its runs
INSTALL_HINT = "pip install 'spam-bench[track]'"


class Sink(Protocol):
    """What `RunRecorder` calls besides its own files (duck-typed there: suite/results.py imports nothing
    from here, so that this module stays out of the training path's code fingerprint)."""

    name: str

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None: ...

    def finish(self, summary: Mapping[str, Any]) -> None: ...


def parse_trackers(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`"tensorboard,wandb"` or a list of names -> validated names in order, without repeats."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item not in TRACKERS:
            raise ConfigError("track", item, ", ".join(TRACKERS))
        if item not in names:
            names.append(item)
    return tuple(names)


def parse_every(value: Any) -> int:
    """`--track-every N`: an int >= 1 (1 sends every per-step record)."""
    every = coerce("track-every", DEFAULT_EVERY if value is None else value, int)
    if every < 1:
        raise ConfigError("track-every", every, "an int >= 1")
    return int(every)


@dataclass(frozen=True)
class TrackSettings:
    """Which trackers a run reports to and how; not part of the run's identity (never in the spec)."""

    names: tuple[str, ...]
    group: str
    every: int = DEFAULT_EVERY

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a Ray trial's config (a sweep's trials build their own sinks)."""
        return {"names": list(self.names), "group": self.group, "every": self.every}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackSettings:
        return cls(names=parse_trackers(data["names"]), group=str(data["group"]), every=parse_every(data["every"]))


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """Run a tracker call with the global RNG streams saved and restored: a run's numbers must not
    depend on whether, or which, trackers were on. (CUDA's generators are left alone: reading their
    state synchronises the device, and no tracker touches them.)"""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)


def _scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """The summary's finite numbers (top level), e.g. value, steps, wall_time_s, optimizer_state_bytes."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"spec": {"task": "llm"}} -> {"spec.task": "llm"}; lists stay whole (as JSON)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class TrackerSink:
    """The part every tracker shares: lazy start, the rate limit, RNG isolation, cleanup on failure."""

    name: ClassVar[str] = "tracker"

    def __init__(self, run_dir: Path, record: Mapping[str, Any], group: str, every: int = DEFAULT_EVERY):
        self.run_dir, self.record, self.group, self.every = Path(run_dir), record, group, every
        spec = record.get("spec", {})
        self.task, self.optimizer = str(spec.get("task", "?")), str(spec.get("optimizer", "?"))
        self.seed, self.scale = spec.get("seed", 0), str(spec.get("scale", "?"))
        self.run_name = f"{self.task}-{self.optimizer}-s{self.seed}"
        self._window: dict[tuple[str, str], int] = {}  # (split, name) -> the last window it was sent in
        self._started = False
        self.last_step = 0

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if split in PER_STEP_SPLITS:
            # Per metric, not per split: an event logged on a few steps only (a spike, a momentum reset)
            # still goes, while a value logged every step goes once per window.
            window, due = step // self.every, {}
            for key, value in metrics.items():
                if self._window.get((split, key)) != window:
                    self._window[(split, key)] = window
                    due[key] = value
            if not due:
                return
            metrics = due
        self.last_step = max(self.last_step, step)
        with _rng_untouched(), self._cleanup_on_failure():
            if not self._started:
                self._begin(step)
            self._log(step, split, {k: float(v) for k, v in metrics.items()})

    def finish(self, summary: Mapping[str, Any]) -> None:
        with _rng_untouched(), self._cleanup_on_failure():
            if not self._started:
                self._begin(self.last_step)
            self._finish(summary)
            atexit.unregister(self._at_exit)

    def _begin(self, step: int) -> None:
        self._start(step)
        self._started = True
        # A run that never reaches finish() (Ctrl-C, a crash, a trial ASHA stopped) still closes its
        # tracker runs when the process ends, marked as not finished.
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self._abort(killed=True)

    @contextlib.contextmanager
    def _cleanup_on_failure(self) -> Iterator[None]:
        """Close what the library opened before re-raising: the recorder disables a failed sink for
        the rest of the run and never calls it again."""
        try:
            yield
        except ImportError as err:
            raise ImportError(f"{err} ({INSTALL_HINT})") from err
        except BaseException:
            atexit.unregister(self._at_exit)
            with contextlib.suppress(Exception):
                self._abort(killed=False)
            raise

    def _ids(self) -> dict[str, Any]:
        path = self.run_dir / IDS_FILE
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def _remember_id(self, value: str) -> None:
        atomic_write_json(self.run_dir / IDS_FILE, {**self._ids(), self.name: value})

    # --- what each tracker implements ---
    def _start(self, step: int) -> None:
        raise NotImplementedError

    def _log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        raise NotImplementedError

    def _finish(self, summary: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _abort(self, killed: bool) -> None:
        """Release what `_start` opened: after a failure of the tracker, or (killed) at the exit of a
        process whose run never finished."""


def _wait_past_event_files(log_dir: Path) -> None:
    """Wait (at most about a second) until the clock has passed the newest event file's second.

    TensorBoard reads a folder's event files in name order, and the name is
    `events.out.tfevents.<unix second>.<host>.<pid>.<n>`: a resumed process that starts within the
    same second as the killed one's file would sort before it whenever its pid is smaller, and its
    purge would then hide its own steps instead of the killed process's."""
    newest = -1
    for path in log_dir.glob("events.out.tfevents.*"):
        stamp = path.name.split(".")[3]
        if stamp.isdigit():
            newest = max(newest, int(stamp))
    wait = newest + 1 - time.time()
    if 0 < wait <= 2:  # a file stamped further ahead (another host's clock) cannot be waited out
        time.sleep(wait + 0.01)


class TensorBoardSink(TrackerSink):
    """Event files in `<run_dir>/tb/`, written by torch's SummaryWriter
    (https://pytorch.org/docs/stable/tensorboard.html)."""

    name = "tensorboard"

    def _start(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.run_dir / "tb"
        _wait_past_event_files(log_dir)
        # purge_step: a resumed run re-logs the steps after its checkpoint; TensorBoard then hides what
        # the killed process had logged from this step on, instead of drawing both.
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=step)

    def _log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(f"{split}/{key}", value, global_step=step)

    def _finish(self, summary: Mapping[str, Any]) -> None:
        for key, value in _scalars(summary).items():
            self._writer.add_scalar(f"final/{key}", value, global_step=self.last_step)
        self._writer.add_text("final/status", str(summary.get("status", "?")), global_step=self.last_step)
        self._writer.close()

    def _abort(self, killed: bool) -> None:
        if hasattr(self, "_writer"):
            self._writer.close()


def _wandb_id(run_id: str) -> str:
    """A W&B run id: the run_id (W&B refuses / \\ # ? % : in ids) plus a suffix, because a run
    folder made again (--force, or new code) is a new W&B run under the same run_id."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', run_id)[:48]}-{uuid.uuid4().hex[:8]}"


class WandbSink(TrackerSink):
    """A W&B run, offline unless WANDB_MODE says otherwise (`wandb sync <run_dir>/wandb/offline-run-*`
    uploads it later; https://docs.wandb.ai/models/support/run_wandb_offline)."""

    name = "wandb"

    def _start(self, step: int) -> None:
        import wandb

        ids = self._ids()
        run_id = ids.get(self.name) or _wandb_id(str(self.record.get("run_id", self.run_name)))
        kwargs: dict[str, Any] = {}
        if not os.environ.get("WANDB_MODE"):
            kwargs["mode"] = "offline"
        # Online by the user's choice: a server that does not answer costs the run 20 s once (then the
        # sink is disabled), not W&B's default 90 s; WANDB_INIT_TIMEOUT still wins.
        init_timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or 20.0)
        if not os.environ.get("WANDB_PROJECT"):
            kwargs["project"] = "spam-bench"
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(self.run_dir)
        # console off: W&B would otherwise wrap stdout/stderr (our progress bar and one-line result);
        # no system-metrics sampler, code or git capture: the run folder records code identity already;
        # reinit="create_new" (wandb >= 0.19.10): runs one after another in a process (compare(), Ray's
        # reused actors), never finishing a run the user opened themselves
        # (https://docs.wandb.ai/models/runs/initialize-run#multiple-runs-in-one-process).
        settings = wandb.Settings(
            console="off",
            silent=True,
            x_disable_stats=True,
            save_code=False,
            disable_git=True,
            reinit="create_new",
            init_timeout=init_timeout,
        )
        self._run = wandb.init(
            id=run_id,
            resume="allow",
            name=self.run_name,
            group=self.group,
            tags=[t[:64] for t in (self.task, self.optimizer, f"seed-{self.seed}", self.scale)],
            config=dict(self.record),
            settings=settings,
            **kwargs,
        )
        if ids.get(self.name) != run_id:
            self._remember_id(run_id)

    def _log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        self._run.log({f"{split}/{k}": v for k, v in metrics.items()}, step=step)

    def _finish(self, summary: Mapping[str, Any]) -> None:
        values: dict[str, Any] = dict(_scalars(summary))
        metric, value = summary.get("primary_metric"), summary.get("value")
        if isinstance(metric, str) and isinstance(value, (int, float)) and math.isfinite(value):
            values[metric] = float(value)
        values["status"] = str(summary.get("status", "?"))
        self._run.summary.update(values)
        self._run.finish()

    def _abort(self, killed: bool) -> None:
        if hasattr(self, "_run"):
            self._run.finish(exit_code=1)


def _mlflow_key(key: str, limit: int) -> str:
    """A name MLflow accepts: alphanumerics, underscores, dashes, periods, spaces, colons and slashes,
    and no empty, "." or ".." parts (`validate_param_and_metric_name` and `path_not_unique` in
    https://github.com/mlflow/mlflow/blob/master/mlflow/utils/validation.py)."""
    key = re.sub(r"[^\w\-. /:]", "_", key)
    return "/".join(part if part not in ("", ".", "..") else "_" for part in key.split("/"))[:limit]


class MlflowSink(TrackerSink):
    """An MLflow run in the file store `<out>/mlruns` (or MLFLOW_TRACKING_URI), through the explicit
    client, so that it never touches a run the user has active in the fluent API
    (https://mlflow.org/docs/latest/python_api/mlflow.client.html)."""

    name = "mlflow"

    def _start(self, step: int) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        self._lock: Path | None = None
        if not uri:
            # run_dir is <out>/runs/<task>/<run_id> (suite/results.py): the store sits beside runs/.
            store = (self.run_dir.parents[2] / "mlruns").resolve()
            store.mkdir(parents=True, exist_ok=True)
            uri, self._lock = store.as_uri(), store / ".spam-bench.lock"
            # Recent MLflow (3.17 here) refuses a file store unless asked: it is in maintenance mode, still
            # supported (https://mlflow.org/docs/latest/self-hosting/migrate-from-file-store).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        elif uri.startswith(("http:", "https:")):
            # A server that does not answer: fail in seconds and be disabled, rather than MLflow's
            # default of 7 retries with backoff and a 120 s timeout each
            # (https://mlflow.org/docs/latest/python_api/mlflow.environment_variables.html).
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        from mlflow.utils import validation

        self._limits = (
            getattr(validation, "MAX_ENTITY_KEY_LENGTH", 250),
            getattr(validation, "MAX_PARAM_VAL_LENGTH", 500),
            getattr(validation, "MAX_PARAMS_TAGS_PER_BATCH", 100),
            getattr(validation, "MAX_METRICS_PER_BATCH", 1000),
        )
        self._client = MlflowClient(tracking_uri=uri)
        previous = self._ids().get(self.name)
        if previous:  # a resumed run continues its MLflow run
            self._run_id = str(previous)
            self._client.update_run(self._run_id, status="RUNNING")
            return
        experiment = self._experiment()
        tags = {
            "task": self.task,
            "optimizer": self.optimizer,
            "seed": str(self.seed),
            "scale": self.scale,
            "spam_bench.run_id": str(self.record.get("run_id", "")),
            "spam_bench.run_dir": str(self.run_dir),
        }
        self._run_id = self._client.create_run(experiment, run_name=self.run_name, tags=tags).info.run_id
        self._remember_id(self._run_id)
        key_len, value_len, per_batch, _ = self._limits
        params = [
            Param(_mlflow_key(k, key_len), (v if isinstance(v, str) else json.dumps(v))[:value_len])
            for k, v in sorted(_flatten(self.record).items())
        ]
        for i in range(0, len(params), per_batch):
            self._client.log_batch(self._run_id, params=params[i : i + per_batch])

    def _experiment(self) -> str:
        """The group's experiment, created once even when a sweep's trials start side by side: in our
        file store under a file lock; elsewhere, creating it again fails and we look it up."""
        lock = _file_lock(self._lock) if self._lock is not None else contextlib.nullcontext()
        with lock:
            found = self._client.get_experiment_by_name(self.group)
            if found is not None:
                return str(found.experiment_id)
            try:
                return str(self._client.create_experiment(self.group))
            except Exception:
                found = self._client.get_experiment_by_name(self.group)
                if found is None:
                    raise
                return str(found.experiment_id)

    def _log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now, key_len = int(time.time() * 1000), self._limits[0]
        # The file store keeps a metric as a file named by its key, a slash making a folder: "grad_norm"
        # and "grad_norm/embedding" cannot both exist, so only the split is a folder here.
        batch = [
            Metric(_mlflow_key(f"{split}/{k.replace('/', '.')}", key_len), v, now, step) for k, v in metrics.items()
        ]
        for i in range(0, len(batch), self._limits[3]):
            self._client.log_batch(self._run_id, metrics=batch[i : i + self._limits[3]])

    def _finish(self, summary: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        now, key_len = int(time.time() * 1000), self._limits[0]
        final = {f"final/{k}": v for k, v in _scalars(summary).items()}
        metric, value = summary.get("primary_metric"), summary.get("value")
        if isinstance(metric, str) and isinstance(value, (int, float)) and math.isfinite(value):
            final[f"final/{metric}"] = float(value)
        self._client.log_batch(
            self._run_id,
            metrics=[Metric(_mlflow_key(k, key_len), v, now, self.last_step) for k, v in final.items()],
            tags=[RunTag("status", str(summary.get("status", "?")))],
        )
        self._client.set_terminated(self._run_id, status="FINISHED")

    def _abort(self, killed: bool) -> None:
        if hasattr(self, "_run_id"):
            self._client.set_terminated(self._run_id, status="KILLED" if killed else "FAILED")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl  # POSIX only, as the rest of the suite (pyproject: Operating System :: POSIX :: Linux)

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


SINKS: dict[str, type[TrackerSink]] = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MlflowSink}


def make_sinks(
    names: str | Sequence[str] | None,
    run_dir: Path,
    record: Mapping[str, Any],
    group: str,
    every: int = DEFAULT_EVERY,
) -> list[TrackerSink]:
    """The sinks for one run. Nothing is imported or opened here: each sink starts on its first call,
    so a run that is reused (already complete) touches no tracker, and a missing library costs the
    run one stderr line, never the run."""
    every = parse_every(every)
    return [SINKS[name](run_dir, record, group, every) for name in parse_trackers(names)]


def tracked_recorder(settings: TrackSettings, base: type[RunRecorder] = RunRecorder) -> type[RunRecorder]:
    """`base` with the settings' sinks added: what `execute(recorder_cls=...)` takes. The sinks are
    built when `execute` builds the recorder, i.e. only for a run that actually runs."""
    if not settings.names:
        return base

    def __init__(self: RunRecorder, run_dir: Path, spec_record: Mapping[str, Any], sinks: Sequence[Any] = ()) -> None:
        made = make_sinks(settings.names, run_dir, spec_record, settings.group, settings.every)
        base.__init__(self, run_dir, spec_record, sinks=[*sinks, *made])

    doc = f"{base.__name__} that also reports to {', '.join(settings.names)} (suite/tracking.py)."
    return cast(type[RunRecorder], type(f"Tracked{base.__name__}", (base,), {"__init__": __init__, "__doc__": doc}))


__all__ = [
    "DEFAULT_EVERY",
    "TRACKERS",
    "Sink",
    "TrackSettings",
    "make_sinks",
    "parse_every",
    "parse_trackers",
    "tracked_recorder",
]
