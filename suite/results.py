"""The results store: one folder per run, append-only metrics, atomic checkpoints and summary.

Layout: `<out>/runs/<task>/<run_id>/` with
- `spec.json`      the canonical spec plus the resolved task and optimizer configs;
- `metrics.jsonl`  one JSON object per line: step, split, name, value, wall (seconds into the run);
- `checkpoint.pt`  the latest checkpoint (model, optimizer, schedule, data position, RNG states);
- `summary.json`   written last, atomically: its presence is what makes a run complete.

A checkpoint records how long metrics.jsonl was when it was taken; resuming truncates the file
back to that length, so lines logged after the checkpoint by a killed process are not duplicated.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from spam_bench.suite.config import json_ready
from spam_bench.suite.faults import maybe_crash

SUMMARY, SPEC, METRICS, CHECKPOINT = "summary.json", "spec.json", "metrics.jsonl", "checkpoint.pt"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_finite(json_ready(obj)), indent=2, sort_keys=True) + "\n").encode())


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class RunStore:
    """The root of all run folders (`out/runs`)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def run_dir(self, task: str, run_id: str) -> Path:
        return self.root / "runs" / task / run_id

    def complete_runs(self) -> Iterator[Path]:
        for summary in sorted((self.root / "runs").glob(f"*/*/{SUMMARY}")):
            yield summary.parent

    @staticmethod
    def is_complete(run_dir: Path) -> bool:
        return (run_dir / SUMMARY).exists()

    def set_aside(self, run_dir: Path, label: str) -> Path:
        """Move a run folder made by other code to `<out>/superseded/<task>/<run_id>-<label>`, where
        no report of current results looks, and return where it went."""
        target = self.root / "superseded" / run_dir.parent.name / f"{run_dir.name}-{label}"
        if target.exists():
            target = target.with_name(f"{target.name}-{os.getpid()}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(run_dir, target)
        return target

    @staticmethod
    def discard(run_dir: Path) -> None:
        """Remove a run folder (for --force) by renaming it away first, so it vanishes at once."""
        if run_dir.exists():
            trash = run_dir.with_name(f".{run_dir.name}.discard-{os.getpid()}")
            os.replace(run_dir, trash)
            shutil.rmtree(trash)


class RunRecorder:
    """What a task reports to: metrics, checkpoints and the final summary of one run folder."""

    def __init__(self, run_dir: Path, spec_record: Mapping[str, Any]):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / SPEC).exists():
            atomic_write_json(self.dir / SPEC, spec_record)
        self.wall_offset = 0.0  # seconds of earlier (interrupted) attempts, restored from the checkpoint
        self._t0 = time.perf_counter()
        self._metrics = open(self.dir / METRICS, "a+b")  # noqa: SIM115 - held open for the run, closed in finish()/close()

    @property
    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self._t0

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        wall = round(self.wall, 4)
        lines = b"".join(
            (
                json.dumps({"step": step, "split": split, "name": k, "value": _finite(float(v)), "wall": wall}) + "\n"
            ).encode()
            for k, v in metrics.items()
        )
        self._metrics.write(lines)
        self._metrics.flush()
        maybe_crash(step, self.dir)

    def save_checkpoint(self, state: dict[str, Any], step: int | None = None) -> None:
        """`step` says how far the run is (announced by recorders that report progress, e.g. to Tune)."""
        self._metrics.flush()
        state = dict(state, _metrics_bytes=self._metrics.tell(), _wall=self.wall)
        tmp = self.dir / f".{CHECKPOINT}.tmp-{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, self.dir / CHECKPOINT)

    def load_checkpoint(self) -> dict[str, Any] | None:
        path = self.dir / CHECKPOINT
        if not path.exists():
            # No checkpoint: nothing logged so far can be trusted to continue from.
            self._metrics.truncate(0)
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        self._metrics.truncate(state["_metrics_bytes"])
        self._metrics.seek(0, os.SEEK_END)
        self.wall_offset = state["_wall"]
        self._t0 = time.perf_counter()
        return state

    def finish(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        self._metrics.flush()
        self._metrics.close()
        record = dict(summary, wall_time_s=round(self.wall, 3))
        atomic_write_json(self.dir / SUMMARY, record)
        return record

    def close(self) -> None:
        if not self._metrics.closed:
            self._metrics.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    with open(Path(run_dir) / METRICS) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)
