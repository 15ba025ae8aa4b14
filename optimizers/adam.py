"""torch's Adam, plain and with global-norm gradient clipping ("Adam + GradClip", the paper's baseline).

`adam_clip` is the same optimizer with `grad_clip = 1.0` on its spec: the task clips the global
gradient norm before `step()` and records the clip value with the run, so the clipping is part of
the named optimizer rather than a task setting someone has to remember (docs/spam.md#published-results:
the paper's value is probably 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spam_bench.suite.config import param
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.registry import OptimizerSpec
from spam_bench.suite.search_space import Dist

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def kernel_choice(params: list[torch.nn.Parameter], fused: bool) -> dict[str, bool | None]:
    """torch's fused Adam(W) kernel where every parameter's dtype allows it, else the foreach path."""
    use_fused = fused and all(p.dtype in FUSED_DTYPES for p in params)
    return {"fused": use_fused or None, "foreach": None if use_fused else True}


@dataclass
class AdamConfig:
    beta1: float = param(0.9, "First-moment decay.", ge=0.0, lt=1.0)
    beta2: float = param(0.999, "Second-moment decay.", ge=0.0, lt=1.0)
    eps: float = param(1e-8, "Denominator epsilon (torch default).", gt=0.0)
    weight_decay: float = param(
        0.0, "L2 penalty added to the gradient (coupled, unlike AdamW); 0 as in the paper.", ge=0.0
    )
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
    return torch.optim.Adam(
        params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, **kernel_choice(params, fused)
    )


SEARCH = {"lr": Dist(1e-4, 1e-2, log=True), "opt.beta2": Dist(0.95, 0.999)}

SPEC = OptimizerSpec(
    name="adam",
    factory=make,
    config_cls=AdamConfig,
    description="torch.optim.Adam (fused where available)",
    reference="torch 2.13 torch.optim.Adam",
    search_space=SEARCH,
)

CLIP_SPEC = OptimizerSpec(
    name="adam_clip",
    factory=make,
    config_cls=AdamConfig,
    description="Adam + global-norm gradient clipping at 1.0 (the paper's 'Adam + GradClip')",
    reference="torch 2.13 torch.optim.Adam + torch.nn.utils.clip_grad_norm_; Stable-SPAM arXiv 2502.17055 Table 2",
    grad_clip=1.0,
    search_space=SEARCH,
)
