"""Measurements every task reports the same way: optimizer-state bytes, peak memory, gradient norms.

Optimizer memory is analytic (sum of numel x element size over the tensors in `optimizer.state`),
because allocator readings on CPU are noise and disputes about optimizer memory are mostly disputes
about how it was measured (docs/measured-facts.md#optimizer-memory).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable
from typing import Any

import torch


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in optimizer.state (moments, masks, counters kept as tensors)."""
    seen: set[int] = set()
    total = 0
    for state in optimizer.state.values():
        for t in _tensors(state):
            if t.data_ptr() in seen and t.numel() > 0:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def peak_memory_bytes(device: torch.device) -> int:
    """max_memory_allocated on CUDA; peak RSS of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def grad_global_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of all gradients (the quantity global-norm clipping acts on)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
