"""One run from start to summary: the only code path that executes a run, whichever runner calls it.

1. The run folder is looked up. A complete run is reused only if its code fingerprint is the
   current one; a complete or partial run made by other code is set aside (kept, not mixed in,
   under `<out>/superseded/`) and the run starts over, saying why in one line.
2. The suite builds a `RunContext` and calls `Task.run(ctx)` with Ctrl-C deferred to a boundary.
3. The summary is assembled here, in one place, from the spec, the task's result, the context's
   measurements (clip rule, optimizer state, telemetry), the code fingerprint and the environment,
   and written last, atomically: its presence is what makes the run complete.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.environment import describe
from spam_bench.suite.errors import NOT_APPLICABLE, ConfigError, NotApplicable
from spam_bench.suite.identity import changed_parts
from spam_bench.suite.interrupt import deferred_interrupt
from spam_bench.suite.resolve import ResolvedRun
from spam_bench.suite.results import CHECKPOINT, SPEC, SUMMARY, RunRecorder, RunStore, read_json


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _stored_code(run_dir: Path) -> dict[str, Any] | None:
    for name in (SUMMARY, SPEC):
        path = run_dir / name
        if path.exists():
            try:
                return read_json(path).get("code")
            except (OSError, ValueError):
                return None
    return None


def _set_aside_if_stale(run: ResolvedRun, store: RunStore, run_dir: Path, say: Callable[[str], None]) -> None:
    """Move a run folder made by other code out of the way, telling the user what changed."""
    if not run_dir.exists():
        return
    old, new = _stored_code(run_dir), run.code
    if old and old.get("id") == new["id"]:
        return
    kept = store.set_aside(run_dir, (old or {}).get("id") or "unversioned")
    what = "complete" if (kept / SUMMARY).exists() else "partial"
    say(
        f"re-running {run.spec.run_id}: {', '.join(changed_parts(old, new))} changed since its {what} run "
        f"(kept in {kept})"
    )


def execute(
    run: ResolvedRun,
    store: RunStore,
    *,
    force: bool = False,
    recorder_cls: type[RunRecorder] = RunRecorder,
    say: Callable[[str], None] = _say,
) -> tuple[dict[str, Any], Path, bool]:
    """Run (or resume, or reuse) one spec; returns (summary, run folder, whether it was reused)."""
    run_dir = store.run_dir(run.spec.task, run.spec.run_id)
    if force:
        RunStore.discard(run_dir)
    else:
        _set_aside_if_stale(run, store, run_dir, say)
        if RunStore.is_complete(run_dir):
            return read_json(run_dir / SUMMARY), run_dir, True
    recorder = recorder_cls(run_dir, run.record())
    ctx: RunContext | None = None
    try:
        with deferred_interrupt() as stop:
            ctx = RunContext(run, recorder, stop)
            try:
                result = run.task.run(ctx)
                outcome: dict[str, Any] = {
                    "status": result.status,
                    "value": result.value,
                    "steps": result.steps,
                    "diverged_step": result.diverged_step,
                    **result.metrics,
                }
            except NotApplicable as err:
                outcome = {"status": NOT_APPLICABLE, "reason": str(err), "value": None}
            except ConfigError:
                # Bad input only the task could see (a missing optional library, a data set smaller than
                # a batch): nothing was trained, so nothing is left behind.
                if not (run_dir / CHECKPOINT).exists():
                    recorder.close()
                    RunStore.discard(run_dir)
                raise
        summary = {
            "run_id": run.spec.run_id,
            **run.spec.canonical(),
            "primary_metric": run.task.primary_metric,
            "direction": run.task.direction,
            **(ctx.measurements() if outcome["status"] != NOT_APPLICABLE else run.clip.record()),
            **outcome,
            "code": run.code,
            **describe(run.spec.device),
        }
        return recorder.finish(summary), run_dir, False
    finally:
        if ctx is not None:
            ctx.close()
        recorder.close()


__all__ = ["TaskResult", "execute"]
