"""SPAM with sparse momentum at the density that matches GaLore's memory (docs/spam.md#matched-density).

d = (GaLore state of all 2-D attention/MLP weights at rank r: projector min(m,n)·r plus moments
2·r·max(m,n)) / (Adam state of the same weights: 2·m·n), computed from the model's shapes. This
reproduces the authors' logged densities exactly: 0.3225388601036269 for 60M at r = 128 and
0.4305555555555556 for 130M at r = 256 (0.3228 for 350M at 256, 0.3229 for 1B at 512).
Everything else is `optimizers.spam.make` with that density.
"""

from __future__ import annotations

import dataclasses

import torch

from spam_bench.optimizers.galore import resolve_rank, state_numel
from spam_bench.optimizers.roles import matrix_shapes
from spam_bench.optimizers.spam import SPAM, SPAMConfig
from spam_bench.optimizers.spam import make as make_spam
from spam_bench.suite.config import param
from spam_bench.suite.errors import NotApplicable
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.registry import OptimizerSpec


def matched_density(model: torch.nn.Module, model_info: ModelInfo, rank: int | None = None) -> float:
    """GaLore-state / Adam-state over the attention+MLP matrices at `rank`, capped at 1."""
    shapes = matrix_shapes(model, model_info, "spam_sparse")
    if not shapes:
        raise NotApplicable("spam_sparse: the model has no 2-D attention/MLP weights (roles attn_*/mlp) to mask")
    r = resolve_rank(rank, model_info, shapes)
    galore = sum(state_numel(m, n, r) for m, n in shapes)
    adam = sum(2 * m * n for m, n in shapes)
    return min(1.0, galore / adam)


_SPAM_FIELDS = [
    (f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
    for f in dataclasses.fields(SPAMConfig)
    if f.name != "density"
]

SparseSPAMConfig = dataclasses.make_dataclass(
    "SparseSPAMConfig",
    [
        (
            "rank",
            int | None,
            param(
                None,
                "GaLore rank the memory is matched to; None = the paper's rank for the model "
                "width (128 at 60M, 256 at 130M/350M, 512 at 1B; hidden/4 otherwise).",
                ge=1,
            ),
        ),
        *_SPAM_FIELDS,
    ],
)
SparseSPAMConfig.__doc__ = "SPAM's fields (without density, which is derived) plus the GaLore rank to match."


def make(model: torch.nn.Module, model_info: ModelInfo, *, lr: float, rank: int | None = None, **spam_fields) -> SPAM:
    return make_spam(model, model_info, lr=lr, density=matched_density(model, model_info, rank), **spam_fields)


SPEC = OptimizerSpec(
    name="spam_sparse",
    factory=make,
    config_cls=SparseSPAMConfig,
    description="SPAM with sparse momentum at GaLore's memory (density from the model, docs/spam.md#matched-density)",
    reference="Huang et al. 2025 arXiv 2501.06842 §memory-efficient; density rule of the authors' logs",
    needs_roles=True,
    sparse_state=True,
)
