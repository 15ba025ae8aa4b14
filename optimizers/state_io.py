"""Loading optimizer state without torch's dtype cast.

`torch.optim.Optimizer.load_state_dict` casts every floating state tensor to its parameter's dtype:
lossy for float32 moments of bf16 parameters, and wrong for integer masks. Optimizers that keep state
in its own dtype call this after `super().load_state_dict` to put the saved tensors back as saved.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch


def restore_saved_dtypes(
    optimizer: torch.optim.Optimizer, state_dict: dict[str, Any], keys: Collection[str] | None = None
) -> None:
    """Re-take the saved state tensors (only `keys`, if given) at their saved dtype, on each param's device."""
    ids = [i for g in state_dict["param_groups"] for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in zip(ids, params):
        for key, value in state_dict["state"].get(i, {}).items():
            if torch.is_tensor(value) and (keys is None or key in keys):
                optimizer.state[p][key] = value.to(device=p.device, copy=True)
