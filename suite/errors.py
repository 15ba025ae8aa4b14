"""The one error type users see: a bad value in a spec, config or command line.

The CLI prints it as a single line and exits with status 2, before anything is written.
"""
from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
    """A bad field value; the message names the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str | Iterable[Any]):
        if not isinstance(allowed, str):
            allowed = "one of " + ", ".join(str(a) for a in allowed)
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: invalid value {value!r} (allowed: {allowed})")
