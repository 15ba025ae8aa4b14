"""Search ranges that optimizers declare for tuning (a leaf module: the registry and tuning both use it)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    """A one-dimensional search range; `log` samples uniformly in log space."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def sample(self, u: float) -> float | int:
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        return round(value) if self.integer else float(f"{value:.4g}")
