"""What a task knows about its model that optimizers need: parameter roles and shape facts.

GaLore projects 2-D attention/MLP weights, Adam-mini partitions by heads, SPAM's sparse momentum
masks attention/MLP weights: each asks `ModelInfo` instead of parsing parameter names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

ROLES = ("embedding", "attn_q", "attn_k", "attn_v", "attn_o", "mlp", "norm", "output", "bias", "other")
ATTENTION_ROLES = frozenset({"attn_q", "attn_k", "attn_v", "attn_o"})
MATRIX_ROLES = ATTENTION_ROLES | {"mlp"}


@dataclass
class ModelInfo:
    """Roles of a model's parameters (by name) and the dimensions that optimizers may need."""

    roles: dict[str, str]
    hidden_size: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {n: r for n, r in self.roles.items() if r not in ROLES}
        if bad:
            name, role = next(iter(bad.items()))
            raise ValueError(f"parameter {name}: unknown role {role!r} (allowed: {', '.join(ROLES)})")

    def role_of(self, name: str) -> str:
        return self.roles.get(name, "other")

    def named_parameters_with_roles(self, model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter, str]]:
        for name, p in model.named_parameters():
            yield name, p, self.role_of(name)


def roles_by_rank(model: torch.nn.Module) -> ModelInfo:
    """A fallback for models without attention (RL/TSF networks): 2-D weights are `mlp`, 1-D are `bias`."""
    roles = {n: ("mlp" if p.ndim >= 2 else "bias") for n, p in model.named_parameters()}
    return ModelInfo(roles=roles)
