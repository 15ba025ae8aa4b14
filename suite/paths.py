"""Where things live on disk: the results store (`out/`) and the data cache."""

from __future__ import annotations

import os
from pathlib import Path


def out_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--out`, else $SPAMBENCH_OUT, else ./out."""
    return Path(explicit or os.environ.get("SPAMBENCH_OUT") or "out").resolve()


def data_cache() -> Path:
    """$SPAMBENCH_DATA, else ~/.cache/spam-bench: shared by every clone, so setup fetches once."""
    root = os.environ.get("SPAMBENCH_DATA") or Path.home() / ".cache" / "spam-bench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
