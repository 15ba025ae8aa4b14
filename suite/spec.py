"""What a run is: `RunSpec` (user-level choices) and its stable `run_id`.

The run_id hashes the canonical spec (typed, sorted), so the same choices always name the same run
folder, whatever the order or spelling of the command-line arguments (`lr=1e-3` == `lr=0.001`).
That is what lets a re-run resume or skip instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from spam_bench.suite.config import json_ready


@dataclass(frozen=True)
class RunSpec:
    """One run: a task at a scale, trained by one optimizer with one seed."""

    task: str
    optimizer: str
    seed: int = 0
    scale: str = "tiny"
    # Task-config fields changed from the scale's YAML (already typed by the task's config class).
    overrides: dict[str, Any] = field(default_factory=dict)
    # Optimizer hyperparameters changed from the optimizer's defaults (typed).
    opt_hparams: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def canonical(self) -> dict[str, Any]:
        """The JSON-ready identity of the run (everything that can change its numbers)."""
        return {
            "task": self.task,
            "optimizer": self.optimizer,
            "seed": self.seed,
            "scale": self.scale,
            "overrides": json_ready(dict(sorted(self.overrides.items()))),
            "opt_hparams": json_ready(dict(sorted(self.opt_hparams.items()))),
            "device": self.device,
        }

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"{self.optimizer}-s{self.seed}-{self.scale}-{digest}"

    @classmethod
    def from_canonical(cls, data: dict[str, Any]) -> RunSpec:
        return cls(**{k: data[k] for k in ("task", "optimizer", "seed", "scale", "overrides", "opt_hparams", "device")})
