"""A published snapshot: the runs of results stores as files that outlive the stores.

`spambench publish` writes one into a folder (`results/` by default), beside RESULTS.md:

- `runs.parquet`: the report's runs table, one row per complete run (not-applicable pairs included),
  with every field the report reads from a run's summary.json and spec.json;
- `results.parquet`: the report's long table (`reports/summary.py`, curves already thinned to
  CURVE_POINTS) with the run columns beside every row, for notebooks;
- `tuned.json`: the `spambench tune` records of the published (task, scale, optimizer)s, which decide
  which entries count as tuned and how many configurations each optimizer tried.

Together they hold everything the leaderboard, the findings and the LR studies are computed from, so
a snapshot can be merged with a store that holds other runs (`merge`) and the report rebuilt from the
union. That is how results accumulate across machines whose stores do not survive: each machine runs
what the snapshot lacks (`spambench sweep --published results`, `published_codes`) and publishes into
the same folder. A run in both keeps the copy that finished later (a store may still hold a run that
the snapshot has since replaced by a newer one); a tuning record in both keeps the store's.

Reading is data only (Parquet through pyarrow, JSON: no pickle, nothing executed), and what is read
is checked (reports/snapshot_check.py) before anything is merged or written. A folder with a
results.parquet but no runs.parquet is a snapshot of the older format, which kept too little of each
run to rebuild the report: it cannot be merged, and the error says so rather than dropping its runs.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spam_bench.reports.leaderboard import TuningRecords
from spam_bench.reports.snapshot_check import check_long, check_runs
from spam_bench.reports.summary import LONG_COLUMNS, MALFORMED_ATTR, label_problems, with_run_columns
from spam_bench.suite.errors import ConfigError

RUNS_FILE, LONG_FILE, TUNED_FILE = "runs.parquet", "results.parquet", "tuned.json"


@dataclass
class Snapshot:
    runs: pd.DataFrame
    long: pd.DataFrame
    tuned: TuningRecords = field(default_factory=dict)


def _unreadable(path: Path, why: str) -> ConfigError:
    return ConfigError("published", str(path), f"a snapshot written by `spambench publish` ({why})")


def _read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    # ignore_metadata: the pandas schema a file carries is the writer's word, not ours to follow.
    try:
        return pq.read_table(path, columns=columns).to_pandas(ignore_metadata=True)
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError, pa.ArrowException) as err:
        raise _unreadable(path, f"not readable as Parquet: {' '.join(str(err).split())[:120]}") from None


def _read_tuned(path: Path) -> TuningRecords:
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise _unreadable(path, f"not readable as JSON: {' '.join(str(err).split())[:120]}") from None
    records: dict[tuple[str, str, str], dict[str, Any]] = {}
    for entry in entries if isinstance(entries, list) else [entries]:
        ok = isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("task", "scale", "optimizer"))
        record = entry.get("record") if ok else None
        if not isinstance(record, dict) or not isinstance(record.get("sets"), dict):
            raise _unreadable(path, "a list of {task, scale, optimizer, record: {sets: {...}, ...}}")
        records[(entry["task"], entry["scale"], entry["optimizer"])] = record
    return records


def read_snapshot(folder: Path) -> Snapshot | None:
    """The snapshot in `folder`, checked, or None when the folder holds none.

    A results.parquet without runs.parquet (the older format), an unreadable file, or a value the
    report could not read is refused with a ConfigError that names the file."""
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
    runs = _read_parquet(runs_path)
    check_runs(runs_path, runs)
    long = _read_parquet(long_path, LONG_COLUMNS) if long_path.exists() else pd.DataFrame(columns=LONG_COLUMNS)
    check_long(long_path, long, runs)
    return Snapshot(runs, _categorized(long), _read_tuned(folder / TUNED_FILE))


def snapshot_files(snapshot: Snapshot) -> dict[str, bytes]:
    """The snapshot's files as bytes, to be written together with RESULTS.md (`write_files`)."""
    runs = snapshot.runs.copy()
    runs.attrs = {}  # the report's bookkeeping (malformed-folder count) is not part of the runs
    files = {}
    for name, frame in ((RUNS_FILE, runs), (LONG_FILE, with_run_columns(snapshot.long, snapshot.runs))):
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        files[name] = buffer.getvalue()
    tuned = [{"task": t, "scale": s, "optimizer": o, "record": r} for (t, s, o), r in sorted(snapshot.tuned.items())]
    files[TUNED_FILE] = (json.dumps(tuned, indent=1, sort_keys=True) + "\n").encode()
    return files


def write_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write every file of `files` into `folder`, each through a fresh temporary file (random name,
    created exclusively, so a planted link is never followed) renamed over its name only once all of
    them are on disk: a failure leaves the folder as it was."""
    folder.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o022)
    os.umask(umask)
    staged: dict[str, str] = {}
    try:
        for name, data in files.items():
            handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial")
            staged[name] = temp
            os.fchmod(handle, 0o666 & ~umask)  # mkstemp's 0600 would hide the results from the group
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        for name, temp in staged.items():
            os.replace(temp, folder / name)
    finally:
        for temp in staged.values():
            if os.path.lexists(temp):
                os.unlink(temp)


def merge(snapshot: Snapshot | None, runs: pd.DataFrame, long: pd.DataFrame, tuned: TuningRecords) -> Snapshot:
    """The union of a snapshot and a store's runs, long table and tuning records (see the module
    docstring for which copy of a run in both is kept)."""
    if snapshot is None or snapshot.runs.empty:
        return Snapshot(runs, long, {**(snapshot.tuned if snapshot else {}), **tuned})
    malformed = runs.attrs.get(MALFORMED_ATTR, 0)
    old = snapshot.runs
    keep_store = _finished_later(runs, old)
    key = ["task", "run_id"]
    kept_store_keys = _keys(runs[keep_store])
    keep_old = ~_keys(old).isin(kept_store_keys)  # a store copy that is kept replaces the old one
    keep_old_long = ~_keys(snapshot.long).isin(kept_store_keys)
    keep_store_long = _keys(long).isin(kept_store_keys)
    merged_runs = _concat([old[keep_old], runs[keep_store]]).sort_values(key, kind="stable")
    merged_long = _concat([_plain(snapshot.long[keep_old_long]), _plain(long[keep_store_long])])
    merged = label_problems(merged_runs.reset_index(drop=True))
    merged.attrs[MALFORMED_ATTR] = malformed
    return Snapshot(merged, _categorized(merged_long.reset_index(drop=True)), {**snapshot.tuned, **tuned})


def _keys(frame: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_frame(frame[["task", "run_id"]].astype(str))


def _finished_later(runs: pd.DataFrame, old: pd.DataFrame) -> pd.Series:
    """Per store run: whether to keep it, i.e. the snapshot lacks it or it finished no earlier than
    the snapshot's copy (a copy without a time counts as the earliest)."""
    when_old = dict(zip(_keys(old), pd.to_datetime(old["finished_at"], utc=True, errors="coerce", format="ISO8601")))
    when_new = pd.to_datetime(runs["finished_at"], utc=True, errors="coerce", format="ISO8601")
    keep = []
    for k, new in zip(_keys(runs), when_new):
        if k not in when_old:
            keep.append(True)
        else:
            before = when_old[k]
            keep.append(pd.isna(before) or (not pd.isna(new) and new >= before))
    return pd.Series(keep, index=runs.index, dtype=bool)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate, dropping each part's all-empty columns first so that no column's dtype is decided
    by a part that has no value in it (pandas warns about that, and will change it). Columns keep the
    first part's order; an empty cell of a text column is None, as `load_runs` leaves it."""
    columns = list(dict.fromkeys(c for f in frames for c in f.columns))
    parts = [f.dropna(axis=1, how="all") for f in frames if len(f)]
    if not parts:
        return frames[0].iloc[0:0]
    out = pd.concat(parts, ignore_index=True).reindex(columns=columns)
    for c in columns:
        if out[c].dtype == object or any(c in f.columns and f[c].dtype == object for f in frames):
            values = out[c].astype(object)
            out[c] = values.where(values.notna(), None)
    return out


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
    runs = snapshot.runs
    return {(str(t), str(r)): str(c) for t, r, c in runs[["task", "run_id", "code_id"]].itertuples(index=False) if c}
