"""The one gradient-clipping rule, the same on every task and for every optimizer.

Two parties may ask for global-norm clipping of the gradient before `step()`:
- the task's recipe (its config field `grad_clip`; PPO's `max_grad_norm` is one), which every
  optimizer on that task receives alike, because it is part of how the task is trained;
- the optimizer's own definition (`OptimizerSpec.grad_clip`), as in the paper's "Adam + GradClip",
  which is Adam plus a clip at 1.0 and nothing else.

Both apply. Clipping the global norm to `a` and then to `b` is clipping it to `min(a, b)`, so the
effective threshold is the tighter of the two (or none when neither asks). The rule is applied by the
run's instruments after spike injection and telemetry (so an injected spike meets the clip as a real
one would) and only when the norm is finite (a NaN norm would turn every gradient into NaN; the run
is then recorded as diverged by its loss). Every summary records all three numbers.

Why not let the task's value replace the optimizer's: then `adam_clip` would clip at 1.0 on one task
and at the recipe's value on another, i.e. be a different optimizer per task; and an optimizer whose
definition includes clipping would silently lose it wherever a recipe sets any value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClipRule:
    task: float | None
    optimizer: float | None

    @property
    def effective(self) -> float | None:
        asked = [v for v in (self.task, self.optimizer) if v is not None]
        return min(asked) if asked else None

    def record(self) -> dict[str, Any]:
        """The summary's keys: `grad_clip` is what was applied."""
        return {
            "grad_clip": self.effective,
            "grad_clip_task": self.task,
            "grad_clip_optimizer": self.optimizer,
            "grad_clip_rule": "global norm, min(task recipe, optimizer)",
        }
