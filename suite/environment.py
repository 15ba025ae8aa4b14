"""Where a result came from: versions, the project's own git commit, host and hardware, in every summary."""

from __future__ import annotations

import os
import platform
import socket
from importlib.metadata import PackageNotFoundError, version

import torch

from spam_bench.suite.identity import project_git


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def describe(device: str) -> dict[str, object]:
    dev = torch.device(device)
    return {
        "versions": {
            "spam-bench": _version("spam-bench"),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "git": project_git(),
        "host": socket.gethostname(),
        "hardware": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        },
    }
