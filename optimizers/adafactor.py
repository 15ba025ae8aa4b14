"""torch.optim.Adafactor, set up like the paper's baseline (GaLore's script: transformers' Adafactor
with `relative_step=False, scale_parameter=False`, no first moment, decay -0.8, clip 1.0).

torch's version always multiplies the step by max(eps2, RMS(param)) ("parameter scaling"). With
`scale_parameter=False` we pass eps2 = 1.0, so the step is the task's lr for every parameter
whose RMS is at most 1 (all of LLaMA's at init), which is what the paper's runs did; with
`scale_parameter=True` it is torch's default (eps2 = 1e-3), where the same lr moves weights of
RMS 0.02 fifty times less, so the task lr must be raised to match.
torch also caps the step at 1/sqrt(t), which binds only after 1/lr² steps (10^6 at lr 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spam_bench.suite.config import param
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.registry import OptimizerSpec
from spam_bench.suite.search_space import Dist


@dataclass
class AdafactorConfig:
    beta2_decay: float = param(-0.8, "Second-moment decay exponent: beta2_t = 1 - t^decay (paper: -0.8).", le=0.0)
    eps1: float | None = param(None, "Floor of the factored second moment (None = the dtype's machine eps).", gt=0.0)
    clip_threshold: float = param(1.0, "d: the update is divided by max(1, RMS(update)/d).", gt=0.0)
    weight_decay: float = param(0.0, "Decoupled weight decay.", ge=0.0)
    scale_parameter: bool = param(False, "Scale the step by RMS(param) (torch's default); False = the paper's setting.")
    foreach: bool = param(True, "torch's multi-tensor implementation.")


def make(
    model: torch.nn.Module,
    model_info: ModelInfo,
    *,
    lr: float,
    beta2_decay: float,
    eps1: float | None,
    clip_threshold: float,
    weight_decay: float,
    scale_parameter: bool,
    foreach: bool,
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    eps2 = 1e-3 if scale_parameter else 1.0
    return torch.optim.Adafactor(
        params,
        lr=lr,
        beta2_decay=beta2_decay,
        eps=(eps1, eps2),
        d=clip_threshold,
        weight_decay=weight_decay,
        foreach=foreach,
    )


SPEC = OptimizerSpec(
    name="adafactor",
    factory=make,
    config_cls=AdafactorConfig,
    description="torch.optim.Adafactor, no momentum, absolute step (paper/GaLore settings)",
    reference="torch 2.13 torch.optim.Adafactor; settings of GaLore's torchrun_main.py",
    search_space={"lr": Dist(1e-4, 3e-2, log=True)},
)
