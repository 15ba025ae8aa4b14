"""A point-forecast head trained on squared error: PatchTST as its authors and Stable-SPAM train it.

gluonts' PatchTST ends in a distribution head (Student-t) trained on negative log-likelihood. The
PatchTST paper, and the Stable-SPAM paper's forecasting experiment built on it, train a linear head
that emits the forecast itself, on mean squared error, with instance normalisation (RevIN without
its affine part: each input window z-scored by its own mean and std, the output scaled back). In
gluonts that is `scaling="std"` plus this head: one output per time step, a point, whose loss is the
squared error in the data's own units (after scaling back, as PatchTST computes it).

The head reuses gluonts' quantile machinery with the single level 0.5, so prediction, batching and
the forecast objects stay gluonts' own; evaluate.py reads the point as the mean and as every
quantile level (a point forecast's quantiles are degenerate).
"""

from __future__ import annotations

import torch
from gluonts.core.component import validated
from gluonts.torch.distributions import QuantileOutput


class SquaredErrorOutput(QuantileOutput):
    """One value per step (stored as the 0.5 level), trained on squared error."""

    @validated()
    def __init__(self) -> None:
        super().__init__(quantiles=[0.5])

    def loss(
        self,
        target: torch.Tensor,
        distr_args: tuple[torch.Tensor, ...],
        loc: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        (point,) = distr_args  # (..., prediction_length, 1)
        point = point.squeeze(-1)
        if scale is not None:
            point = point * scale
        if loc is not None:
            point = point + loc
        return (target - point) ** 2
