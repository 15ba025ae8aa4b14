"""Role checks shared by the optimizers that group parameters by role (GaLore, Adam-mini, sparse SPAM).

An optimizer that treats attention/MLP matrices differently must not silently treat a weight it
cannot classify as "everything else": a 2-D weight with role `other` in an attention model, or a
parameter the task forgot to give a role, is an error naming the parameter.
"""

from __future__ import annotations

import torch

from spam_bench.suite.model_info import ATTENTION_ROLES, MATRIX_ROLES, ModelInfo


def is_attention_model(model_info: ModelInfo) -> bool:
    return model_info.n_heads is not None or any(r in ATTENTION_ROLES for r in model_info.roles.values())


def checked_roles(
    model: torch.nn.Module, model_info: ModelInfo, optimizer: str
) -> list[tuple[str, torch.nn.Parameter, str]]:
    """(name, param, role) of the trainable parameters; raises ValueError on a missing or unclassified role."""
    out = []
    attention = is_attention_model(model_info)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name not in model_info.roles:
            raise ValueError(
                f"{optimizer}: parameter {name!r} has no role in model_info "
                f"(this optimizer groups parameters by role; the task must classify every parameter)"
            )
        role = model_info.roles[name]
        if attention and role == "other" and p.ndim >= 2:
            raise ValueError(
                f"{optimizer}: parameter {name!r} of shape {tuple(p.shape)} has role 'other' in an "
                f"attention model; give it a role (embedding, attn_q/k/v/o, mlp, output, ...)"
            )
        out.append((name, p, role))
    return out


def matrix_shapes(model: torch.nn.Module, model_info: ModelInfo, optimizer: str) -> list[tuple[int, int]]:
    """Shapes of the 2-D attention/MLP weights: what GaLore projects and sparse SPAM masks."""
    return [
        tuple(p.shape) for _, p, r in checked_roles(model, model_info, optimizer) if r in MATRIX_ROLES and p.ndim == 2
    ]
