"""torch's AdamW, the baseline every other optimizer is measured against.

Uses the fused kernel where torch has one for the parameters' device and dtype (CPU and CUDA in
torch 2.13), which is also what the `perf` benchmark compares SPAM's speed with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spam_bench.optimizers.adam import SEARCH, kernel_choice
from spam_bench.suite.config import param
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.registry import OptimizerSpec


@dataclass
class AdamWConfig:
    beta1: float = param(0.9, "First-moment decay.", ge=0.0, lt=1.0)
    beta2: float = param(0.999, "Second-moment decay.", ge=0.0, lt=1.0)
    eps: float = param(1e-8, "Denominator epsilon (torch default).", gt=0.0)
    weight_decay: float = param(0.0, "Decoupled weight decay; 0 as in the paper's LLM runs.", ge=0.0)
    fused: bool = param(True, "Use torch's fused kernel when the parameters allow it.")


def make(
    model: torch.nn.Module,
    model_info: ModelInfo,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    fused: bool,
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, **kernel_choice(params, fused)
    )


SPEC = OptimizerSpec(
    name="adamw",
    factory=make,
    config_cls=AdamWConfig,
    description="torch.optim.AdamW (fused where available)",
    reference="torch 2.13 torch.optim.AdamW",
    search_space=SEARCH,
)
