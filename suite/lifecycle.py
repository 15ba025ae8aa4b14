"""One run from start to summary: the only code path that executes a run, whichever runner calls it.

1. The run folder is looked up. A complete run is reused only if its code fingerprint is the
   current one; a complete or partial run made by other code is set aside (kept, not mixed in,
   under `<out>/superseded/`) and the run starts over, saying why in one line.
2. The suite builds a `RunContext` and calls `Task.run(ctx)` with Ctrl-C deferred to a boundary.
3. The summary is assembled here, in one place, from the spec, the task's result, the context's
   measurements (clip rule, optimizer state, telemetry), the code fingerprint and the environment,
   and written last, atomically: its presence is what makes the run complete.
4. A complete run's checkpoint (and the raw records it points into) is deleted unless
   `keep_checkpoint`: only an interrupted run needs it, and it is most of a run folder's size.

Everything that writes the run folder (setting it aside, discarding it for --force, resuming, the
summary) happens while this process holds the run's lock (suite/lock.py): a second process on the
same run id refuses in one line naming the holder, or waits for it (`wait`). Reusing a complete
run only reads, and takes no lock.

A store on object storage (suite/object_store.py) is run in a local staging folder by this same
code; its `RemoteRun` adds the remote side at four points: the reuse check (the remote summary), the
start (the remote lock, the remote folder staged), each checkpoint (uploads) and the end (uploads,
summary.json last).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spam_bench.suite.context import RunContext
from spam_bench.suite.distributed import SINGLE, World
from spam_bench.suite.environment import describe
from spam_bench.suite.errors import NOT_APPLICABLE, ConfigError, NotApplicable
from spam_bench.suite.identity import changed_parts
from spam_bench.suite.interrupt import deferred_interrupt
from spam_bench.suite.lock import LOCK, RunLock
from spam_bench.suite.object_store import ObjectStore
from spam_bench.suite.remote_run import RemoteRun
from spam_bench.suite.resolve import ResolvedRun
from spam_bench.suite.results import (
    CHECKPOINT,
    SPEC,
    SUMMARY,
    RunRecorder,
    RunStore,
    read_json,
    remove_stale_temp_files,
)
from spam_bench.suite.spikes import SAMPLES_RAW
from spam_bench.suite.step_log import RAW as STEP_LOG_RAW

# What only resuming a run needs: the checkpoint, and the raw records whose length it holds.
RESUME_ONLY = (CHECKPOINT, STEP_LOG_RAW, SAMPLES_RAW)


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


def _is_current(run: ResolvedRun, run_dir: Path) -> bool:
    old = _stored_code(run_dir)
    return old is not None and old.get("id") == run.code["id"]


def reusable(run: ResolvedRun, store: RunStore) -> bool:
    """Whether `execute` would reuse `run` from `store` without training: complete, by the current code.

    Sweeps count what is left to do with this, so that they and `spambench run` agree: a complete run
    made by other code is not "already complete", it is re-run (and set aside first, in `_locked`)."""
    run_dir = store.run_dir(run.spec.task, run.spec.run_id)
    # On object storage, complete means the remote summary exists: only it is staged to be checked.
    complete = store.pull_summary if isinstance(store, ObjectStore) else RunStore.is_complete
    return complete(run_dir) and _is_current(run, run_dir)


def _set_aside_if_stale(run: ResolvedRun, store: RunStore, run_dir: Path, say: Callable[[str], None]) -> Path | None:
    """Move a run folder made by other code out of the way, telling the user what changed; where it went."""
    if not run_dir.exists() or all(p.name == LOCK for p in run_dir.iterdir()):
        return None  # nothing there yet but (our) lock
    old, new = _stored_code(run_dir), run.code
    if old and old.get("id") == new["id"]:
        return None
    kept = store.set_aside(run_dir, (old or {}).get("id") or "unversioned")
    what = "complete" if (kept / SUMMARY).exists() else "partial"
    say(
        f"re-running {run.spec.run_id}: {', '.join(changed_parts(old, new))} changed since its {what} run "
        f"(kept in {store.where(kept)})"
    )
    return kept


def execute(
    run: ResolvedRun,
    store: RunStore,
    *,
    force: bool = False,
    recorder_cls: type[RunRecorder] = RunRecorder,
    say: Callable[[str], None] = _say,
    wait: float | None = None,
    keep_checkpoint: bool = False,
    world: World = SINGLE,
) -> tuple[dict[str, Any], Path, bool]:
    """Run (or resume, or reuse) one spec; returns (summary, run folder, whether it was reused).

    `wait`: when another live process is writing this run, None refuses at once (`RunInProgress`, a
    ConfigError: one line naming the holder, exit status 2); a number of seconds waits that long for
    it to finish first (math.inf: as long as it takes), then reuses what it completed.
    `keep_checkpoint`: keep the last checkpoint of a run that completes (to train it on later);
    a reused complete run is left as it is.
    `world`: a data-parallel run's processes (suite/distributed.py). Rank 0 does all of the above and
    tells the other ranks whether to train; they keep nothing and return rank 0's summary.
    """
    if world.active:
        world.agree("spec", json.dumps(run.spec.canonical(), sort_keys=True))
        world.agree("code fingerprint", str(run.code["id"]))
    run_dir = store.run_dir(run.spec.task, run.spec.run_id)
    if not world.is_main:
        return _follow(run, run_dir, world)
    try:
        reused = not force and reusable(run, store)
    except BaseException:
        world.broadcast("failed")
        raise
    if reused:
        world.broadcast("reused")
        return read_json(run_dir / SUMMARY), run_dir, True  # only read: no lock needed
    result = _locked(run, store, run_dir, force, recorder_cls, say, wait, keep_checkpoint, world)
    # The other ranks return once the summary is written. A failure skips this: the process exits
    # and torchrun stops the other ranks, rather than every rank waiting in mismatched collectives.
    world.barrier()
    return result


def _follow(run: ResolvedRun, run_dir: Path, world: World) -> tuple[dict[str, Any], Path, bool]:
    """A rank other than 0: train alongside rank 0 when it says so, keeping nothing."""
    decision = world.broadcast(None)
    if decision == "failed":
        raise ConfigError("nproc", world.size, "a run rank 0 could start (see rank 0's error above)")
    if decision == "train":
        with deferred_interrupt() as stop:
            ctx = RunContext(run, None, stop, world=world)
            try:
                run.task.run(ctx)
            except NotApplicable:
                pass
            finally:
                ctx.close()
    world.barrier()
    return (read_json(run_dir / SUMMARY) if RunStore.is_complete(run_dir) else {}), run_dir, decision == "reused"


def _locked(
    run: ResolvedRun,
    store: RunStore,
    run_dir: Path,
    force: bool,
    recorder_cls: type[RunRecorder],
    say: Callable[[str], None],
    wait: float | None,
    keep_checkpoint: bool,
    world: World,
) -> tuple[dict[str, Any], Path, bool]:
    """Rank 0 (or the only process): take the run's lock, tidy or set aside its folder, run it."""
    try:
        lock = RunLock(run_dir, run.spec.run_id, wait=wait, say=say).acquire()
    except BaseException:
        world.broadcast("failed")
        raise
    decision = "train"
    remote: RemoteRun | None = None
    try:
        if isinstance(store, ObjectStore):  # its remote lock taken, and (unless discarded) its folder staged
            remote = store.link(run_dir, run.spec.run_id, wait=wait, say=say, pull=not force)
        # The folder may only be moved or cleaned by its lock holder. Moving it (set aside, discard)
        # takes our lock file along, so the lock is taken again at the same path.
        if force:
            store.discard(run_dir)
            lock.retake()
        else:
            remove_stale_temp_files(run_dir)  # left by writers that died: no writer is alive now
            kept = _set_aside_if_stale(run, store, run_dir, say)
            if kept is not None:
                lock.retake()
                (kept / LOCK).unlink(missing_ok=True)  # our old lock file went along with the folder
            if RunStore.is_complete(run_dir):  # completed by the holder we waited for
                decision = "reused"
    except BaseException:
        world.broadcast("failed")
        if remote is not None:
            remote.release()
        lock.release()
        raise
    world.broadcast(decision)
    try:
        if decision == "reused":
            return read_json(run_dir / SUMMARY), run_dir, True
        return _run(run, run_dir, recorder_cls, say, lock, keep_checkpoint, world, remote)
    finally:
        if remote is not None:
            remote.release()
        lock.release()


def _run(
    run: ResolvedRun,
    run_dir: Path,
    recorder_cls: type[RunRecorder],
    say: Callable[[str], None],
    lock: RunLock,
    keep_checkpoint: bool,
    world: World,
    remote: RemoteRun | None = None,
) -> tuple[dict[str, Any], Path, bool]:
    """Resume or start the run in `run_dir`, whose lock this process holds."""
    recorder = recorder_cls(run_dir, run.record())
    recorder.say = say  # says which checkpoint was unreadable and set aside
    recorder.sidecars = (SAMPLES_RAW,)  # a checkpoint whose raw coordinate record was cut is set aside
    recorder.write_guard = lock.verify  # no checkpoint once another process has taken the run over
    if remote is not None:
        recorder.write_guard = _both(lock.verify, remote.verify)
        recorder.after_checkpoint = remote.after_checkpoint
    ctx: RunContext | None = None
    try:
        with deferred_interrupt() as stop:
            ctx = RunContext(run, recorder, stop, world=world)
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
        lock.verify()  # the summary makes the run complete: only its lock holder may write it
        if remote is not None:
            remote.verify()
        record = recorder.finish(summary)
        if remote is not None:  # before the local files go: a crash in between resumes from them
            remote.finish(RESUME_ONLY, keep_checkpoint)
        if not keep_checkpoint:  # after the summary: a crash in between leaves a complete run, never a lost one
            for name in RESUME_ONLY:
                (run_dir / name).unlink(missing_ok=True)
        return record, run_dir, False
    finally:
        if ctx is not None:
            ctx.close()
        recorder.close()


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def check() -> None:
        first()
        second()

    return check


__all__ = ["execute"]
