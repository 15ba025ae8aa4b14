"""Name -> plug-in registries for tasks and optimizers, filled from entry points.

Built-in tasks and optimizers register through the same entry points as third-party plug-ins
(`spam_bench.tasks`, `spam_bench.optimizers` in pyproject.toml), so the suite never imports them by
name and a plug-in package only needs to declare an entry point.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Mapping, TypeVar

import torch

from suite.config import build_config
from suite.errors import ConfigError
from suite.model_info import ModelInfo
from suite.tuning import Dist

T = TypeVar("T")


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer plug-in.

    `factory(model, model_info, lr=..., **config_fields)` returns a `torch.optim.Optimizer`.
    It receives the model (not only its parameters) because some optimizers choose parameter
    groups by role. `config_cls` is a dataclass of `suite.config.param` fields: the optimizer's
    hyperparameters (except `lr`, which is the task recipe's), with defaults and bounds.
    """

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    config_cls: type
    description: str
    reference: str = ""
    # Global-norm clipping the task applies before step() (e.g. "Adam + GradClip"); None = off.
    grad_clip: float | None = None
    # What `spambench tune` searches: `--set` keys (task `lr`, or `opt.<field>`) -> ranges.
    search_space: Mapping[str, Dist] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(self.config_cls)}

    def build(self, model: torch.nn.Module, model_info: ModelInfo, lr: float, hparams: Mapping[str, Any]) -> torch.optim.Optimizer:
        config = build_config(self.config_cls, hparams, prefix="opt.")
        return self.factory(model, model_info, lr=lr, **dataclasses.asdict(config))


class Registry(Generic[T]):
    """Plug-ins by name, loaded lazily from one entry-point group."""

    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._items: dict[str, T] = {}
        self.broken: dict[str, str] = {}  # entry points that failed to import: name -> reason
        self._loaded = False

    def register(self, name: str, item: T) -> T:
        self._items[name] = item
        return item

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                self._items[ep.name] = ep.load()
            except Exception as err:  # a broken plug-in must not take the whole suite down
                self.broken[ep.name] = f"{ep.value}: {type(err).__name__}: {err}"

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> T:
        self._load()
        if name in self.broken:
            raise ConfigError(self.kind, name, f"an importable plug-in ({self.broken[name]})")
        if name not in self._items:
            raise ConfigError(self.kind, name, self.names())
        return self._items[name]


TASKS: Registry[Any] = Registry("task", "spam_bench.tasks")
OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer", "spam_bench.optimizers")


def make_optimizer(name: str, model: torch.nn.Module, model_info: ModelInfo, *, lr: float, **hparams: Any) -> torch.optim.Optimizer:
    """The factory contract of DESIGN.md: `make(name, model, model_info, **hparams)`."""
    return OPTIMIZERS.get(name).build(model, model_info, lr, hparams)
