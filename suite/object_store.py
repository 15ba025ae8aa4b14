"""A results store on object storage (`--out s3://bucket/prefix`, `gs://...`), mirrored through a local
staging folder.

Why a mirror: everything that writes a run (append-only metrics, the raw step and sample logs, atomic
checkpoints, the run lock) is written for a POSIX folder, and object storage has no append, no rename
and no exclusive create of files. So a store on object storage is used as an ordinary local
`RunStore` rooted in a *staging* folder (`$SPAMBENCH_STAGING`, else `<data cache>/staging`, then
`<hash of the URL and endpoint>/store`), and this module moves whole files between the two at fixed
points of a run's lifecycle (suite/lifecycle.py):

- reuse: a run is complete when the object `<url>/runs/<task>/<run_id>/summary.json` exists. Only that
  object is pulled, to check that the run was made by the current code; nothing is trained.
- start, holding the run's lock: the staged run folder is made a copy of the remote one, so a partial
  run (its checkpoint, metrics and raw records) resumes on any machine exactly as it would locally;
  a run made by other code is set aside remotely as well, under `<url>/superseded/`.
- after each checkpoint (`RunRecorder.after_checkpoint`): the files that changed go up, the checkpoint
  last. A checkpoint records how long metrics.jsonl and the raw records were, and every object is
  replaced whole, so a crash between two uploads leaves a remote checkpoint pointing within the remote
  files: the resume truncates them back, as it does locally.
- end: every file of the complete run goes up and `summary.json` last, one object put: an object
  appears whole or not at all, so its presence still makes a run complete. Then the remote
  resume-only files are deleted (unless keep_checkpoint).

The layout under `<url>` is the local one (`runs/`, `superseded/`, `report/`, and Tune's `ray/`).
Remote names are data from a store anyone with write access may have planted: only plain file and
folder names are ever mirrored (never `..`, never a path), and checkpoints are still loaded weights-only.

Locking. On one machine, the local lock of the staged folder (suite/lock.py) keeps one writer per run.
Across machines, on s3:// the run's lock is the object `<run folder>/.lock`, created only if absent
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

What is slower than a local store: each checkpoint uploads every file that grew, whole (object storage
has no append), a resume downloads the run folder, and a report downloads what it reads of every
complete run (then only what changed: a staged file of the same size and modification time is kept).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spam_bench.suite.errors import ConfigError
from spam_bench.suite.lock import LOCK, RunInProgress, RunLockLost, _pid_alive
from spam_bench.suite.paths import is_url, out_root, staging_root
from spam_bench.suite.results import CHECKPOINT, METRICS, SPEC, SUMMARY, RunStore
from spam_bench.suite.step_log import FINAL as STEPS_FILE

SCHEMES = ("s3", "gs", "gcs")  # pyarrow filesystems; s3 alone has the cross-machine lock
ALLOWED = "a local directory, or object storage as s3://bucket/prefix or gs://bucket/prefix"
REPORT_FILES = (SUMMARY, SPEC, METRICS, STEPS_FILE)  # what reports/summary.py reads of a run
CHECK_TIMEOUT_S = 30.0  # the longest `open_store` waits for the service to answer
HEARTBEAT_S = 15.0  # how often the holder rewrites its lock object
STALE_AFTER_S = 120.0  # a lock object not rewritten for this long belongs to a dead (or frozen) process
_POLL_S = 1.0
_IN_MEMORY = 64 << 20  # files up to this size are uploaded from memory: one write, never half an object
_CHUNK = 8 << 20
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_NAME = re.compile(r"^[^/\\\x00-\x1f]+$")


class ObjectStoreError(ConfigError):
    """A request to object storage failed mid-run (a network error, a permission): one line, exit 2."""

    def __str__(self) -> str:
        return f"{self.field}: {self.allowed} ({self.value})"


def _brief(err: BaseException) -> str:
    return " ".join(f"{err}".split())[:240] or type(err).__name__


def _safe_name(name: str) -> bool:
    """A plain file or folder name: nothing a planted key could use to write outside the staging folder."""
    return bool(_NAME.match(name)) and name not in (".", "..")


@dataclass(frozen=True)
class Location:
    """A store's place in object storage: `scheme://bucket/prefix`, normalized."""

    url: str
    scheme: str
    bucket: str
    prefix: str

    def path(self, rel: str = "") -> str:
        """The path pyarrow's filesystems take: bucket/prefix/rel."""
        return "/".join(p for p in (self.bucket, self.prefix, rel.strip("/")) if p and p != ".")

    def key(self, rel: str) -> str:
        """The object key (without the bucket) of `rel` under the prefix."""
        return "/".join(p for p in (self.prefix, rel.strip("/")) if p and p != ".")


def parse_url(raw: str, field: str = "out") -> Location:
    """`raw` as a Location, or ConfigError(field): checked without any request."""

    def refuse(why: str) -> ConfigError:
        return ConfigError(field, raw, f"{ALLOWED} ({why})")

    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise refuse(f"{scheme}:// is not a scheme spam-bench stores to")
    if parts.query or parts.fragment or raw.rstrip().endswith(("?", "#")):
        raise refuse("no ?query or #fragment: an S3 endpoint is set with AWS_ENDPOINT_URL")
    if not _BUCKET.match(parts.netloc):
        raise refuse(f"a bucket name of 3 to 222 lowercase letters, digits, '.', '_' or '-', not {parts.netloc!r}")
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if not all(_safe_name(s) and s.strip() == s for s in segments):
        raise refuse("a prefix of plain names separated by single '/', without '.' or '..'")
    prefix = "/".join(segments)
    return Location(f"{scheme}://{parts.netloc}{'/' + prefix if prefix else ''}", scheme, parts.netloc, prefix)


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def _bounded(call: Callable[[], Any], seconds: float) -> Any:
    """`call()`, or TimeoutError after `seconds` (a credential lookup or a silent host can hang in C++)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # handed to the caller
            box["error"] = err

    thread = threading.Thread(target=target, name="object-store-check", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _filesystem(loc: Location) -> Any:
    """A pyarrow filesystem for the bucket. On s3 with bounded timeouts and retries (pyarrow's defaults
    retry an unreachable endpoint for many seconds); endpoint, region and credentials from the
    AWS_* environment, as boto3 and Ray Tune read them."""
    import pyarrow.fs as pafs

    if loc.scheme != "s3":
        return pafs.FileSystem.from_uri(f"{loc.scheme}://{loc.bucket}")[0]
    options: dict[str, Any] = {
        "connect_timeout": 5.0,
        "request_timeout": 60.0,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if _endpoint():
        options["endpoint_override"] = _endpoint()
    elif not region:
        region = pafs.resolve_s3_region(loc.bucket)
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def _s3_client(loc: Location, field: str) -> Any:
    """boto3's S3 client, for the conditional writes of the run lock; refused in one line without
    boto3 or without credentials."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            field,
            loc.url,
            "s3:// with boto3 installed, for the cross-machine run lock: pip install 'spam-bench[cloud]'",
        ) from None
    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise ConfigError(
            field,
            loc.url,
            "object storage with credentials (none found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        )
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    return session.client("s3", config=config)


def _connect(loc: Location, field: str) -> Any:
    """The filesystem, checked to reach an existing bucket (and not to find an object at the prefix)."""
    from pyarrow.fs import FileType

    def refuse(why: str) -> ConfigError:
        return ConfigError(field, loc.url, f"object storage this machine can reach ({why})")

    try:
        fs = _bounded(lambda: _filesystem(loc), CHECK_TIMEOUT_S)
        bucket, base = _bounded(lambda: fs.get_file_info([loc.bucket, loc.path()]), CHECK_TIMEOUT_S)
    except TimeoutError as err:
        raise refuse(f"{_endpoint() or loc.scheme}: {err}") from None
    except Exception as err:  # pyarrow raises OSError, ArrowException, ValueError for these
        if "not found" in str(err).lower() or "NoSuchBucket" in str(err):
            raise ConfigError(
                field, loc.url, f"an existing bucket ({loc.bucket} does not exist: create it first)"
            ) from None
        raise refuse(_brief(err)) from None
    if bucket.type == FileType.NotFound:
        where = f" at {_endpoint()}" if loc.scheme == "s3" and _endpoint() else ""
        raise ConfigError(field, loc.url, f"an existing bucket ({loc.bucket} does not exist{where}: create it first)")
    if loc.prefix and base.type == FileType.File:
        raise ConfigError(field, loc.url, f"a prefix to store under ({loc.prefix} is an object)")
    return fs


def open_store(explicit: str | os.PathLike[str] | None = None) -> RunStore:
    """`--out` (else $SPAMBENCH_OUT, else ./out) as a store: a local `RunStore(out_root(...))`, or for a
    URL an `ObjectStore`, checked (syntax, bucket, reachability, credentials) before anything runs."""
    raw = os.fspath(explicit) if explicit else os.environ.get("SPAMBENCH_OUT")
    if not raw or not is_url(raw):
        return RunStore(out_root(explicit))
    return ObjectStore.open(raw, "out" if explicit else "SPAMBENCH_OUT")


class ObjectStore(RunStore):
    """A `RunStore` on a local staging folder that mirrors `<url>` (see the module docstring)."""

    def __init__(self, location: Location, fs: Any, staging: Path, client: Any = None):
        super().__init__(staging / "store")
        self.location, self.url, self.fs, self.client = location, location.url, fs, client
        self.staging = staging
        self.view = staging / "view"  # what a report reads, mirrored (`pull_for_report`)

    @classmethod
    def open(cls, raw: str, field: str = "out") -> ObjectStore:
        loc = parse_url(raw, field)
        client = _s3_client(loc, field) if loc.scheme == "s3" else None
        fs = _connect(loc, field)
        digest = hashlib.sha256(f"{loc.url}\n{_endpoint() if loc.scheme == 's3' else ''}".encode()).hexdigest()[:16]
        return cls(loc, fs, staging_root() / digest, client)

    # --- names ---
    def _rel(self, local: Path) -> str:
        for base in (self.root, self.view):
            if Path(local).is_relative_to(base):
                return Path(local).relative_to(base).as_posix()
        raise ValueError(f"{local} is not in the staging folder of {self.url}")

    def _remote(self, local: Path) -> str:
        return self.location.path(self._rel(local))

    def where(self, path: Path) -> str:
        try:
            rel = self._rel(path)
        except ValueError:
            return str(path)
        return self.url if rel == "." else f"{self.url}/{rel}"

    # --- requests ---
    @contextlib.contextmanager
    def _request(self, what: str, path: str) -> Iterator[None]:
        """Turn a failed request into one line naming the object (local errors keep their errno)."""
        try:
            yield
        except OSError as err:
            if err.errno is not None:
                raise
            raise ObjectStoreError("out", f"{self.location.scheme}://{path}", f"{what} failed: {_brief(err)}") from None

    def _info(self, path: str) -> Any:
        with self._request("reading", path):
            return self.fs.get_file_info(path)

    def _list(self, path: str, recursive: bool = False) -> dict[str, Any]:
        """The files under `path`, by their path relative to it."""
        from pyarrow.fs import FileSelector, FileType

        with self._request("listing", path):
            infos = self.fs.get_file_info(FileSelector(path, recursive=recursive, allow_not_found=True))
        return {i.path[len(path) + 1 :]: i for i in infos if i.type == FileType.File and i.path.startswith(path + "/")}

    def _download(self, info: Any, local: Path) -> None:
        """The object `info` names -> `local`, whole or not at all, with the object's modification time."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
        try:
            with (
                self._request("downloading", info.path),
                self.fs.open_input_stream(info.path) as src,
                open(tmp, "wb") as dst,
            ):
                shutil.copyfileobj(src, dst, _CHUNK)
            if info.mtime is not None:
                stamp = info.mtime.timestamp()
                os.utime(tmp, (stamp, stamp))
            os.replace(tmp, local)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _upload(self, local: Path, path: str, stamp: bool = False) -> None:
        """`local` -> one object. `stamp`: give the local file the object's modification time, so that
        a later pull on this machine knows it is already that object (`_same`) and skips it: worth a
        request for a checkpoint, not for the files that grow at every step."""
        with self._request("uploading", path):
            with open(local, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                with self.fs.open_output_stream(path) as dst:
                    if size <= _IN_MEMORY:
                        dst.write(src.read())
                    else:
                        shutil.copyfileobj(src, dst, _CHUNK)
            info = self.fs.get_file_info(path) if stamp else None
        if info is not None and info.mtime is not None and info.size == size:
            os.utime(local, (info.mtime.timestamp(), info.mtime.timestamp()))

    def _delete(self, path: str) -> None:
        """Delete one object if it is there. On s3 with boto3: pyarrow would leave an empty "folder"
        marker object in its place."""
        from pyarrow.fs import FileType

        if self.client is not None:
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                self.client.delete_object(Bucket=self.location.bucket, Key=path[len(self.location.bucket) + 1 :])
            except (BotoCoreError, ClientError) as err:
                raise ObjectStoreError("out", f"s3://{path}", f"deleting failed: {_brief(err)}") from None
            return
        with self._request("deleting", path):
            if self.fs.get_file_info(path).type == FileType.File:
                self.fs.delete_file(path)

    @staticmethod
    def _same(local: Path, info: Any) -> bool:
        try:
            st = local.stat()
        except FileNotFoundError:
            return False
        return st.st_size == info.size and info.mtime is not None and int(st.st_mtime) == int(info.mtime.timestamp())

    def _mirror(self, files: dict[str, Any], folder: Path) -> None:
        """Make `folder` hold exactly `files` (name -> remote info; plain names only, no dot-files)."""
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if path.is_file() and not path.name.startswith(".") and path.name not in files:
                path.unlink()
        for name, info in files.items():
            if not self._same(folder / name, info):
                self._download(info, folder / name)

    # --- the run lifecycle (suite/lifecycle.py) ---
    def completed(self, task: str, run_id: str) -> bool:
        from pyarrow.fs import FileType

        return bool(self._info(self._remote(self.run_dir(task, run_id) / SUMMARY)).type == FileType.File)

    def pull_summary(self, run_dir: Path) -> bool:
        """Stage the run's remote summary.json; False (and nothing staged) when it has none."""
        from pyarrow.fs import FileType

        info = self._info(self._remote(run_dir / SUMMARY))
        if info.type != FileType.File:
            return False
        if not self._same(run_dir / SUMMARY, info):
            self._download(info, run_dir / SUMMARY)
        return True

    def pull_run(self, run_dir: Path) -> None:
        """Make the staged run folder a copy of the remote one (lock and temporary files aside)."""
        files = {n: i for n, i in self._list(self._remote(run_dir)).items() if _safe_name(n) and not n.startswith(".")}
        self._mirror(files, run_dir)

    def pull_files(self, run_dir: Path, names: Iterable[str]) -> None:
        """Stage these files of the run, where the remote folder has them."""
        from pyarrow.fs import FileType

        for name in names:
            info = self._info(self._remote(run_dir / name))
            if info.type == FileType.File and not self._same(run_dir / name, info):
                self._download(info, run_dir / name)

    def push(self, run_dir: Path, names: Iterable[str]) -> None:
        """Upload these staged files of the run, in this order."""
        for name in names:
            self._upload(run_dir / name, self._remote(run_dir / name), stamp=name == CHECKPOINT)

    def delete(self, run_dir: Path, names: Iterable[str]) -> None:
        for name in names:
            self._delete(self._remote(run_dir / name))

    def _move_remote(self, src: str, dst: str) -> None:
        """Every object under `src` (the lock aside) to the same name under `dst`: copy, then delete."""
        files = {n: i for n, i in self._list(src, recursive=True).items() if n != LOCK}
        with self._request("moving", src):
            for name, info in files.items():
                self.fs.copy_file(info.path, f"{dst}/{name}")
        for info in files.values():
            self._delete(info.path)

    def set_aside(self, run_dir: Path, label: str) -> Path:
        """As a local store does, and the remote folder too, to the same place under `<url>/superseded/`."""
        kept = super().set_aside(run_dir, label)
        target = self._remote(kept)
        if self._list(target, recursive=True):
            target = f"{target}-{uuid.uuid4().hex[:8]}"
        self._move_remote(self._remote(run_dir), target)
        return kept

    def discard(self, run_dir: Path) -> None:  # type: ignore[override]  # a staticmethod locally
        """Remove the run folder here and remotely (--force); the lock object stays, held by us."""
        src = self._remote(run_dir)
        for name, info in self._list(src, recursive=True).items():
            if name != LOCK:
                self._delete(info.path)
        RunStore.discard(run_dir)

    def link(
        self, run_dir: Path, run_id: str, *, wait: float | None, say: Callable[[str], None], pull: bool = True
    ) -> RemoteRun:
        """Take the run's remote lock (s3) and stage its remote folder (`pull`): what `execute` holds
        while it runs."""
        return RemoteRun(self, run_dir, run_id, wait=wait, say=say, pull=pull)

    # --- whole trees: reports, tuning records ---
    def pull_tree(self, rel: str, into: Path | None = None) -> Path:
        """Mirror `<url>/<rel>` (files of plain names, any depth) into `into` (default: the staged store)."""
        local = (self.root if into is None else into) / rel
        files = self._list(self.location.path(rel), recursive=True)
        keep: set[Path] = set()
        for name, info in files.items():
            parts = name.split("/")
            if all(_safe_name(p) and not p.startswith(".") for p in parts):
                target = local.joinpath(*parts)
                keep.add(target)
                if not self._same(target, info):
                    self._download(info, target)
        if local.is_dir():
            for path in local.rglob("*"):
                if path.is_file() and path not in keep and not path.name.startswith("."):
                    path.unlink()
        return local

    def pull_for_report(self) -> Path:
        """Mirror into the view folder what a report reads of every remotely complete run (summary,
        spec, metrics, steps.parquet) and the tuning records; returns the view's root, a local store."""
        files = self._list(self.location.path("runs"), recursive=True)
        runs: dict[tuple[str, str], dict[str, Any]] = {}
        for name, info in files.items():
            parts = name.split("/")
            if len(parts) == 3 and all(_safe_name(p) for p in parts) and parts[2] in REPORT_FILES:
                runs.setdefault((parts[0], parts[1]), {})[parts[2]] = info
        complete = {run: found for run, found in runs.items() if SUMMARY in found}
        root = self.view / "runs"
        if root.is_dir():
            for folder in root.glob("*/*"):
                if folder.is_dir() and (folder.parent.name, folder.name) not in complete:
                    shutil.rmtree(folder)
        for (task, run_id), found in complete.items():
            self._mirror(found, root / task / run_id)
        self.pull_tree("tuning/best", into=self.view)
        return self.view

    def push_report(self, report_dir: Path) -> str:
        """Upload a report folder written in the view (its files; a filtered report's own folder
        inside it is left alone), remove remote files it no longer has; returns where it is."""
        target = self._remote(report_dir)
        local = {p.name: p for p in report_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
        for name, path in sorted(local.items()):
            self._upload(path, f"{target}/{name}")
        for name, info in self._list(target).items():
            if name not in local:
                self._delete(info.path)
        return self.where(report_dir)


class RemoteRun:
    """One run folder's link to its remote copy while this process holds the run (suite/lifecycle.py):
    the remote lock, the staging of the remote folder, and the uploads after each checkpoint and at the end."""

    def __init__(
        self,
        store: ObjectStore,
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


__all__ = ["Location", "ObjectLock", "ObjectStore", "RemoteRun", "open_store", "parse_url"]
