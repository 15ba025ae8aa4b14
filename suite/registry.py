"""Name -> plug-in registries for tasks and optimizers, filled from entry points.

Built-in tasks and optimizers register through the same entry points as third-party plug-ins
(`spam_bench.tasks`, `spam_bench.optimizers` in pyproject.toml), so the suite never imports them by
name and a plug-in package only needs to declare an entry point. An entry point may also name a
`Family`: plug-ins spelled `<prefix>:<member>` (e.g. `po:lion`) that are built on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

import torch

from spam_bench.suite.config import build_config
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.search_space import Dist

T = TypeVar("T")


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    factory: Any = f.default_factory
    return factory()


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer plug-in.

    `factory(model, model_info, lr=..., **config_fields)` returns a `torch.optim.Optimizer`.
    It receives the model (not only its parameters) because some optimizers choose parameter
    groups by role. `config_cls` is a dataclass of `suite.config.param` fields: the optimizer's
    hyperparameters (except `lr`, which is the task recipe's), with defaults and bounds.

    `lr_scale` is the optimizer's declared default lr, relative to the task's: a run that leaves the
    lr at the task recipe's trains at recipe lr x lr_scale. Why relative and not an absolute lr:
    the recipes' lrs differ by orders of magnitude (rl-zoo's PPO lrs against the LLM's), and an
    optimizer's advice is a ratio to Adam's (Lion: "3-10x smaller than AdamW", Chen et al. 2023,
    section 5). An lr the user sets (`--set lr=`, a grid, a tuned value, an LR study) is absolute.
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
    # Capabilities. needs_roles: the factory groups parameters by `ModelInfo` roles and refuses a
    # model whose roles are missing or unclassified. sparse_state: keeps state for a subset of
    # entries (masks, low-rank projections). needs_closure: step() must be given a closure.
    needs_roles: bool = False
    sparse_state: bool = False
    needs_closure: bool = False
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    # Distributions whose versions can change this optimizer's numbers (the code fingerprint).
    libraries: tuple[str, ...] = ()
    # Optimizer features it does not support, with the reason (e.g. {"add_param_group": "..."}):
    # the conformance kit skips those checks and says why.
    unsupported: Mapping[str, str] = field(default_factory=dict)
    # The declared default lr as a multiple of the task recipe's (see above); 1 = the recipe's lr.
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        scale = self.lr_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
            raise ConfigError("lr_scale", scale, f"a finite float > 0 (optimizer {self.name}'s declared lr scale)")

    def defaults(self) -> dict[str, Any]:
        return {f.name: _default(f) for f in dataclasses.fields(self.config_cls)}

    def build(
        self, model: torch.nn.Module, model_info: ModelInfo, lr: float, hparams: Mapping[str, Any]
    ) -> torch.optim.Optimizer:
        return self.instantiate(model, model_info, lr, build_config(self.config_cls, hparams, prefix="opt."))

    @property
    def module(self) -> str:
        """The module that defines the optimizer (what its code fingerprint starts from)."""
        return getattr(self.factory, "__module__", None) or "unknown"

    def instantiate(
        self, model: torch.nn.Module, model_info: ModelInfo, lr: float, config: Any
    ) -> torch.optim.Optimizer:
        """The optimizer for an already-validated config dataclass."""
        return self.factory(model, model_info, lr=lr, **dataclasses.asdict(config))


@dataclass(frozen=True)
class Family(Generic[T]):
    """Plug-ins named `<prefix>:<member>`, built on first use (e.g. every pytorch_optimizer optimizer).

    `build(member)` returns the plug-in and raises `ConfigError` for an unknown member;
    `members()` lists the valid members (for error messages and listings).
    """

    prefix: str
    build: Callable[[str], T]
    members: Callable[[], list[str]]
    description: str = ""


class Registry(Generic[T]):
    """Plug-ins by name, loaded lazily from one entry-point group."""

    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._items: dict[str, T] = {}
        self.families: dict[str, Family[T]] = {}
        self._built: dict[str, T] = {}  # family members built so far (one object per name)
        self._modules: dict[str, str] = {}  # name -> the module that defines it (entry point or caller)
        # Registered in this process rather than through an entry point: name -> (the object the caller
        # handed over, its keyword arguments). Other processes (Ray workers) cannot see these.
        self.local: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.broken: dict[str, str] = {}  # entry points that failed to import: name -> reason
        self._loaded = False

    def register(
        self,
        name: str,
        item: T,
        module: str | None = None,
        source: Any = None,
        kwargs: Mapping[str, Any] | None = None,
        entry_point: bool = False,
    ) -> T:
        """Add a plug-in; `module` is where it is defined (default: its class's module).

        `source` and `kwargs` are what an in-process caller handed over (a class or factory and its
        keyword arguments), so that it can be rebuilt by import path in another process."""
        key = item.prefix if isinstance(item, Family) else name
        self._modules[key] = module or type(item).__module__
        if not entry_point:
            self.local[key] = (item if source is None else source, dict(kwargs or {}))
        if isinstance(item, Family):
            self.families[item.prefix] = item
        else:
            self._items[name] = item
        return item

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._items or ep.name in self.families:
                continue
            try:
                self.register(ep.name, ep.load(), module=ep.module, entry_point=True)
            except (Exception, SystemExit) as err:  # a broken plug-in must not take the suite down
                self.broken[ep.name] = f"{ep.value}: {type(err).__name__}: {err}"

    def registered(self, name: str) -> T | None:
        """The plug-in registered under exactly this name, or None (no error, no family lookup)."""
        self._load()
        return self._items.get(name)

    def import_path(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """For a plug-in registered in this process: ("module:attribute", kwargs) that rebuild it in
        another process, or None when its module cannot be imported there (e.g. `__main__`)."""
        if name not in self.local:
            return None
        source, kwargs = self.local[name]
        module = self._modules.get(name, "__main__")
        if module in ("__main__", "builtins") or module.startswith("__"):
            return None
        try:
            namespace = vars(importlib.import_module(module))
        except Exception:
            return None
        for attr, value in namespace.items():
            if value is source:
                return f"{module}:{attr}", kwargs
        return None

    def module_of(self, name: str) -> str:
        """The module a plug-in is defined in (family members: the family's)."""
        self._load()
        return self._modules.get(name) or self._modules.get(name.partition(":")[0], "unknown")

    def names(self) -> list[str]:
        """The concrete plug-ins (family members such as `po:lion` are built on demand, not listed)."""
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> T:
        self._load()
        if name in self.broken:
            raise ConfigError(self.kind, name, f"an importable plug-in ({self.broken[name]})")
        if name in self._items:
            return self._items[name]
        if name not in self._built:
            prefix, sep, member = name.partition(":")
            if not sep or prefix not in self.families:
                allowed = self.names() + [f"{p}:<name>" for p in sorted(self.families)]
                raise ConfigError(self.kind, name, allowed)
            family = self.families[prefix]
            if member not in family.members():
                raise ConfigError(
                    self.kind,
                    name,
                    f"{prefix}:<name> with <name> one of "
                    + ", ".join(family.members())
                    + f" (see `spambench list {self.kind}s`)",
                )
            self._built[name] = family.build(member)
        return self._built[name]


TASKS: Registry[Any] = Registry("task", "spam_bench.tasks")
OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer", "spam_bench.optimizers")


def make_optimizer(
    name: str, model: torch.nn.Module, model_info: ModelInfo, *, lr: float, **hparams: Any
) -> torch.optim.Optimizer:
    """The optimizer factory contract (docs/architecture.md): `make(name, model, model_info, **hparams)`."""
    return OPTIMIZERS.get(name).build(model, model_info, lr, hparams)
