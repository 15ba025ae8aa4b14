"""The Task protocol (DESIGN.md): what the suite needs from a task, and a base with the shared parts.

A task owns its model, data, training and evaluation. The suite gives it a `ResolvedRun` (spec,
typed config, an optimizer factory) and a recorder; the task trains, reports metrics as it goes,
and returns a summary whose `value` is its primary metric.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from spam_bench.suite.config import load_yaml
from spam_bench.suite.errors import ConfigError


class Task(Protocol):
    name: str
    description: str
    config_cls: type
    primary_metric: str
    direction: Literal["min", "max"]

    def scales(self) -> list[str]: ...

    def scale_path(self, scale: str) -> Path: ...

    def scale_values(self, scale: str) -> dict[str, Any]: ...

    def run(self, run: Any, recorder: Any) -> dict[str, Any]: ...

    def fetch_data(self) -> None: ...


@dataclass
class TaskBase:
    """Scales are the YAML files in `<task package>/configs/`, one per scale."""

    name: str
    description: str
    config_cls: type
    primary_metric: str
    direction: Literal["min", "max"]
    config_dir: Path

    def scales(self) -> list[str]:
        return sorted(p.stem for p in self.config_dir.glob("*.yaml"))

    def scale_path(self, scale: str) -> Path:
        path = self.config_dir / f"{scale}.yaml"
        if not path.exists():
            raise ConfigError("scale", scale, self.scales())
        return path

    def scale_values(self, scale: str) -> dict[str, Any]:
        """The config values of a scale (a task that shares another task's scales overrides this)."""
        return load_yaml(self.scale_path(scale))

    def fetch_data(self) -> None:
        """Nothing to fetch by default."""
