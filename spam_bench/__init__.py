"""spam-bench: an open benchmark suite for deep-learning optimizers, built around SPAM.

    import spam_bench
    spam_bench.run("spikes", "spam")                          # a registered optimizer
    spam_bench.run("spikes", torch.optim.SGD, optimizer_kwargs={"momentum": 0.9})
    spam_bench.compare("spikes", ["adamw", "spam", MyLion])   # the leaderboard table as a DataFrame

The repository keeps its layers as top-level folders (`suite/`, `optimizers/`, `tasks/`, `runners/`,
`reports/`); they install as subpackages of this one import name, so that nothing named `suite` or
`tasks` lands at the top level of a user's environment, where it would clash with their own code.
The API lives in `spam_bench.runners.api`; it is imported on first use, so `import spam_bench`
stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RunResult", "__version__", "compare", "register_optimizer", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "compare", "register_optimizer", "RunResult"):
        from spam_bench.runners import api

        return getattr(api, name)
    raise AttributeError(f"module 'spam_bench' has no attribute {name!r}")
