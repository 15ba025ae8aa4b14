"""Where things live on disk: the results store (`out/`) and the data cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

from spam_bench.suite.errors import ConfigError

# Kernel pseudo-filesystems hold no results; and as root, os.access() would call them writable.
_PSEUDO_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
_WRITABLE_UNDER_PSEUDO = (Path("/dev/shm"),)
_NAME_MAX, _PATH_MAX = 255, 4095  # bytes, as Linux counts them
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(raw: str | os.PathLike[str] | None) -> bool:
    """Whether `--out` names a store on object storage (`s3://bucket/prefix`, suite/object_store.py)
    rather than a local folder; a local path never has `scheme://` in front."""
    return isinstance(raw, str) and bool(_URL.match(raw))


def out_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--out`, else $SPAMBENCH_OUT, else ./out, with `~` expanded, as an absolute path.

    Checked before anything is written, and without writing anything: it must be a directory this
    process can write, or one it can create (its nearest existing ancestor is a writable directory on
    a writable filesystem). Otherwise ConfigError names `out` (or `SPAMBENCH_OUT`) and why, instead of
    a traceback from the first mkdir, possibly after minutes of work.
    """
    field = "out" if explicit else "SPAMBENCH_OUT" if os.environ.get("SPAMBENCH_OUT") else "out"
    raw = os.fspath(explicit or os.environ.get("SPAMBENCH_OUT") or "out")
    if is_url(raw):  # else it would become a local folder named "s3:"
        raise ConfigError(
            field, raw, "a local directory here (object storage is a store of `spambench run`, `sweep` and `report`)"
        )
    return writable_dir(field, raw)


def writable_dir(field: str, raw: str | os.PathLike[str]) -> Path:
    """`raw` as an absolute directory path this process can write or create, or ConfigError(field)."""
    text = os.fspath(raw)

    def refuse(why: str) -> ConfigError:
        return ConfigError(field, text, f"a directory this process can write or create ({why})")

    if not isinstance(text, str) or "\x00" in text:
        raise refuse("a path without NUL bytes")
    expanded = os.path.expanduser(text)
    if expanded.startswith("~"):
        raise refuse("~ does not expand here: no such user, or no home directory")
    try:
        path = Path(expanded).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, an unreadable cwd
        raise refuse(str(getattr(err, "strerror", None) or err)) from None
    if len(os.fsencode(str(path))) > _PATH_MAX or any(len(os.fsencode(p)) > _NAME_MAX for p in path.parts):
        raise refuse(f"names of at most {_NAME_MAX} bytes, paths of at most {_PATH_MAX}")
    if any(path.is_relative_to(r) for r in _PSEUDO_ROOTS) and not any(
        path.is_relative_to(w) for w in _WRITABLE_UNDER_PSEUDO
    ):
        raise refuse(f"/{path.parts[1]} is a kernel pseudo-filesystem")
    existing = path
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        is_dir = existing.is_dir()
    except OSError as err:  # e.g. a parent this process may not search
        raise refuse(f"{existing}: {err.strerror or err}") from None
    if not is_dir:
        raise refuse("it is a file" if existing == path else f"{existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise refuse(f"{existing} is not writable by this user")
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise refuse(f"{existing} is on a read-only filesystem")
    return path


def staging_root() -> Path:
    """$SPAMBENCH_STAGING, else <data cache>/staging: where stores on object storage are mirrored
    (suite/object_store.py); put it on a fast local disk. Not created here."""
    raw = os.environ.get("SPAMBENCH_STAGING")
    return Path(raw).expanduser().resolve() if raw else data_cache() / "staging"


def data_cache() -> Path:
    """$SPAMBENCH_DATA, else ~/.cache/spam-bench: shared by every clone, so setup fetches once."""
    root = os.environ.get("SPAMBENCH_DATA") or Path.home() / ".cache" / "spam-bench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
