"""Per-optimizer-step telemetry, stored compactly beside metrics.jsonl.

The instruments log about ten numbers at every optimizer step (gradient norm and max |g| per role,
clipped entries, events). As JSON lines that was 98% of a run's metrics file: 16 MB for a tiny rl
run (19,200 steps), most of the store. Here each value is a 10-byte row (step int32, name uint16,
value float32) appended to `steps.bin` while the run goes; the checkpoint records how many rows
there were and a resume truncates back to it, as metrics.jsonl is. When the run completes the rows
become `steps.parquet` (and steps.bin goes with the checkpoint, unless that is kept) (columns step, name, value; about 1 MB for that rl run), which pandas,
polars or DuckDB read directly, and `read_steps` turns back into metric records.

float32 values: the telemetry is computed from float32 gradients, so nothing is lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

RAW, FINAL = "steps.bin", "steps.parquet"
SPLIT = "optim"  # the instruments' split (suite/instruments.py): the only one stored here
ROW = np.dtype([("step", "<i4"), ("name", "<u2"), ("value", "<f4")])
MAX_NAMES = int(np.iinfo(np.uint16).max) + 1


class StepLog:
    """The append-only row file of one run, and the names its rows refer to."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RAW
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self._file: BinaryIO | None = None  # opened at the first row: a run without telemetry has no file

    def _open(self) -> BinaryIO:
        if self._file is None:
            self._file = open(self.path, "a+b")  # noqa: SIM115 - held for the run, closed in finish()/close()
        return self._file

    def append(self, step: int, metrics: Mapping[str, float]) -> None:
        rows = np.empty(len(metrics), ROW)
        for i, (name, value) in enumerate(metrics.items()):
            rows[i] = (step, self._name_id(name), value)
        self._open().write(rows.tobytes())

    def _name_id(self, name: str) -> int:
        found = self._index.get(name)
        if found is None:
            if len(self.names) == MAX_NAMES:
                raise ValueError(f"more than {MAX_NAMES} distinct per-step metric names")
            found = self._index[name] = len(self.names)
            self.names.append(name)
        return found

    # --- checkpoints: the row count and the names, as plain data ---
    def position(self) -> dict[str, Any]:
        if self._file is not None:
            self._file.flush()
        return {"rows": self.size(), "names": list(self.names)}

    def size(self) -> int:
        """Rows in the file now."""
        return self.path.stat().st_size // ROW.itemsize if self.path.exists() else 0

    def restore(self, position: Mapping[str, Any] | None) -> None:
        """Back to a checkpoint's position (None: to the start), dropping rows written after it."""
        rows, names = (0, []) if position is None else (int(position["rows"]), list(position["names"]))
        if rows or self.path.exists():
            file = self._open()
            file.truncate(rows * ROW.itemsize)
            file.seek(0, os.SEEK_END)
        self.names, self._index = names, {n: i for i, n in enumerate(names)}

    def finish(self, write: Callable[[Path, bytes], None]) -> None:
        """Rows -> steps.parquet, written by `write` (the store's atomic write, suite/results.py, which
        also turns a full disk into one line). The raw file stays until the run's summary is written
        (suite/lifecycle.py removes it with the checkpoint): a crash in between resumes."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.close()
        rows = np.fromfile(self.path, dtype=ROW) if self.path.exists() else np.empty(0, ROW)
        names = pa.array(self.names, pa.string())
        table = pa.table(
            {
                "step": pa.array(rows["step"]),
                "name": pa.DictionaryArray.from_arrays(pa.array(rows["name"].astype(np.int32)), names),
                "value": pa.array(rows["value"]),
            }
        )
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        write(self.path.with_name(FINAL), buffer.getvalue().to_pybytes())

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


def position_problem(position: Any, rows_on_disk: int) -> str | None:
    """Why a checkpoint's step-log position cannot be resumed from, or None."""
    if not isinstance(position, dict):
        return f"its step-log position {position!r} is not a mapping"
    rows, names = position.get("rows"), position.get("names")
    if type(rows) is not int or not 0 <= rows <= rows_on_disk:
        return f"its step-log position {rows!r} is not within {RAW} ({rows_on_disk} rows)"
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > MAX_NAMES:
        return "its step-log names are not a list of names"
    return None


def read_steps(run_dir: Path) -> list[dict[str, Any]]:
    """A completed run's per-step telemetry as metric records (`wall` is not kept per step: None).
    Empty when the run has none (telemetry off, or a run folder from before this file existed)."""
    path = Path(run_dir) / FINAL
    if not path.exists():
        return []
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    steps = table.column("step").to_numpy()
    names = table.column("name").to_pylist()
    values = table.column("value").to_numpy()
    return [
        {"step": int(s), "split": SPLIT, "name": n, "value": float(v), "wall": None}
        for s, n, v in zip(steps, names, values)
    ]
