"""Run specs in this process, one after another.

The run itself (reuse, context, summary) is the suite's `execute` (suite/lifecycle.py), the one code
path that executes a run; the Ray runner calls it inside its trials too, so the same spec gives the
same numbers whichever runner ran it.
"""

from __future__ import annotations

from spam_bench.suite.lifecycle import execute

__all__ = ["execute"]
