"""Gradient-spike measurements: online telemetry per parameter role, the paper's offline Gradient
Spike Score, loss-spike detection, recovery tracking and seeded spike injection. The run's
`Instruments` (suite/instruments.py) combine them around every optimizer step.

Telemetry observes the gradient the optimizer is about to see. Per coarse role (embedding,
attention, mlp, norm, output, other) and step it reports the gradient norm, max |g|, and the ratio
of the norm to its running (bias-corrected EMA) average; a ratio above `spike_ratio` is a spike
event. For the paper's GSS (docs/spam.md#gradient-spike-score) it records a fixed, seeded sample of coordinates per
tensor at every step; `gss()` is computed offline from that record, exactly as defined:
GSS(g_i) = |g_i| / ((1/(T+1)) * sum_j |g_j|), a spike when GSS > 50.

The whole record is needed only once, at the end of the run (each coordinate's mean |g| over the
whole run is the GSS denominator). What the run folder keeps (`grad_samples.npz`, `GssRecord`) is
what answers every later question in a bounded size: the exact per-coordinate mean |g|, every entry
with GSS above `KEEP_GSS` (so spike counts can be recomputed at any threshold from there up), and an
evenly thinned trace of at most `TRACE_ROWS` steps for figures. A tiny rl run's full record is about
60 MB (19,200 steps x 792 coordinates); kept whole, it was most of the store.
"""

from __future__ import annotations

import io
import json
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.results import atomic_write_bytes

COARSE_ROLE = {
    "embedding": "embedding",
    "attn_q": "attention",
    "attn_k": "attention",
    "attn_v": "attention",
    "attn_o": "attention",
    "mlp": "mlp",
    "norm": "norm",
    "output": "output",
    "bias": "other",
    "other": "other",
}
GSS_THRESHOLD = 50.0
SAMPLES_FILE, SAMPLES_INDEX, SAMPLES_RAW = "grad_samples.npz", "grad_samples.json", "grad_samples.f32"
KEEP_GSS = 10.0  # entries above this GSS are kept whole: spike counts at any threshold >= it stay exact
# The thinned trace kept for figures and notebooks. It is most of a run folder's bytes (rows x sampled
# coordinates of float32, which barely compress), so it is short: 128 evenly spaced steps (512 made a tiny
# llm run 5 MB, of which 4.7 MB was this trace). Per-step gradient norms stay whole in steps.parquet.
TRACE_ROWS = 128


class GradientTelemetry:
    """Per-role gradient statistics each step, and a sampled-coordinate record for the GSS.

    With `samples_path`, the record is appended to that file (raw float32 rows) as it is taken, and a
    checkpoint holds only its length, the way metrics.jsonl is handled: keeping the whole record in
    every checkpoint made checkpoint I/O grow with the square of the run length. Without it (unit
    tests, silent replicas) the rows stay in memory.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        info: ModelInfo,
        *,
        spike_ratio: float,
        samples_per_tensor: int,
        seed: int,
        ema: float = 0.99,
        samples_path: Path | None = None,
    ):
        self.spike_ratio, self.ema = spike_ratio, ema
        self.roles: dict[str, list[torch.nn.Parameter]] = {}
        self.sampled: list[tuple[str, str, torch.nn.Parameter, torch.Tensor]] = []
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            role = COARSE_ROLE[info.role_of(name)]
            self.roles.setdefault(role, []).append(p)
            k = min(samples_per_tensor, p.numel())
            if k:
                idx = torch.randperm(p.numel(), generator=gen)[:k].sort().values
                self.sampled.append((name, role, p, idx.to(p.device)))
        self.avg = {role: 0.0 for role in self.roles}
        self.steps_seen = 0
        self.samples_path = samples_path
        self.rows = 0  # rows recorded so far (the file may hold more, written after the last checkpoint)
        self._memory: list[np.ndarray] = []
        self._file: Any = None

    @torch.no_grad()
    def observe(self) -> dict[str, float]:
        out: dict[str, float] = {}
        self.steps_seen += 1
        correction = 1.0 - self.ema ** (self.steps_seen - 1)
        for role, params in self.roles.items():
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                continue
            norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))
            biggest = float(torch.stack(torch._foreach_norm(grads, float("inf"))).max())
            ratio = norm / (self.avg[role] / correction) if correction > 0 and self.avg[role] > 0 else 1.0
            self.avg[role] = self.ema * self.avg[role] + (1 - self.ema) * norm
            out.update(
                {
                    f"grad_norm/{role}": norm,
                    f"grad_max/{role}": biggest,
                    f"grad_ratio/{role}": ratio,
                    f"grad_spike/{role}": float(ratio > self.spike_ratio),
                }
            )
        if self.sampled:
            row = [
                (p.grad.reshape(-1)[idx] if p.grad is not None else torch.zeros(len(idx), device=idx.device)).float()
                for _, _, p, idx in self.sampled
            ]
            self._append(torch.cat(row).cpu().numpy())
        return out

    def _append(self, row: np.ndarray) -> None:
        if self.samples_path is None:
            self._memory.append(row)
        else:
            if self._file is None:  # drop rows a killed attempt wrote after its last checkpoint
                self._file = open(self.samples_path, "a+b")  # noqa: SIM115 - held for the run, closed in save()
                self._file.truncate(self.rows * row.size * 4)
                self._file.seek(0, 2)
            self._file.write(row.astype(np.float32).tobytes())
        self.rows += 1

    def trace(self) -> np.ndarray:
        """The coordinate record so far: steps x sampled coordinates (float32)."""
        width = len(self.column_roles())
        if self.samples_path is None:
            return np.stack(self._memory) if self._memory else np.zeros((0, width), np.float32)
        if self._file is not None:
            self._file.flush()
        if not self.samples_path.exists() or width == 0:
            return np.zeros((0, width), np.float32)
        return np.fromfile(self.samples_path, dtype=np.float32, count=self.rows * width).reshape(self.rows, width)

    def state_dict(self) -> dict[str, Any]:
        if self._file is not None:
            self._file.flush()
        memory = np.stack(self._memory) if self._memory else None
        return {"avg": dict(self.avg), "steps_seen": self.steps_seen, "rows": self.rows, "records": memory}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.avg, self.steps_seen, self.rows = dict(state["avg"]), state["steps_seen"], state["rows"]
        self._memory = list(state["records"]) if state["records"] is not None else []

    def column_roles(self) -> list[str]:
        return [role for _, role, _, idx in self.sampled for _ in range(len(idx))]

    def save(self, run_dir: Path) -> GssRecord:
        """Write the bounded record (`GssRecord`) of the full trace, and which tensor/role each column
        is. The raw record stays until the summary is written (suite/lifecycle.py removes it with the
        checkpoint, which it belongs to): a crash in between resumes."""
        record = GssRecord.of(self.trace())
        record.save(run_dir / SAMPLES_FILE)
        if self._file is not None:
            self._file.close()
            self._file = None
        index = [{"name": n, "role": r, "indices": idx.cpu().tolist()} for n, r, _, idx in self.sampled]
        (run_dir / SAMPLES_INDEX).write_text(json.dumps(index))
        return record


@dataclass(frozen=True)
class GssRecord:
    """What a run keeps of its coordinate record: exact GSS statistics in a bounded size."""

    rows: int  # T: steps recorded
    mean_abs: np.ndarray  # per column: mean |g| over all T steps (float64), the GSS denominator
    spike_step: np.ndarray  # entries with GSS > KEEP_GSS: step index (0-based row),
    spike_col: np.ndarray  # column,
    spike_value: np.ndarray  # and the gradient value g (float32)
    trace_steps: np.ndarray  # the thinned trace: which rows (at most TRACE_ROWS, evenly spaced),
    trace: np.ndarray  # and their values (rows x columns, float32)

    @classmethod
    def of(cls, trace: np.ndarray) -> GssRecord:
        trace = np.asarray(trace, dtype=np.float32)
        rows, cols = trace.shape if trace.ndim == 2 else (0, 0)
        mean_abs = np.abs(trace).mean(axis=0, dtype=np.float64) if rows else np.zeros(cols)
        step, col = np.nonzero(gss(trace) > KEEP_GSS) if rows else (np.zeros(0, int), np.zeros(0, int))
        kept: np.ndarray = np.unique(np.linspace(0, rows - 1, min(rows, TRACE_ROWS)).round().astype(np.int64))
        return cls(
            rows=rows,
            mean_abs=mean_abs,
            spike_step=step.astype(np.int32),
            spike_col=col.astype(np.int32),
            spike_value=trace[step, col] if rows else np.zeros(0, np.float32),
            trace_steps=np.asarray(kept, dtype=np.int32),
            trace=trace[kept] if rows else np.zeros((0, cols), np.float32),
        )

    def gss_of_spikes(self) -> np.ndarray:
        """GSS of each kept entry (all of them above KEEP_GSS)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(self.spike_value.astype(np.float64)) / self.mean_abs[self.spike_col]

    def spike_counts(self, column_roles: Iterable[str], threshold: float = GSS_THRESHOLD) -> dict[str, int]:
        """`gss_spike_counts` of the full trace, for any threshold >= KEEP_GSS."""
        if threshold < KEEP_GSS:
            raise ValueError(f"threshold {threshold} is below {KEEP_GSS}, the lowest GSS the record keeps")
        per_column = np.bincount(self.spike_col[self.gss_of_spikes() > threshold], minlength=len(self.mean_abs))
        counts: dict[str, int] = {}
        for role, n in zip(column_roles, per_column):
            counts[role] = counts.get(role, 0) + int(n)
        return counts

    def save(self, path: Path) -> None:
        """Atomically, like every file of the store (a full disk is one line, nothing half-written)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, rows=np.int64(self.rows), **{k: getattr(self, k) for k in _ARRAYS})
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> GssRecord:
        """Numbers only: np.load with allow_pickle=False never runs code from a store."""
        with np.load(path, allow_pickle=False) as data:
            return cls(rows=int(data["rows"]), **{k: data[k] for k in _ARRAYS})


_ARRAYS = ("mean_abs", "spike_step", "spike_col", "spike_value", "trace_steps", "trace")


def gss(trace: np.ndarray) -> np.ndarray:
    """Gradient Spike Score per step and coordinate: |g_i| over the mean |g| of its whole trajectory."""
    magnitude = np.abs(np.asarray(trace, dtype=np.float64))
    mean = magnitude.mean(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, magnitude / mean, 0.0)


def gss_spike_counts(
    trace: np.ndarray, column_roles: Iterable[str], threshold: float = GSS_THRESHOLD
) -> dict[str, int]:
    """Number of (step, coordinate) pairs with GSS > threshold, per role."""
    spikes = (gss(trace) > threshold).sum(axis=0)
    counts: dict[str, int] = {}
    for role, n in zip(column_roles, spikes):
        counts[role] = counts.get(role, 0) + int(n)
    return counts


class LossSpikeDetector:
    """A step whose loss exceeds `factor` x the median of the previous `window` losses."""

    def __init__(self, factor: float, window: int = 100):
        self.factor = factor
        self.history: deque[float] = deque(maxlen=window)

    def observe(self, loss: float) -> bool:
        spike = len(self.history) >= 10 and loss > self.factor * statistics.median(self.history)
        self.history.append(loss)
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.extend(state["history"])


class SpikeInjector:
    """Multiply the gradient by `factor` on a seeded set of steps and a seeded fraction of entries.

    Which steps and entries depend only on (seed, step, parameter order), never on the optimizer or
    the gradient values, so every optimizer receives exactly the same faults.
    """

    def __init__(self, *, seed: int, step_fraction: float, entry_fraction: float, factor: float):
        self.seed, self.step_fraction, self.entry_fraction, self.factor = seed, step_fraction, entry_fraction, factor

    def is_spike_step(self, step: int) -> bool:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return bool(torch.rand((), generator=gen) < self.step_fraction)

    @torch.no_grad()
    def apply(self, step: int, params: Iterable[torch.nn.Parameter]) -> bool:
        if not self.is_spike_step(step):
            return False
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 7_919)
        for p in params:
            if p.grad is None:
                continue
            hit = (torch.rand(p.grad.shape, generator=gen) < self.entry_fraction).to(p.grad.device)
            p.grad[hit] *= self.factor
        return True


class RecoveryTracker:
    """Steps an injected spike costs: from the spike until the loss is back within 5% of before."""

    def __init__(self, tolerance: float = 0.05, baseline_window: int = 10):
        self.tolerance, self.window = tolerance, baseline_window
        self.recent: deque[float] = deque(maxlen=baseline_window)
        self.open: list[tuple[int, float]] = []  # (spike step, loss to return to)
        self.recovered: list[int] = []

    def observe(self, step: int, loss: float, injected: bool) -> None:
        if injected and self.recent:
            self.open.append((step, statistics.median(self.recent)))
        still_open = []
        for start, target in self.open:
            if step > start and loss <= (1 + self.tolerance) * target:
                self.recovered.append(step - start)
            else:
                still_open.append((start, target))
        self.open = still_open
        self.recent.append(loss)

    def summary(self) -> dict[str, float | int | None]:
        return {
            "spikes_tracked": len(self.recovered) + len(self.open),
            "spikes_unrecovered": len(self.open),
            "recovery_steps_mean": float(np.mean(self.recovered)) if self.recovered else None,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "open": list(self.open), "recovered": list(self.recovered)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent.extend(state["recent"])
        self.open, self.recovered = list(state["open"]), list(state["recovered"])
