"""Where a result came from: versions, the project's own git commit, host, placement and hardware, in every summary."""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from spam_bench.suite.identity import project_git

if TYPE_CHECKING:
    import torch


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def placement() -> dict[str, str | None]:
    """Where this process runs: its Ray node (id and IP) when inside Ray, and the GPUs it was given.

    A sweep on a cluster must say per run which node and which GPU produced it, so that a bad node or
    two trials sharing a GPU can be found afterwards. Ray is consulted only if this process has already
    imported it (a trial has), so a plain `spambench run` neither imports nor starts Ray.
    `cuda_visible_devices` is the variable as this process saw it (None when unset; Ray sets it per
    trial from the GPUs it assigned).
    """
    found: dict[str, str | None] = {"ray_node_id": None, "ray_node_ip": None}
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        try:
            found["ray_node_id"] = ray.get_runtime_context().get_node_id()
            found["ray_node_ip"] = ray.util.get_node_ip_address()
        except Exception:  # a half-shut-down Ray: where it ran is then unknown, not a failed run
            pass
    return {**found, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _device_name(dev: torch.device) -> str:
    """The accelerator's name; a CUDA spec on a machine where CUDA is unavailable says so instead of failing."""
    if dev.type != "cuda":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cuda (unavailable)"
    try:
        return torch.cuda.get_device_name(dev)
    except (RuntimeError, AssertionError, ValueError) as err:  # e.g. an index past the visible devices
        return f"cuda (unavailable: {' '.join(str(err).split())})"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows.

    Two machines with the same ISA name (x86_64) can still differ in the last bits of a float32 run,
    because BLAS picks its kernels by the CPU's vector extensions: the model and torch's CPU capability
    (AVX2, AVX512, ...) say which machines should give bit-identical numbers."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str) -> dict[str, object]:
    import torch  # here, not at the top: `placement` serves `sweep --check-placement`, whose trials never load torch

    dev = torch.device(device)
    return {
        "versions": {
            "spam-bench": _version("spam-bench"),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "git": project_git(),
        "host": socket.gethostname(),
        "placement": placement(),
        "hardware": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": _device_name(dev),
        },
    }
