"""A published snapshot: the runs of a results store as two Parquet files that outlive the store.

`spambench publish` writes one into a folder (`results/` by default):

- `runs.parquet`: the report's runs table, one row per complete run (not-applicable pairs included),
  with every field the report reads from a run's summary.json and spec.json;
- `results.parquet`: the report's long table (`reports/summary.py`, curves already thinned to
  CURVE_POINTS) with the run columns beside every row, for notebooks.

Together they hold everything the leaderboard, the findings and the LR studies are computed from, so
a snapshot can be merged with a store that holds other runs (`merge`) and the report rebuilt from the
union. That is how results accumulate across machines whose stores do not survive: each machine runs
what the snapshot lacks (`spambench sweep --published results`, `published_codes`) and publishes into
the same folder. A run in the store replaces the snapshot's run of the same (task, run_id).

Reading is data only (Parquet through pyarrow: no pickle, nothing executed). A folder with a
results.parquet but no runs.parquet is a snapshot of the older format, which kept too little of each
run to rebuild the report: it cannot be merged, and the error says so rather than dropping its runs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from spam_bench.reports.summary import LONG_COLUMNS, MALFORMED_ATTR, label_problems, with_run_columns
from spam_bench.suite.errors import ConfigError

RUNS_FILE, LONG_FILE = "runs.parquet", "results.parquet"
# What a snapshot's runs table must have for the report and for `published_codes`.
REQUIRED_RUN_COLUMNS = ("task", "run_id", "optimizer", "seed", "scale", "status", "code_id", "problem_key")
Frames = tuple[pd.DataFrame, pd.DataFrame]


def _unreadable(path: Path, why: str) -> ConfigError:
    return ConfigError("published", str(path), f"a snapshot written by `spambench publish` ({why})")


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except (OSError, ValueError, KeyError) as err:  # pyarrow's errors derive from these
        raise _unreadable(path, f"not readable as Parquet: {' '.join(str(err).split())[:120]}") from None


def read_snapshot(folder: Path) -> Frames | None:
    """(runs, long) of the snapshot in `folder`, or None when the folder holds none.

    A results.parquet without runs.parquet (the older format) or a file missing a column the report
    needs is refused with a ConfigError that names the file."""
    folder = Path(folder)
    runs_path, long_path = folder / RUNS_FILE, folder / LONG_FILE
    if not runs_path.exists() and not long_path.exists():
        return None
    if not runs_path.exists():
        raise _unreadable(
            folder,
            f"{LONG_FILE} without {RUNS_FILE} is the older format, which cannot be merged; "
            "publish with --replace to start a new snapshot there",
        )
    runs = _read(runs_path)
    missing = [c for c in REQUIRED_RUN_COLUMNS if c not in runs.columns]
    if missing:
        raise _unreadable(runs_path, f"it lacks the column(s) {', '.join(missing)}")
    long = _read(long_path, LONG_COLUMNS) if long_path.exists() else pd.DataFrame(columns=LONG_COLUMNS)
    return runs, long


def write_snapshot(runs: pd.DataFrame, long: pd.DataFrame, folder: Path) -> None:
    """Write `runs` and `long` into `folder` as a snapshot (each file replaced whole, never half-written)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = runs.copy()
    table.attrs = {}  # the report's bookkeeping (malformed-folder count) is not part of the runs
    for name, frame in ((RUNS_FILE, table), (LONG_FILE, with_run_columns(long, runs))):
        partial = folder / f".{name}.partial"
        frame.to_parquet(partial, index=False)
        partial.replace(folder / name)


def merge(snapshot: Frames | None, store: Frames) -> Frames:
    """The union of a snapshot's runs and a store's: a (task, run_id) in both is the store's run."""
    if snapshot is None or snapshot[0].empty:
        return store
    runs, long = store
    (old_runs, old_long), malformed = snapshot, runs.attrs.get(MALFORMED_ATTR, 0)
    fresh = pd.MultiIndex.from_frame(runs[["task", "run_id"]].astype(str))
    keep_runs = ~pd.MultiIndex.from_frame(old_runs[["task", "run_id"]].astype(str)).isin(fresh)
    keep_long = ~pd.MultiIndex.from_frame(old_long[["task", "run_id"]].astype(str)).isin(fresh)
    merged_runs = pd.concat([old_runs[keep_runs], runs], ignore_index=True) if len(runs) else old_runs
    merged_long = (
        pd.concat([_plain(old_long[keep_long]), _plain(long)], ignore_index=True) if len(long) else _plain(old_long)
    )
    merged_runs = label_problems(merged_runs.reset_index(drop=True))
    merged_runs.attrs[MALFORMED_ATTR] = malformed
    return merged_runs, _categorized(merged_long)


def _plain(long: pd.DataFrame) -> pd.DataFrame:
    """`long` with its text columns as strings, so frames with different categories concatenate."""
    return long.astype({c: "object" for c in ("task", "run_id", "split", "name") if c in long.columns})


def _categorized(long: pd.DataFrame) -> pd.DataFrame:
    return long.astype({c: "category" for c in ("task", "run_id", "split", "name")})


def published_codes(folder: Path) -> dict[tuple[str, str], str]:
    """{(task, run_id): code fingerprint} of every run in the snapshot in `folder` (empty if none): what
    `spambench sweep --published` counts as done when the current code would make it the same way."""
    snapshot = read_snapshot(folder)
    if snapshot is None:
        return {}
    runs = snapshot[0]
    return {(str(t), str(r)): str(c) for t, r, c in runs[["task", "run_id", "code_id"]].itertuples(index=False) if c}
