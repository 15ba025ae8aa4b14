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

Locking: on one machine, the local lock of the staged folder (suite/lock.py) keeps one writer per run;
across machines, on s3://, the run's lock is an object created and rewritten with conditional writes
(suite/object_lock.py). The modules of a store on object storage, each with one job:
- suite/object_location.py: the URL and its checks, the filesystem and the S3 client;
- suite/object_store.py (this one): the mirrored store, `ObjectStore`, and `open_store`;
- suite/remote_run.py: one run's link to its remote copy, `RemoteRun`, at the points above;
- suite/object_lock.py: the cross-machine run lock, `ObjectLock`.

What is slower than a local store: each checkpoint uploads every file that grew, whole (object storage
has no append), a resume downloads the run folder, and a report downloads what it reads of every
complete run (then only what changed: a staged file of the same size and modification time is kept).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from spam_bench.suite.lock import LOCK
from spam_bench.suite.object_location import (
    Location,
    ObjectStoreError,
    _brief,
    _connect,
    _endpoint,
    _s3_client,
    _safe_name,
    parse_url,
)
from spam_bench.suite.object_lock import ObjectLock
from spam_bench.suite.paths import is_url, out_root, staging_root
from spam_bench.suite.remote_run import RemoteRun
from spam_bench.suite.results import CHECKPOINT, METRICS, SPEC, SUMMARY, RunStore
from spam_bench.suite.step_log import FINAL as STEPS_FILE

REPORT_FILES = (SUMMARY, SPEC, METRICS, STEPS_FILE)  # what reports/summary.py reads of a run
_IN_MEMORY = 64 << 20  # files up to this size are uploaded from memory: one write, never half an object
_CHUNK = 8 << 20


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


__all__ = ["Location", "ObjectLock", "ObjectStore", "RemoteRun", "open_store", "parse_url"]
