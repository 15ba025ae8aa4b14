"""Where a run's time goes: data, forward/backward, the optimizer, the telemetry, and the rest.

The suite times what it owns itself: the instruments (`telemetry`: gradient statistics, spike
detection, the GSS record) and everything between them around an update (`optimizer`: the clip rule,
`optimizer.step()`, zeroing gradients, the schedule). A task marks its own phases with
`ctx.timed("data")` and `ctx.timed("forward_backward")` where its loop is its own; what no one
marks (a library's loop, evaluation, checkpoints) is `other`. The split goes into every summary
(`time_split_s`) and `make perf-tasks` prints it. Timing reads the clock only: no numbers change.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

PHASES = ("data", "forward_backward", "optimizer", "telemetry")


class PhaseClock:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._start = time.perf_counter()
        self._open: list[list[float]] = []  # per open `timed` block: seconds counted inside it

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Time the block as `phase`, less what is counted inside it (a library's update that calls the
        optimizer: its forward and backward passes only), so no second is counted twice."""
        if phase not in self.seconds:
            raise ValueError(f"phase {phase!r} is not one of {', '.join(PHASES)}")
        inner = [0.0]
        self._open.append(inner)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._open.pop()
            self.add(phase, time.perf_counter() - t0 - inner[0])

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds
        for inner in self._open:
            inner[0] += seconds

    def split(self) -> dict[str, float]:
        """Seconds per phase since the clock started, `other` the rest, and `total`."""
        total = time.perf_counter() - self._start
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["other"] = round(max(0.0, total - sum(self.seconds.values())), 3)
        out["total"] = round(total, 3)
        return out
