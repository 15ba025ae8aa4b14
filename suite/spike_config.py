"""The fields every gradient-based task config shares: spike telemetry and injection, and the recipe's clip."""

from __future__ import annotations

from dataclasses import dataclass

from spam_bench.suite.config import param


@dataclass
class SpikeFields:
    telemetry: bool = param(True, "Record per-role gradient statistics and sampled coordinates for the GSS.")
    spike_ratio: float = param(
        10.0, "A role's gradient norm above this x its running average is a spike event.", gt=1.0
    )
    gss_samples: int = param(
        64, "Coordinates per tensor recorded every step for the offline Gradient Spike Score.", ge=0
    )
    loss_spike_factor: float = param(2.0, "A training loss above this x the running median is a loss spike.", gt=1.0)
    inject_step_fraction: float = param(0.0, "Spike injection: fraction of steps hit (0 = off).", ge=0.0, le=1.0)
    inject_entry_fraction: float = param(
        0.01, "Spike injection: fraction of gradient entries multiplied.", gt=0.0, le=1.0
    )
    inject_factor: float = param(1000.0, "Spike injection: the multiplier (the paper sees spikes up to 1000x).", gt=0.0)
    inject_seed: int = param(0, "Spike injection: seed of which steps and entries are hit.", ge=0)


@dataclass
class RunFields(SpikeFields):
    """The fields every gradient-based task config has: the spike instruments' and the recipe's clip."""

    grad_clip: float | None = param(
        None,
        "The task recipe's global-norm gradient clip (None = off). The optimizer's own "
        "clip, if it declares one, also applies: the tighter wins (the one clip rule).",
        gt=0.0,
    )
