"""Shared test settings: offline hub, a throw-away results store, and a very small llm config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

# A ~0.2M-parameter LLaMA that still trains on the real tiny corpus in seconds.
SMALL_LLM = {
    "hidden_size": "32",
    "intermediate_size": "64",
    "n_heads": "2",
    "n_layers": "1",
    "seq_len": "32",
    "batch_size": "8",
    "steps": "30",
    "lr": "3e-3",
    "lr_warmup_steps": "5",
    "eval_every": "10",
    "eval_tokens": "1024",
    "checkpoint_every": "5",
    "threads": "1",
}


def small_llm_sets(**changes: object) -> list[str]:
    values = {**SMALL_LLM, **{k: str(v) for k, v in changes.items()}}
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def out_dir(tmp_path):
    return tmp_path / "out"


def sigkill_when(
    cmd: list[str], out: Path, task: str, ready: Callable[[list[dict]], bool], timeout: float = 120
) -> Path:
    """Run `cmd` (a `spambench run`) and SIGKILL it as soon as `ready(metrics logged so far)` holds.

    Returns the run folder, checked to hold a checkpoint and no summary: a run killed mid-way.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline, run_dir = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob(f"runs/{task}/*/metrics.jsonl"))
        lines = [json.loads(line) for line in found[0].read_text().splitlines() if line.endswith("}")] if found else []
        if lines and ready(lines):
            run_dir = found[0].parent
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_dir is not None, "the run finished before it could be killed; make it longer"
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists()
    return run_dir


# Headless Chromium for the report's HTML checks (Debian: apt-get install chromium; .ci/run installs it).
CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")


def run_chromium(page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    """Open `page` in a headless Chromium with a throw-away profile, nothing fetched from the network,
    and `mode` (e.g. --screenshot=..., --dump-dom)."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *mode,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


# `make test` runs two pytest-xdist workers, a test file each at a time, in collection order. Files
# that take the longest (a Ray cluster, S3, real sweeps and kills) go first, so that the two workers
# finish together instead of one running a long file alone at the end. Only the order changes.
LONGEST_FIRST = (
    "test_ray_cluster.py",  # `make test-cluster`: the cluster tier's longest files first too
    "test_distributed.py",
    "test_ray_train.py",
    "test_sweep.py",
    "test_contract.py",
    "test_bad_input_corpus.py",
    "test_tsf_run.py",
    "test_tracking.py",
    "test_spam_equivalence.py",
    "test_tuning.py",
    "test_library.py",
    "test_sensitivity_cli.py",
    "test_rl_run.py",
    "test_object_store.py",
    "test_store_hardening.py",
    "test_published.py",
    "test_gpu_check.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's order is kept
