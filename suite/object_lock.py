"""The cross-machine lock of one run on S3: the object `<run folder>/.lock`.

Why: on one machine, the local lock of the staged folder (suite/lock.py) keeps one writer per run;
across machines sharing a store on object storage, only the service can say who holds a run.
On s3:// the run's lock is the object `<run folder>/.lock`, created only if absent
(PutObject with `If-None-Match: *`), naming its holder (host, pid, start, a random token) and rewritten
every `HEARTBEAT_S` by its holder with `If-Match` on its own ETag, so a holder never rewrites a lock it
lost. Its age is measured on the service's clock (the response's `Date` minus the object's
`Last-Modified`): hosts need no synchronized clocks. A lock not rewritten for `STALE_AFTER_S`, or held
by a process gone from this host, is taken over with `If-Match` on the stale ETag (of two processes
taking over, one wins), saying so; the holder that lost it learns so at its next heartbeat or
checkpoint and stops without writing. This needs an S3 service with conditional writes (AWS S3, MinIO,
moto); one without them is refused in one line. On other schemes (gs://) pyarrow offers no conditional
create, so there is only the local lock: then two machines must not run the same run id at once (one
sweep at a time per store), which nothing checks.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spam_bench.suite.errors import ConfigError
from spam_bench.suite.lock import RunInProgress, RunLockLost, _pid_alive
from spam_bench.suite.object_location import ObjectStoreError, _brief

HEARTBEAT_S = 15.0  # how often the holder rewrites its lock object
STALE_AFTER_S = 120.0  # a lock object not rewritten for this long belongs to a dead (or frozen) process
_POLL_S = 1.0


@dataclass(frozen=True)
class RemoteHolder:
    """What a lock object says about its holder, and its age on the service's clock."""

    pid: int | None
    host: str | None
    started: float | None
    etag: str
    age: float

    def dead_because(self, stale_after: float) -> str | None:
        if self.age > stale_after:
            return f"its heartbeat is {self.age:.0f} s old (over {stale_after:.0f} s)"
        if self.host == socket.gethostname() and self.pid is not None and not _pid_alive(self.pid):
            return "that process no longer exists"
        return None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        host = f" on host {self.host}" if self.host else ""
        since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}" if self.started else ""
        return f"{who}{host}{since} (heartbeat {max(0.0, self.age):.0f} s ago)"


def _code(err: BaseException) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


_CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
_GONE = ("NoSuchKey", "404", "NotFound")


class ObjectLock:
    """The cross-machine lock of one run on S3 (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        url: str,
        run_id: str,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ):
        self.client, self.bucket, self.key, self.url, self.run_id = client, bucket, key, url, run_id
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        started = time.time()
        identity = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": started,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "token": uuid.uuid4().hex,
            "run_id": run_id,
        }
        self.body = json.dumps(identity).encode()
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _failed(self, err: BaseException, what: str) -> ConfigError:
        if _code(err) in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
            return ConfigError(
                "out",
                self.url,
                "an S3 service with conditional writes (If-None-Match, If-Match), which the run lock needs",
            )
        return ObjectStoreError("out", self.url, f"{what} the run lock failed: {_brief(err)}")

    def _put(self, **condition: str) -> bool:
        """Write our lock object under `condition`; False when the condition does not hold."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self.body, **condition)
        except ClientError as err:
            if _code(err) in _CONFLICT or _code(err) in _GONE:
                return False
            raise self._failed(err, "writing") from None
        except BotoCoreError as err:
            raise self._failed(err, "writing") from None
        self.etag = reply["ETag"]
        return True

    def _read(self) -> RemoteHolder | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key)
            raw = reply["Body"].read(4096)
        except ClientError as err:
            if _code(err) in _GONE:
                return None
            raise self._failed(err, "reading") from None
        except BotoCoreError as err:
            raise self._failed(err, "reading") from None
        try:
            data = json.loads(raw)
            data = data if isinstance(data, dict) else {}
        except ValueError:
            data = {}
        date = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        pid = data.get("pid")
        started = data.get("started")
        return RemoteHolder(
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            host=data.get("host") if isinstance(data.get("host"), str) else None,
            started=float(started) if isinstance(started, int | float) and not isinstance(started, bool) else None,
            etag=reply["ETag"],
            age=now - reply["LastModified"].timestamp(),
        )

    def acquire(self, *, wait: float | None = None, say: Callable[[str], None] = lambda line: None) -> ObjectLock:
        """Create the lock object, or take over a dead holder's; otherwise wait up to `wait` seconds
        (None: not at all) and refuse in one line naming the holder (`RunInProgress`)."""
        deadline = time.monotonic() + (wait if wait is not None else 0.0)
        while True:
            if self._put(IfNoneMatch="*"):
                break
            holder = self._read()
            if holder is None:
                continue  # released between our attempt and our look
            reason = holder.dead_because(self.stale_after_s)
            if reason is not None:
                if self._put(IfMatch=holder.etag):
                    say(f"run {self.run_id}: taking over the lock of {holder.describe()} at {self.url}: {reason}")
                    break
                continue
            if time.monotonic() >= deadline:
                raise RunInProgress(
                    "run",
                    self.run_id,
                    f"{holder.describe()}, lock {self.url}; wait for it to finish, or stop that process "
                    f"(a lock whose heartbeat stops for {self.stale_after_s:.0f} s is taken over)",
                )
            time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._beat, name=f"object-lock-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and self.lost is None:
            try:
                if not self._put(IfMatch=self.etag or "*"):
                    self.lost = "its lock object was taken over or removed"
            except ConfigError:
                pass  # a transient error: try again at the next beat (a long outage makes the lock stale)

    def verify(self) -> None:
        """Refuse to write on if the lock object is no longer ours (asked of the service)."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self.lost is None:
            try:
                etag = self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"]
                if etag != self.etag:
                    self.lost = "its lock object was taken over by another process"
            except ClientError as err:
                if _code(err) in _GONE:
                    self.lost = "its lock object was removed"
            except BotoCoreError:
                pass  # unreachable just now: the upload that follows fails in one line anyway
        if self.lost is not None:
            raise RunLockLost(
                "run",
                self.run_id,
                f"another process took this run over while this one was unresponsive ({self.lost}, {self.url}); "
                "stopping without writing",
            )

    def release(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.etag is None or self.lost is not None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as err:
            if _code(err) in ("NotImplemented", "InvalidArgument", "InvalidRequest"):  # no conditional delete
                with contextlib.suppress(ClientError, BotoCoreError):
                    if self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"] == self.etag:
                        self.client.delete_object(Bucket=self.bucket, Key=self.key)
        except BotoCoreError:
            pass  # left behind: it goes stale and is taken over after STALE_AFTER_S
        self.etag = None
