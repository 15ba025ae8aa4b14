"""Injected faults, for testing that runners survive crashes (chaos testing, like a fuzzer for runners).

Set SPAMBENCH_CRASH_ONCE="<step>:<marker folder>" and every run raises `InjectedFault` the first
time it logs a metric at or after <step>; a marker file per run makes the fault happen once, so a
retry (from the run's checkpoint) completes. Unset, this costs one dictionary lookup per log call.

SPAMBENCH_CRASH_ONCE="<step>:<marker folder>:kill" sends the process SIGKILL instead: no `finally`,
no flush, no atexit, as when the machine loses power or the OOM killer strikes. A raised fault tests
the retry path of a runner; a kill tests that what is on disk at any instant is enough to resume.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "SPAMBENCH_CRASH_ONCE"


class InjectedFault(RuntimeError):
    """Raised on purpose by SPAMBENCH_CRASH_ONCE."""


def maybe_crash(step: int, run_dir: Path) -> None:
    setting = os.environ.get(ENV)
    if not setting:
        return
    at, _, rest = setting.partition(":")
    kill, marker_dir = rest.endswith(":kill"), rest.removesuffix(":kill")
    if step < int(at):
        return
    marker = Path(marker_dir) / f"{run_dir.name}.crashed"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{step}\n")
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at step {step} in {run_dir.name} ({ENV})")
