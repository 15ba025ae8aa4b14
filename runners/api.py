"""The Python API: run a task on any optimizer from a script or a notebook.

    import spam_bench, torch
    result = spam_bench.run("spikes", torch.optim.SGD, optimizer_kwargs={"momentum": 0.9})
    table = spam_bench.compare("spikes", ["adamw", "spam", MyLion], seeds=[0, 1, 2])

An optimizer is a registered name, a `torch.optim.Optimizer` subclass (with `optimizer_kwargs`), a
factory `(model, model_info, *, lr) -> Optimizer`, or an `OptimizerSpec`. Classes and factories are
registered in this process under their name (`register_optimizer`), and run through exactly the
same code path and results store as `spambench run`: a result from here and one from the CLI are the
same result. Ray workers are other processes and cannot see optimizers registered here; sweeps carry
them by import path when their module is importable, and refuse them in one line otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch

from spam_bench.reports.leaderboard import entries
from spam_bench.reports.summary import load_runs
from spam_bench.suite.config_file import use_scale
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.lifecycle import execute
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.object_store import ObjectStore, open_store
from spam_bench.suite.registry import OPTIMIZERS, TASKS, OptimizerSpec
from spam_bench.suite.resolve import resolve
from spam_bench.suite.results import METRICS, SPEC, RunStore
from spam_bench.suite.tracking import DEFAULT_EVERY, TrackSettings, parse_every, parse_trackers, tracked_recorder

OptimizerLike = str | OptimizerSpec | type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer]


@dataclass
class RunResult:
    """One run: its primary metric, the full summary, the logged curves and where it lives."""

    task: str
    optimizer: str
    seed: int
    status: str
    metric: str
    direction: str
    value: float | None
    summary: dict[str, Any]
    run_dir: Path  # on object storage (out="s3://..."), the run's local staging copy
    reused: bool

    @property
    def curves(self) -> pd.DataFrame:
        """Every logged metric (step, split, name, value, wall), read from the run's metrics file."""
        return pd.read_json(self.run_dir / METRICS, lines=True)

    def __repr__(self) -> str:
        shown = f"{self.value:.4g}" if isinstance(self.value, float) and math.isfinite(self.value) else "n/a"
        return (
            f"RunResult({self.task} {self.optimizer} seed {self.seed}: {self.metric} = {shown}, "
            f"{self.status}{', reused' if self.reused else ''}; {self.run_dir})"
        )


def _config_for(name: str, kwargs: Mapping[str, Any]) -> type:
    """A config dataclass whose fields are the given keyword arguments, with them as defaults."""

    def kind(value: Any) -> Any:
        return type(value) if isinstance(value, (bool, int, float, str)) else Any

    fields = [(k, kind(v), dataclasses.field(default=v)) for k, v in sorted(kwargs.items())]
    return dataclasses.make_dataclass(f"{name}Config", fields)


def as_spec(
    optimizer: OptimizerSpec | type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer],
    name: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    lr_scale: float | None = None,
) -> OptimizerSpec:
    """An `OptimizerSpec` for a class, a factory or a spec (kwargs become its hyperparameters);
    `lr_scale` (default: the spec's own, else 1) is its declared default lr relative to the task's."""
    if isinstance(optimizer, OptimizerSpec):
        return optimizer if lr_scale is None else dataclasses.replace(optimizer, lr_scale=lr_scale)
    scale = 1.0 if lr_scale is None else lr_scale
    kwargs = dict(kwargs or {})
    label = name or getattr(optimizer, "__name__", None)
    if not label:
        raise ConfigError("optimizer", optimizer, "a class or function with a __name__, or pass name=")
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls: Any = optimizer

        def factory(model: torch.nn.Module, model_info: ModelInfo, *, lr: float, **hp: Any) -> torch.optim.Optimizer:
            return cls([p for p in model.parameters() if p.requires_grad], lr=lr, **hp)

        factory.__module__ = cls.__module__
        return OptimizerSpec(
            name=label,
            factory=factory,
            config_cls=_config_for(label, kwargs),
            description=f"{cls.__module__}.{cls.__qualname__}",
            lr_scale=scale,
        )
    if callable(optimizer):
        return OptimizerSpec(
            name=label,
            factory=cast(Callable[..., torch.optim.Optimizer], optimizer),
            config_cls=_config_for(label, kwargs),
            description=f"factory {getattr(optimizer, '__module__', '?')}.{label}",
            lr_scale=scale,
        )
    raise ConfigError(
        "optimizer",
        optimizer,
        "a registered name, an OptimizerSpec, a torch.optim.Optimizer "
        "subclass or a factory (model, model_info, *, lr) -> Optimizer",
    )


def register_optimizer(
    optimizer: OptimizerSpec | type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer],
    name: str | None = None,
    *,
    lr_scale: float | None = None,
    **kwargs: Any,
) -> str:
    """Register an optimizer in this process and return its name.

    `lr_scale` declares its default lr relative to each task's (e.g. 0.3 for a Lion, whose advised lr
    is 3-10x below AdamW's): a run that keeps the task's lr trains at task lr x lr_scale, and is still
    the "defaults" protocol; an lr you set is used as given.

    Visible to `run`, `compare` and `spambench` commands run in this process. Ray workers are other
    processes: a sweep carries the optimizer to them by import path (module + attribute) when its
    module can be imported there, and refuses it otherwise. To make it visible everywhere, declare an
    entry point in group `spam_bench.optimizers` in your package.
    """
    spec = as_spec(optimizer, name, kwargs, lr_scale)
    existing = OPTIMIZERS.registered(spec.name)
    same_source = OPTIMIZERS.local.get(spec.name, (None,))[0] is optimizer  # a notebook cell run again
    if existing is not None and existing is not spec and not same_source:
        raise ConfigError(
            "optimizer",
            spec.name,
            f"a name not taken by another registered optimizer (pass name=...; taken: {', '.join(OPTIMIZERS.names())})",
        )
    # A spec's own __module__ is its class's (suite.registry): the code that makes its numbers, and the
    # module a sweep imports it from, is where its factory is defined.
    module = (
        spec.module if isinstance(optimizer, OptimizerSpec) else getattr(optimizer, "__module__", None) or spec.module
    )
    OPTIMIZERS.register(spec.name, spec, module=module, source=optimizer, kwargs=kwargs)
    return spec.name


def _name_of(optimizer: OptimizerLike, kwargs: Mapping[str, Any] | None) -> str:
    if isinstance(optimizer, str):
        if kwargs:
            raise ConfigError(
                "optimizer_kwargs",
                dict(kwargs),
                f"overrides as opt.<field> in `overrides` for a registered optimizer ({optimizer})",
            )
        return optimizer
    return register_optimizer(optimizer, **dict(kwargs or {}))


def run(
    task: str,
    optimizer: OptimizerLike,
    *,
    seed: int = 0,
    scale: str = "tiny",
    overrides: Mapping[str, Any] | None = None,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    force: bool = False,
    track: str | Sequence[str] | None = None,
    track_every: int = DEFAULT_EVERY,
    keep_checkpoint: bool = False,
) -> RunResult:
    """Run (or resume, or reuse) one task on one optimizer; the same as `spambench run`.

    `overrides` are `--set` values: task fields (`steps`, `lr`, ...) and optimizer hyperparameters
    as `opt.<name>`. `optimizer_kwargs` are a class's or factory's keyword arguments; they become its
    hyperparameters, so they are part of the run's identity like any `opt.*` value. `scale` is a scale
    name or a path to your own scale .yaml (recorded as its stem plus a hash of its values).

    `track` also reports the run to experiment trackers ("tensorboard", "wandb", "mlflow", or several),
    as `spambench run --track` does; `track_every` is the rate of per-step records. Neither is part of
    the run's identity: tracking never changes the run_id or the numbers. A run that is reused (already
    complete) is not sent again. `keep_checkpoint` keeps a completed run's last checkpoint (it is
    deleted by default: only an interrupted run needs it). `out` is the results store: a folder
    (default $SPAMBENCH_OUT or ./out), or object storage as "s3://bucket/prefix" (suite/object_store.py).
    """
    name = _name_of(optimizer, optimizer_kwargs)
    trackers, every = parse_trackers(track), parse_every(track_every)  # bad names fail before anything runs
    sets = dict(overrides or {})
    for key, value in (optimizer_kwargs or {}).items():
        sets.setdefault(f"opt.{key}", value)
    scale = use_scale(TASKS.get(task), scale)
    resolved = resolve(task=task, optimizer=name, seed=seed, scale=scale, sets=sets, device=device)
    store = open_store(None if out is None else str(out))  # a path, or a URL such as s3://bucket/prefix
    recorder_cls = tracked_recorder(TrackSettings(trackers, group=task, every=every))
    summary, run_dir, reused = execute(
        resolved, store, force=force, recorder_cls=recorder_cls, keep_checkpoint=keep_checkpoint
    )
    if reused and isinstance(store, ObjectStore):  # only its summary was staged: `curves` reads metrics
        store.pull_files(run_dir, (METRICS, SPEC))
    return RunResult(
        task=task,
        optimizer=name,
        seed=resolved.spec.seed,
        status=summary["status"],
        metric=summary["primary_metric"],
        direction=summary["direction"],
        value=summary.get("value"),
        summary=summary,
        run_dir=run_dir,
        reused=reused,
    )


def compare(
    task: str,
    optimizers: Sequence[OptimizerLike],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    scale: str = "tiny",
    overrides: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    track: str | Sequence[str] | None = None,
    track_every: int = DEFAULT_EVERY,
) -> pd.DataFrame:
    """Run every optimizer on every seed here, one after another, and return the leaderboard table.

    One row per optimizer (and recipe): mean and 95% bootstrap CI of the primary metric over the
    seeds, seeds, diverged runs, speed, optimizer-state bytes and rank, exactly as `spambench report`
    computes them. Runs already complete with the current code are reused. `track` and `track_every`
    are `run`'s, for every run (grouped under the task in each tracker).
    """
    parse_trackers(track)  # a bad tracker name fails before the first run, not after it
    results = [
        run(
            task,
            opt,
            seed=s,
            scale=scale,
            overrides=overrides,
            out=out,
            device=device,
            track=track,
            track_every=track_every,
        )
        for opt in optimizers
        for s in seeds
    ]
    store = open_store(None if out is None else str(out))
    root = store.pull_for_report() if isinstance(store, ObjectStore) else results[0].run_dir.parents[2]
    runs, _ = load_runs(RunStore(root))
    runs = runs[runs.run_id.isin({r.run_dir.name for r in results}) & (runs.task == task)]
    return entries(runs.reset_index(drop=True)).reset_index(drop=True)
