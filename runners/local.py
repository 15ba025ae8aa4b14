"""Run specs in this process, one after another.

This is the one code path that executes a run; the Ray runner calls it inside its trials, so the
same spec gives the same numbers whichever runner ran it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from spam_bench.suite.environment import describe
from spam_bench.suite.errors import NOT_APPLICABLE, NotApplicable
from spam_bench.suite.resolve import ResolvedRun
from spam_bench.suite.results import SUMMARY, RunRecorder, RunStore, read_json


def execute(run: ResolvedRun, store: RunStore, *, force: bool = False,
            recorder_cls: type[RunRecorder] = RunRecorder) -> tuple[dict[str, Any], Path, bool]:
    """Run (or resume) one spec; returns (summary, run folder, whether it was already complete)."""
    run_dir = store.run_dir(run.spec.task, run.spec.run_id)
    if force:
        RunStore.discard(run_dir)
    elif RunStore.is_complete(run_dir):
        return read_json(run_dir / SUMMARY), run_dir, True
    recorder = recorder_cls(run_dir, run.record())
    try:
        try:
            result = run.task.run(run, recorder)
        except NotApplicable as err:
            result = {"status": NOT_APPLICABLE, "reason": str(err), "value": None}
        summary = {
            "run_id": run.spec.run_id,
            **run.spec.canonical(),
            "primary_metric": run.task.primary_metric,
            "direction": run.task.direction,
            **result,
            **describe(run.spec.device),
        }
        return recorder.finish(summary), run_dir, False
    finally:
        recorder.close()
