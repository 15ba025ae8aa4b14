"""`TaskBase`: the parts of the `Task` contract most tasks share (scales as YAML files, defaults).

A task package subclasses it and adds `run(ctx)`. Scales are the YAML files in the package's
`configs/` folder, one per scale; a task that shares another task's scales overrides
`scale_values`. The suite never names a task: tasks reach it through the `spam_bench.tasks`
entry points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from spam_bench.suite.config import load_yaml
from spam_bench.suite.contract import TaskOffers
from spam_bench.suite.errors import ConfigError


@dataclass
class TaskBase:
    name: str
    description: str
    config_cls: type
    primary_metric: str
    direction: Literal["min", "max"]
    config_dir: Path
    libraries: tuple[str, ...] = field(default=())
    # Whether a run may train data-parallel (`spambench run --nproc N`, suite/distributed.py).
    distributed: ClassVar[bool] = False
    # Whether an interrupted run resumes from a checkpoint. A task whose runs take seconds may restart
    # from scratch instead; either way the resumed run must give the uninterrupted numbers.
    checkpoints: ClassVar[bool] = True

    def scales(self) -> list[str]:
        return sorted(p.stem for p in self.config_dir.glob("*.yaml"))

    def scale_path(self, scale: str) -> Path:
        path = self.config_dir / f"{scale}.yaml"
        if not path.exists():
            raise ConfigError("scale", scale, self.scales())
        return path

    def scale_values(self, scale: str) -> dict[str, Any]:
        return load_yaml(self.scale_path(scale))

    def offers(self, config: Any) -> TaskOffers:
        """No closure; the parameter dtype is the config's `dtype` field where it has one."""
        return TaskOffers(closure=False, dtypes=(getattr(config, "dtype", "float32"),))

    def budget(self, config: Any) -> int:
        """The number of updates (`steps`); tasks that count otherwise override this."""
        return int(config.steps)

    def fetch_data(self) -> None:
        """Nothing to fetch by default."""
