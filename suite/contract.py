"""The contract between the suite and a task, and between the suite and a self-reporting optimizer.

A task supplies its model, data, loop (or its library's loop) and evaluation, and nothing else:
`Task.run(ctx)` receives a `RunContext` (suite/context.py) that owns everything that must be the
same for every task, so that one optimizer name means one thing everywhere: building the optimizer,
the clip rule, the spike instruments, checkpoints and the files of the run folder. The task returns
a `TaskResult`; the suite turns it into the summary.

This module is the bottom of the suite: it imports nothing of ours, so any layer may use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from spam_bench.suite.distributed import World

Direction = Literal["min", "max"]


@dataclass(frozen=True)
class TaskOffers:
    """What a task offers an optimizer, checked against the optimizer's declared needs in `resolve`.

    `closure`: whether the task's loop can pass `step(closure)` (L-BFGS and friends need it).
    `dtypes`: parameter dtypes of the model (torch names such as "float32").
    """

    closure: bool = False
    dtypes: tuple[str, ...] = ("float32",)


@dataclass
class TaskResult:
    """What a task's run produced. `value` is the primary metric (None when it diverged).

    `steps` is the task's own progress unit (updates, environment steps); `metrics` holds anything
    else the task measured (throughput, secondary metrics, curves) and goes into the summary as is.
    """

    value: float | None
    steps: int
    diverged_step: int | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "diverged" if self.diverged_step is not None or self.value is None else "complete"


class StepInstruments(Protocol):
    """The calls a training loop makes around each optimizer step (suite/instruments.py)."""

    def before_step(self) -> float: ...

    def after_step(self, loss: float | None = None) -> None: ...

    def observe_loss(self, loss: float) -> None: ...

    def take_grad_norms(self) -> list[float]: ...


class Context(Protocol):
    """What `Task.run` may use of the context the suite hands it (implemented by `RunContext`)."""

    config: Any
    seed: int
    device: torch.device
    world: World  # data-parallel processes of this run (suite/distributed.py); World() when alone

    @property
    def instruments(self) -> StepInstruments | None: ...

    def build_optimizer(
        self, model: torch.nn.Module, info: Any, *, lr: float, step_hooks: bool = False
    ) -> torch.optim.Optimizer: ...

    def step(self, loss: float, scheduler: Any = None) -> None: ...

    def timed(self, phase: str) -> AbstractContextManager[None]: ...

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None: ...

    def save_checkpoint(self, task_state: dict[str, Any], step: int) -> None: ...

    def load_checkpoint(self) -> dict[str, Any] | None: ...

    @property
    def stop_requested(self) -> bool: ...

    def progress(self, total: int, initial: int = 0, unit: str = "step") -> Any: ...


@runtime_checkable
class Task(Protocol):
    """A registered task (entry point group `spam_bench.tasks`)."""

    name: str
    description: str
    config_cls: type
    primary_metric: str
    direction: Direction
    # Distributions whose versions can change the task's numbers (recorded in the code fingerprint).
    libraries: tuple[str, ...]

    def scales(self) -> list[str]: ...

    def scale_path(self, scale: str) -> Path: ...

    def scale_values(self, scale: str) -> dict[str, Any]: ...

    def offers(self, config: Any) -> TaskOffers: ...

    def budget(self, config: Any) -> int:
        """The run's length in the unit its evaluations are logged at (for early-stopping schedulers)."""
        ...

    def run(self, ctx: Context) -> TaskResult: ...

    def fetch_data(self) -> None: ...


@runtime_checkable
class SelfReporting(Protocol):
    """An optimizer that reports its own spike handling (SPAM, Stable-SPAM).

    The suite sets `track_clipping = True` when it instruments a run; after each `step()` the
    optimizer exposes the entries it clipped per parameter tensor (None when the kernel in use
    cannot count them) and whether it reset its moments on that step.
    """

    track_clipping: bool
    clipped_last_step: dict[Any, int] | None
    reset_last_step: bool
