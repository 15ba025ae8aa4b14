"""One writer per run folder: a lock file created atomically, naming its holder, kept alive by a heartbeat.

Two processes on one run id (two `spambench run` of the same spec, or a sweep listing one optimizer
twice) would otherwise append every metric line twice, or truncate each other's lines on resume.
`execute` (suite/lifecycle.py) therefore holds `RunLock` around everything that writes the run folder.

Why a lock *file* and not `fcntl`/`flock`: those are not reliable on the network filesystems a
results store shared by a Ray cluster lives on (NFS implementations differ, and a lock held by a
dead client may linger), while creating a file with `O_CREAT | O_EXCL` is atomic on local
filesystems and on NFSv3 and later (open(2), "O_EXCL"). The file holds the holder's identity (pid,
host, start time and a random token, as JSON), and its mtime is the heartbeat: a daemon thread
touches it every `HEARTBEAT_S` seconds while the run is in progress.

A lock whose holder is dead is detected and taken over, saying so:
- on the same host, when its pid no longer exists;
- on any host, when its heartbeat is older than `STALE_AFTER_S` seconds (a killed, crashed or
  suspended process; hosts sharing a store should keep their clocks in sync, e.g. with NTP).
A holder that was only suspended (a laptop asleep for longer than that) finds its lock gone when it
wakes: `verify()` then refuses its next checkpoint or summary instead of writing beside the new holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from spam_bench.suite.errors import ConfigError

LOCK = ".lock"
HEARTBEAT_S = 5.0  # how often the holder touches the lock file
STALE_AFTER_S = 60.0  # a lock untouched for this long belongs to a dead (or frozen) process
_POLL_S = 0.5  # how often a waiting process looks again


class RunInProgress(ConfigError):
    """Another live process holds the run: one line naming it; the CLI exits with status 2."""

    def __str__(self) -> str:
        return f"{self.field} {self.value} is in progress: {self.allowed}"


class RunLockLost(ConfigError):
    """This process's lock was taken over while it was frozen: it must stop writing the run folder."""

    def __str__(self) -> str:
        return f"{self.field} {self.value}: {self.allowed}"


@dataclass(frozen=True)
class Holder:
    """What a lock file says about its holder, and when it last showed a sign of life."""

    pid: int | None
    host: str | None
    started: float | None
    token: str | None
    heartbeat: float  # the lock file's mtime (seconds since the epoch)
    file_id: tuple[int, int]  # (inode, mtime in ns): tells apart files that hold no token yet

    @classmethod
    def read(cls, path: Path) -> Holder | None:
        """The holder of the lock at `path`, or None when there is no lock file (any more)."""
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                raw = fh.read(4096)
        except FileNotFoundError:
            return None
        try:
            data: dict[str, Any] = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError(raw)
        except ValueError:
            data = {}  # being written right now (it is created empty, then filled), or damaged
        pid = data.get("pid")
        return cls(
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            host=data.get("host") if isinstance(data.get("host"), str) else None,
            started=data.get("started") if isinstance(data.get("started"), int | float) else None,
            token=data.get("token") if isinstance(data.get("token"), str) else None,
            heartbeat=st.st_mtime,
            file_id=(st.st_ino, st.st_mtime_ns),
        )

    def same_lock(self, other: Holder) -> bool:
        """Whether both describe one lock file (by token; by inode and mtime if it holds none yet)."""
        if self.token or other.token:
            return self.token == other.token
        return self.file_id == other.file_id

    def dead_because(self, now: float, stale_after: float) -> str | None:
        """Why this holder is certainly gone, or None while it may be alive."""
        age = now - self.heartbeat
        if age > stale_after:
            return f"its heartbeat is {age:.0f} s old (over {stale_after:.0f} s)"
        if self.host == socket.gethostname() and self.pid is not None and not _pid_alive(self.pid):
            return "that process no longer exists"
        return None

    def describe(self, now: float) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        host = f" on host {self.host}" if self.host else ""
        since = f" since {_clock(self.started)}" if self.started is not None else ""
        return f"{who}{host}{since} (heartbeat {max(0.0, now - self.heartbeat):.0f} s ago)"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would send Ctrl-C there: let the heartbeat decide
    try:
        os.kill(pid, 0)  # signal 0: existence and permission check only (kill(2))
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _clock(t: float) -> str:
    """12:00:01 today, else the date too."""
    fmt = (
        "%H:%M:%S" if time.strftime("%Y-%m-%d", time.localtime(t)) == time.strftime("%Y-%m-%d") else "%Y-%m-%d %H:%M:%S"
    )
    return time.strftime(fmt, time.localtime(t))


class RunLock:
    """The lock of one run folder. Use as a context manager; released on exit, exceptions included.

    `wait`: None refuses at once when another live process holds the run; a number of seconds waits
    that long for it to finish (math.inf: as long as it takes) before refusing.
    """

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        *,
        wait: float | None = None,
        say: Callable[[str], None] | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ):
        self.dir, self.run_id, self.wait = Path(run_dir), run_id, wait
        self.path = self.dir / LOCK
        self._say = say or (lambda line: None)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._holding = False  # our lock file (with our token) is in place, as far as we know
        self._stop = threading.Event()
        self._mutex = threading.Lock()  # the heartbeat's look-and-touch against retake()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None  # set by the heartbeat when the lock file is no longer ours

    # --- taking it ---
    def acquire(self) -> RunLock:
        deadline = time.monotonic() + (self.wait if self.wait is not None else 0.0)
        while True:
            if self._try_create():
                self._start_heartbeat()
                return self
            holder = Holder.read(self.path)
            if holder is None:
                continue  # released between our attempt and our look: try again at once
            now = time.time()
            reason = holder.dead_because(now, self.stale_after_s)
            if reason is not None:
                if self._break(holder):
                    self._say(f"run {self.run_id}: taking over the lock of {holder.describe(now)}: {reason}")
                continue
            if time.monotonic() >= deadline:
                raise RunInProgress(
                    "run",
                    self.run_id,
                    f"{holder.describe(now)}; wait for it to finish, or stop that process "
                    f"(a lock whose heartbeat stops for {self.stale_after_s:.0f} s is taken over)",
                )
            time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    def retake(self) -> None:
        """Take the lock again after the folder it was in was moved away (set aside or discarded):
        at once, or refuse if another process took the run in the meantime."""
        with self._mutex:
            self._holding = False
            created = self._try_create()
            self.lost = None
        if not created:
            holder = Holder.read(self.path)
            now = time.time()
            raise RunInProgress(
                "run", self.run_id, f"{holder.describe(now) if holder else 'another process'}; it took the run over"
            )

    def _try_create(self) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            identity = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": self.started,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "token": self.token,
                "run_id": self.run_id,
            }
            os.write(fd, json.dumps(identity).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._holding = True
        return True

    def _break(self, holder: Holder) -> bool:
        """Remove the stale lock `holder` described; False if someone else got there first.

        Renaming it to a private name first means that of two processes breaking the same stale
        lock, only one succeeds; if what we renamed turns out to be a fresh lock created after we
        judged the old one (another breaker was faster), it is put back with link(2), which never
        overwrites. Lock files are told apart by their token, not their inode: a file system may give
        a new file the inode number of one just removed."""
        grave = self.path.with_name(f"{LOCK}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return False
        try:
            renamed = Holder.read(grave)
            if renamed is not None and not renamed.same_lock(holder):
                with contextlib.suppress(FileExistsError):
                    os.link(grave, self.path)
                return False
            return renamed is not None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(grave)

    # --- holding it ---
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"run-lock-{self.run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._mutex:
                if not self._holding:
                    continue  # between a set-aside and the retake, or released
                try:
                    holder = Holder.read(self.path)
                    if holder is None:
                        self.lost = "its lock file was removed"
                    elif holder.token != self.token:
                        self.lost = "its lock file was replaced by another process's"
                    else:
                        os.utime(self.path)
                except OSError:
                    pass  # a transient error of a network filesystem: try again at the next beat

    def held(self) -> bool:
        if not self._holding or self.lost is not None:
            return False
        try:
            holder = Holder.read(self.path)
        except OSError:
            return False
        return holder is not None and holder.token == self.token

    def verify(self) -> None:
        """Refuse to write on if another process has taken the run over (we were frozen too long)."""
        if not self.held():
            raise RunLockLost(
                "run",
                self.run_id,
                f"another process took this run over while this one was unresponsive ({self.lost or 'lock gone'}); "
                "stopping without writing",
            )

    # --- letting it go ---
    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.held():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._holding = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
