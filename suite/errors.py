"""The one error type users see: a bad value in a spec, config or command line.

The CLI prints it as a single line and exits with status 2, before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A bad field value; the message names the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str | Iterable[Any]):
        if not isinstance(allowed, str):
            allowed = "one of " + ", ".join(str(a) for a in allowed)
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: invalid value {value!r} (allowed: {allowed})")

    def __reduce__(self) -> tuple[type, tuple[str, Any, str]]:
        """Survive pickling (a Ray trial hands its error back to the driver), message intact."""
        return type(self), (self.field, self.value, self.allowed)


NOT_APPLICABLE = "not_applicable"


class NotApplicable(ValueError):
    """An optimizer cannot act on this task's model, e.g. sparse momentum with no matrix to mask.

    A factory raises it when it builds. The run is then recorded with status "not_applicable" and
    this reason: a fact about the pair that a sweep over every task x optimizer will meet, so not a
    crash to retry, and not a number to rank either (a GaLore with nothing to project is AdamW).
    """
