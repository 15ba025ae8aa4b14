"""spam-bench: an open benchmark suite for deep-learning optimizers, built around SPAM.

The repository keeps its layers as top-level folders (`suite/`, `optimizers/`, `tasks/`, `runners/`,
`reports/`); they install as subpackages of this one import name, so that nothing named `suite` or
`tasks` lands at the top level of a user's environment, where it would clash with their own code.
"""
from __future__ import annotations

__version__ = "0.1.0"
