"""Seeding and RNG snapshots: what a checkpoint must hold for a resumed run to be bit-identical."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def rng_untouched() -> Iterator[None]:
    """Run a block without moving any global RNG (torch, CUDA, numpy, Python): whatever it draws,
    the code after it draws exactly what it would have drawn without it. For work that is not part
    of training, such as the evaluation before the first step (RunContext.log_initial)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
