"""The per-step telemetry log: compact rows, truncated back on resume, a Parquet file at the end."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spam_bench.suite.results import atomic_write_bytes
from spam_bench.suite.step_log import FINAL, RAW, ROW, SPLIT, StepLog, position_problem, read_steps


def test_rows_are_ten_bytes_and_a_resume_drops_what_came_after_the_checkpoint(tmp_path):
    log = StepLog(tmp_path)
    log.append(1, {"grad_norm": 1.5, "grad_max/mlp": 0.25})
    saved = log.position()
    log.append(2, {"grad_norm": 2.5, "clipped/mlp": 3.0})  # a killed process wrote this after the checkpoint
    log.close()
    assert ROW.itemsize == 10 and (tmp_path / RAW).stat().st_size == 4 * 10

    resumed = StepLog(tmp_path)
    resumed.restore(saved)
    resumed.append(2, {"grad_norm": 7.0, "optimizer_reset": 1.0})
    resumed.finish(atomic_write_bytes)
    assert read_steps(tmp_path) == [
        {"step": 1, "split": SPLIT, "name": "grad_norm", "value": 1.5, "wall": None},
        {"step": 1, "split": SPLIT, "name": "grad_max/mlp", "value": 0.25, "wall": None},
        {"step": 2, "split": SPLIT, "name": "grad_norm", "value": 7.0, "wall": None},
        {"step": 2, "split": SPLIT, "name": "optimizer_reset", "value": 1.0, "wall": None},
    ]
    frame = pd.read_parquet(tmp_path / FINAL)  # readable by ordinary tools, names as a category
    assert list(frame.columns) == ["step", "name", "value"] and frame.value.dtype == np.float32


def test_a_run_without_telemetry_writes_no_raw_file_and_an_empty_table(tmp_path):
    log = StepLog(tmp_path)
    log.restore(None)
    assert not (tmp_path / RAW).exists()
    log.finish(atomic_write_bytes)
    assert read_steps(tmp_path) == []


def test_a_checkpoint_position_outside_the_file_or_not_names_is_refused():
    assert position_problem({"rows": 3, "names": ["a"]}, rows_on_disk=3) is None
    assert "not within" in position_problem({"rows": 4, "names": ["a"]}, rows_on_disk=3)
    assert "not within" in position_problem({"rows": True, "names": []}, rows_on_disk=3)
    assert "names" in position_problem({"rows": 0, "names": [1]}, rows_on_disk=0)
    assert "not a mapping" in position_problem(None, rows_on_disk=0)
