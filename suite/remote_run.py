"""One run's link to its remote copy while this process holds the run (suite/lifecycle.py).

Why a module of its own: the store (suite/object_store.py) moves files; *when* they move, and in
which order, is a run's business: its remote lock is taken (suite/object_lock.py) and its remote folder
staged at the start, the files that changed go up after each checkpoint (the checkpoint last: it
records how long the others were, so the remote checkpoint never points past the remote files), and
at the end every file goes up with `summary.json` last, what makes the run complete remotely.
The store is named here by what a link needs of it (`MirroredStore`), not by its class, so that this
module does not import suite/object_store.py, which creates links (`ObjectStore.link`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from spam_bench.suite.lock import LOCK
from spam_bench.suite.object_location import Location, ObjectStoreError
from spam_bench.suite.object_lock import ObjectLock
from spam_bench.suite.results import CHECKPOINT, SUMMARY


class MirroredStore(Protocol):
    """What a run's link uses of its store: an `ObjectStore` (suite/object_store.py)."""

    location: Location
    client: Any

    def _rel(self, local: Path) -> str: ...

    def where(self, path: Path) -> str: ...

    def pull_run(self, run_dir: Path) -> None: ...

    def push(self, run_dir: Path, names: Iterable[str]) -> None: ...

    def delete(self, run_dir: Path, names: Iterable[str]) -> None: ...


class RemoteRun:
    """One run folder's link to its remote copy while this process holds the run (suite/lifecycle.py):
    the remote lock, the staging of the remote folder, and the uploads after each checkpoint and at the end."""

    def __init__(
        self,
        store: MirroredStore,
        run_dir: Path,
        run_id: str,
        *,
        wait: float | None,
        say: Callable[[str], None],
        pull: bool = True,
    ):
        self.store, self.dir, self.say = store, run_dir, say
        self.lock: ObjectLock | None = None
        if store.client is not None:
            key = store.location.key(f"{store._rel(run_dir)}/{LOCK}")
            self.lock = ObjectLock(store.client, store.location.bucket, key, f"{store.where(run_dir)}/{LOCK}", run_id)
            self.lock.acquire(wait=wait, say=say)
        try:
            if pull:
                store.pull_run(run_dir)
        except BaseException:
            self.release()
            raise
        self._pushed = self._signatures() if pull else {}

    def _signatures(self) -> dict[str, tuple[int, int]]:
        """(size, mtime) of each file of the staged folder: what is already remote after a pull or push."""
        found = {}
        for path in self.dir.iterdir():
            if path.is_file() and not path.name.startswith("."):
                st = path.stat()
                found[path.name] = (st.st_size, st.st_mtime_ns)
        return found

    def _push_changed(self, names: list[str]) -> None:
        """Upload those of `names` that changed since their last upload, in order."""
        now = self._signatures()
        for name in names:
            if name in now and self._pushed.get(name) != now[name]:
                self.store.push(self.dir, [name])
                st = (self.dir / name).stat()  # a checkpoint's upload gave it the object's time
                self._pushed[name] = (st.st_size, st.st_mtime_ns)

    def verify(self) -> None:
        """Refuse to write on once another process has taken the run's remote lock over."""
        if self.lock is not None:
            self.lock.verify()

    def after_checkpoint(self) -> None:
        """What changed since the last upload, the checkpoint last (it records how long the others were).

        A failed upload does not stop the run: it says so, uploads nothing after it (the remote
        checkpoint must never point past the remote files) and is tried again at the next checkpoint.
        What is not uploaded is only at risk if this machine is lost; the end of the run must upload."""
        names = sorted(p for p in self._signatures() if p not in (SUMMARY, CHECKPOINT))
        try:
            self._push_changed([*names, CHECKPOINT])
        except ObjectStoreError as err:
            self.say(f"run {self.dir.name}: checkpoint not uploaded, trying again at the next one: {err}")

    def finish(self, resume_only: Iterable[str], keep_checkpoint: bool) -> None:
        """After the local summary: every other file up, then summary.json (one object: what makes the
        run complete remotely), then the remote resume-only files deleted unless kept."""
        drop = set() if keep_checkpoint else set(resume_only)
        names = sorted(p for p in self._signatures() if p not in drop and p != SUMMARY)
        self._push_changed(names)
        self.store.push(self.dir, [SUMMARY])
        self.store.delete(self.dir, sorted(drop))

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
