"""Shared test settings: offline hub, a throw-away results store, and a very small llm config."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

# A ~0.2M-parameter LLaMA that still trains on the real tiny corpus in seconds.
SMALL_LLM = {
    "hidden_size": "32", "intermediate_size": "64", "n_heads": "2", "n_layers": "1", "seq_len": "32",
    "batch_size": "8", "steps": "30", "lr": "3e-3", "lr_warmup_steps": "5", "eval_every": "10",
    "eval_tokens": "1024", "checkpoint_every": "5", "threads": "1",
}


def small_llm_sets(**changes: object) -> list[str]:
    values = {**SMALL_LLM, **{k: str(v) for k, v in changes.items()}}
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def out_dir(tmp_path):
    return tmp_path / "out"
