"""Anomaly injection as in Stable-SPAM (docs/spam.md#time-series): X <- X + N(0, S * max|X|) on a fraction A.

Applied once, before training, to the training part of each (standardised) series, with its own
max |X|; seeded by the run's seed, so S = 0, 2 and 5 corrupt the same positions with the same
standard-normal draws, only scaled. The official code is unpublished (UNVERIFIED whether it
corrupts per batch or per data set, and which max it takes). Never applied to evaluation data.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def inject(values: np.ndarray, fraction: float, severity: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of `values` with round(fraction * n) entries, drawn without replacement, given the noise."""
    out = np.array(values, dtype=np.float32, copy=True)
    n = round(fraction * out.size)
    idx = rng.choice(out.size, size=n, replace=False)
    z = rng.standard_normal(n)
    peak = np.nanmax(np.abs(out)) if out.size else 0.0
    if n and severity > 0 and np.isfinite(peak):
        out[idx] += (z * severity * peak).astype(np.float32)
    return out


def inject_anomalies(
    entries: list[dict[str, Any]], fraction: float, severity: float, seed: int
) -> list[dict[str, Any]]:
    """New entries with anomalies in their targets; the inputs are left untouched."""
    rng = np.random.default_rng([seed, 0xA0])
    return [{**e, "target": inject(e["target"], fraction, severity, rng)} for e in entries]
