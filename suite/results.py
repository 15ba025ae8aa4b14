"""The results store: one folder per run, append-only metrics, atomic checkpoints and summary.

Layout: `<out>/runs/<task>/<run_id>/` with
- `spec.json`      the canonical spec plus the resolved task and optimizer configs;
- `metrics.jsonl`  one JSON object per line: step, split, name, value, wall (seconds into the run);
- `steps.parquet`  the instruments' per-optimizer-step telemetry (split "optim"; suite/step_log.py),
                   kept apart because as JSON lines it was nearly all of a run's bytes;
- `checkpoint.pt`  the latest checkpoint (model, optimizer, schedule, data position, RNG states);
- `summary.json`   written last, atomically: its presence is what makes a run complete.

A checkpoint records how long metrics.jsonl (and the step log) was when it was taken; resuming
truncates them back to that length, so lines logged after the checkpoint by a killed process are
not duplicated.

A store may be shared, copied or planted (docs/architecture.md#trust-boundaries), so a checkpoint
is data, never code: it holds tensors and plain Python data only (plus numpy arrays of numbers,
`CHECKPOINT_GLOBALS`), is checked for that when it is written, and is loaded with a weights-only
unpickler. One that cannot be loaded (truncated, empty, random bytes, or naming anything else, such
as a planted pickle) is set aside as `checkpoint.pt.corrupt-<time>`, saying so in one line, and the
run starts over. A state holding anything else (a third-party optimizer that keeps Python objects
in its state) is not checkpointed, saying so once: the run completes, but an interruption restarts it. A failed write removes its temporary file and leaves the previous checkpoint as it
was; a full disk is one line (`StoreWriteError`), not a traceback.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spam_bench.suite.config import json_ready
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.faults import maybe_crash
from spam_bench.suite.step_log import SPLIT as STEP_SPLIT
from spam_bench.suite.step_log import StepLog, position_problem, read_steps

SUMMARY, SPEC, METRICS, CHECKPOINT = "summary.json", "spec.json", "metrics.jsonl", "checkpoint.pt"


class StoreWriteError(ConfigError):
    """Writing the results store failed (a full disk, a quota, permissions): one line, exit status 2,
    and the file being written is as it was before (its temporary file removed)."""

    def __str__(self) -> str:
        return f"{self.field}: {self.allowed} writing {self.value}"


# torch.save to a path reports a failed write (a full disk) only as this, without errno (torch's
# caffe2/serialize/inline_container.cc: "PytorchStreamWriter failed writing file ...", "unexpected pos").
_TORCH_WRITE_FAILURE = re.compile(r"PytorchStreamWriter failed|file write failed|unexpected pos|inline_container")


def _write_error(err: BaseException, path: Path) -> StoreWriteError | None:
    """The one-line error for a failed write of `path`, or None if `err` is not a write failure."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreWriteError("out", str(path), "no space left on device")
    if isinstance(err, OSError) and err.errno is not None:
        return StoreWriteError("out", str(path), err.strerror or os.strerror(err.errno))
    if isinstance(err, RuntimeError) and _TORCH_WRITE_FAILURE.search(str(err)):
        return StoreWriteError("out", str(path), "no space left on device (or another write failure)")
    return None


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Remove temporary files of writes that never finished (`.<name>.tmp-<pid>`, e.g. of a process
    killed mid-checkpoint): called by the run's lock holder, when no other writer can be alive."""
    removed = []
    if run_dir.is_dir():
        for path in run_dir.glob(".*.tmp-*"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write all of `data` or nothing: a temporary file, fsync'ed, renamed over `path`. A failure
    removes the temporary file; a full disk becomes `StoreWriteError`."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        failure = _write_error(err, path)
        if failure is not None:
            raise failure from err
        raise


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


# --- checkpoints: tensors and plain data only ---
# Besides tensors and plain Python data, a checkpoint holds numpy arrays of numbers (numpy's RNG
# state, telemetry records, SB3's observations), so a weights-only load must be allowed to rebuild
# them: the array constructor and numeric dtypes only. Object, string and structured dtypes stay
# refused (an object array's elements would be arbitrary pickles). This is the allowlist the PyTorch
# documentation describes for numpy in checkpoints (torch.load, "weights_only"; add_safe_globals),
# plus `bytes`, which pickle's protocol 2 calls to make an empty bytes object (an empty array's data).
_NUMERIC_DTYPES = tuple(sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}, key=lambda t: t.__name__))
CHECKPOINT_GLOBALS: list[Any] = [np.ndarray, np.dtype, np.empty(0).__reduce__()[0], *_NUMERIC_DTYPES, bytes]
_PLAIN_LEAVES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    torch.dtype,
    torch.device,
    torch.Size,
    torch.layout,
    torch.memory_format,
)


def _not_plain(value: Any, where: str = "state") -> str | None:
    """Where `value` holds something a weights-only load would refuse, and what; None if nothing."""
    kind = type(value)
    if kind in _PLAIN_LEAVES or kind in (torch.Tensor, torch.nn.Parameter):
        return None
    if kind is np.ndarray:
        return None if type(value.dtype) in _NUMERIC_DTYPES else f"{where} (a numpy array of dtype {value.dtype})"
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            problem = _not_plain(key, f"{where} key {key!r}") or _not_plain(item, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    if kind in (list, tuple, set):
        for i, item in enumerate(value):
            problem = _not_plain(item, f"{where}[{i}]")
            if problem:
                return problem
        return None
    return f"{where} (a {kind.__module__}.{kind.__qualname__})"


def _load_failure(err: BaseException, path: Path) -> str:
    """Why a checkpoint could not be loaded, in a few words."""
    if path.stat().st_size == 0:
        return "it is empty"
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"but got <class '([^']+)'>", text)
    if found:
        return f"it holds {found[1]}, which a checkpoint may not (it could run code)"
    if "WeightsUnpickler error" in text or "Weights only load failed" in text:
        return "not a checkpoint this suite wrote (refused by the weights-only load)"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"truncated or not a checkpoint: {type(err).__name__}{': ' + first[:120] if first else ''}"


def _resume_point_problem(state: Any, metrics_size: int, step_rows: int) -> str | None:
    """Why a loaded checkpoint cannot be resumed from, or None."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a checkpoint"
    position, wall = state.get("_metrics_bytes"), state.get("_wall")
    if type(position) is not int or not 0 <= position <= metrics_size:
        return f"its metrics position {position!r} is not within metrics.jsonl ({metrics_size} bytes)"
    if not isinstance(wall, int | float) or isinstance(wall, bool) or not math.isfinite(wall) or wall < 0:
        return f"its wall time {wall!r} is not a duration"
    return position_problem(state.get("_steps"), step_rows)


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

    def completed(self, task: str, run_id: str) -> bool:
        """Whether that run is complete in this store (a store on object storage asks the remote side)."""
        return self.is_complete(self.run_dir(task, run_id))

    def where(self, path: Path) -> str:
        """How to name `path` of this store to a user (a store on object storage names its URL)."""
        return str(path)

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


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr)


class RunRecorder:
    """What a task reports to: metrics, checkpoints and the final summary of one run folder."""

    # Set by the lifecycle (suite/lifecycle.py): where one-line notices go, a check, before each
    # checkpoint, that this process still holds the run's lock (suite/lock.py), and what follows each
    # checkpoint written (a store on object storage uploads the run's files: suite/object_store.py).
    say: Callable[[str], None] = staticmethod(_stderr_line)
    # Files in the run folder that others append to as the run goes (the gradient telemetry's raw
    # coordinate record, suite/spikes.py), set by the run context: each checkpoint records their
    # sizes, and a checkpoint whose file is now shorter (lost or cut) is set aside like a damaged one,
    # instead of a resume padding the missing rows with zeros.
    sidecars: tuple[str, ...] = ()
    write_guard: Callable[[], None] | None = None
    after_checkpoint: Callable[[], None] | None = None
    _unsaved_said = False  # "not checkpointing" is said once per run

    def __init__(self, run_dir: Path, spec_record: Mapping[str, Any], sinks: Iterable[Any] = ()):
        """`sinks` get a copy of every `log` and of the summary (experiment trackers, suite/tracking.py:
        objects with a `name`, `log(step, split, metrics)` and `finish(summary)`). The files here stay
        the source of truth: a sink that raises is dropped after its first failure, named once on
        stderr, and the run goes on."""
        self.dir = Path(run_dir)
        self.sinks = list(sinks)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / SPEC).exists():
            atomic_write_json(self.dir / SPEC, spec_record)
        self.wall_offset = 0.0  # seconds of earlier (interrupted) attempts, restored from the checkpoint
        self._t0 = time.perf_counter()
        self._metrics = open(self.dir / METRICS, "a+b")  # noqa: SIM115 - held open for the run, closed in finish()/close()
        self._steps = StepLog(self.dir)

    @property
    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self._t0

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if split == STEP_SPLIT:
            self._steps.append(step, metrics)
        else:
            wall = round(self.wall, 4)
            lines = b"".join(
                (
                    json.dumps({"step": step, "split": split, "name": k, "value": _finite(float(v)), "wall": wall})
                    + "\n"
                ).encode()
                for k, v in metrics.items()
            )
            self._metrics.write(lines)
            self._metrics.flush()
        for sink in list(self.sinks):
            try:
                sink.log(step, split, metrics)
            except (Exception, SystemExit) as err:  # a tracker never fails the run, nor slows it with retries
                self.sinks.remove(sink)
                reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
                print(f"tracking: {getattr(sink, 'name', type(sink).__name__)} disabled: {reason}", file=sys.stderr)
        maybe_crash(step, self.dir)

    def save_checkpoint(self, state: dict[str, Any], step: int | None = None) -> None:
        """Write the checkpoint atomically (temporary file, fsync, rename).

        `step` says how far the run is (announced by recorders that report progress, e.g. to Tune).
        `state` must be tensors and plain data (`CHECKPOINT_GLOBALS`). A state holding anything else
        is not written, rather than written into a checkpoint no resume could load: the run goes on
        from its previous checkpoint (or from scratch) if interrupted, and says so, once, naming the
        object and its place in the state. A failed write removes its temporary file and leaves the
        previous checkpoint in place."""
        if self.write_guard is not None:
            self.write_guard()
        self._metrics.flush()
        state = dict(
            state,
            _metrics_bytes=self._metrics.tell(),
            _steps=self._steps.position(),
            _wall=self.wall,
            _sidecars={name: self._size(name) for name in self.sidecars},
        )
        problem = _not_plain(state)
        if problem is None:
            problem = self._write_checkpoint(state)
            if problem is None and self.after_checkpoint is not None:
                self.after_checkpoint()
        if problem is not None and not self._unsaved_said:
            self._unsaved_said = True
            self.say(
                f"run {self.dir.name}: not checkpointing (an interrupted run will not resume from here): the "
                f"checkpoint's {problem} is neither a tensor nor plain data, which a weights-only load refuses"
            )

    def _size(self, name: str) -> int:
        path = self.dir / name
        return path.stat().st_size if path.exists() else 0

    def _write_checkpoint(self, state: dict[str, Any]) -> str | None:
        """Write `state` atomically; None, or what pickling made of it that a weights-only load refuses."""
        path = self.dir / CHECKPOINT
        tmp = _tmp_path(path)
        try:
            with open(tmp, "wb") as fh:  # a file object: a failed write raises OSError with its errno
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
                refused = torch.serialization.get_unsafe_globals_in_checkpoint(tmp)  # reads the pickle only
            if refused:  # what the walk over the state cannot see (how its objects pickle)
                tmp.unlink()
                return f"state (which pickles to {', '.join(refused)})"
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            failure = _write_error(err, path)
            if failure is not None:
                raise failure from err
            raise
        return None

    def _read_checkpoint(self, path: Path) -> dict[str, Any] | None:
        """The checkpoint at `path`, or None after setting aside one that cannot be resumed from."""
        metrics_size = self._metrics.seek(0, os.SEEK_END)
        try:
            with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
                state = torch.load(path, map_location="cpu", weights_only=True)
            reason = _resume_point_problem(state, metrics_size, self._steps.size()) or self._sidecar_problem(state)
        except (OSError, MemoryError):
            raise  # the file could not be read, which says nothing about its content
        except Exception as err:  # whatever a damaged or hostile file makes torch raise
            reason = _load_failure(err, path)
        if reason is None:
            return state
        aside = path.with_name(f"{CHECKPOINT}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        if aside.exists():
            aside = aside.with_name(f"{aside.name}-{os.getpid()}")
        os.replace(path, aside)
        self.say(f"run {self.dir.name}: {CHECKPOINT} is unusable ({reason}); set aside as {aside.name}, starting over")
        return None

    def _sidecar_problem(self, state: dict[str, Any]) -> str | None:
        """Why the appended files the checkpoint counts on are not all there, or None. A checkpoint
        from before sizes were recorded has none to check."""
        sizes = state.get("_sidecars")
        if sizes is None:
            return None
        if not isinstance(sizes, dict):
            return f"its side-file sizes {sizes!r} are not a mapping"
        for name, size in sizes.items():
            if type(size) is not int or size < 0:
                return f"its size of {name} {size!r} is not a byte count"
            if self._size(str(name)) < size:
                return f"{name} holds {self._size(str(name))} bytes, fewer than the {size} it had at the checkpoint"
        return None

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None: start from scratch (the metrics logged so far are dropped).

        Loaded with torch.load(weights_only=True): a checkpoint is data and never runs code. One that
        cannot be resumed from is set aside (`_read_checkpoint`) instead of wedging every later attempt."""
        path = self.dir / CHECKPOINT
        state = self._read_checkpoint(path) if path.exists() else None
        if state is None:
            # No checkpoint: nothing logged so far can be trusted to continue from.
            self._metrics.truncate(0)
            self._steps.restore(None)
            return None
        self._metrics.truncate(state["_metrics_bytes"])
        self._steps.restore(state["_steps"])
        self._metrics.seek(0, os.SEEK_END)
        self.wall_offset = state["_wall"]
        self._t0 = time.perf_counter()
        return state

    def finish(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        self._metrics.flush()
        self._metrics.close()
        self._steps.finish(atomic_write_bytes)  # before the summary: a complete run has its steps.parquet
        record = dict(summary, wall_time_s=round(self.wall, 3))
        atomic_write_json(self.dir / SUMMARY, record)
        for sink in self.sinks:  # after the summary is safe on disk; their time is not the run's
            try:
                sink.finish(record)
            except (Exception, SystemExit) as err:
                reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
                print(f"tracking: {getattr(sink, 'name', type(sink).__name__)} disabled: {reason}", file=sys.stderr)
        self.sinks = []
        return record

    def close(self) -> None:
        if not self._metrics.closed:
            self._metrics.close()
        self._steps.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every metric record of a run: metrics.jsonl's lines, then the per-step telemetry of a
    completed run (steps.parquet)."""
    with open(Path(run_dir) / METRICS) as fh:
        lines = [json.loads(line) for line in fh if line.strip()]
    return lines + read_steps(run_dir)


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)
