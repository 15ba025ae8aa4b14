"""Ctrl-C that waits for a step boundary, so the checkpoint it triggers is consistent.

A KeyboardInterrupt raised inside `optimizer.step()` could leave half the parameters updated;
instead the first SIGINT only sets a flag that the training loop checks between steps. A second
Ctrl-C interrupts at once, for a user who really wants out.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    def __init__(self) -> None:
        self.requested = False


@contextmanager
def deferred_interrupt() -> Iterator[StopRequest]:
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals only reach the main thread (e.g. inside some Ray workers)
        return

    def handler(signum: int, frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
