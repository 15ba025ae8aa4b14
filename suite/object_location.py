"""Where a store on object storage is, and the connection to it: the `--out` URL, checked in one line
before anything runs, the pyarrow filesystem that moves its files, and boto3's S3 client for the
conditional writes of the run lock (suite/object_lock.py).

Why a module of its own: everything here is checked or opened once, when a store is opened
(`ObjectStore.open`, suite/object_store.py), and a bad URL, a missing bucket, an unreachable
endpoint or missing credentials must each be refused in one line naming `--out`, within
`CHECK_TIMEOUT_S` (a credential lookup or a silent host can otherwise hang in pyarrow's C++).
Remote names are data from a store anyone with write access may have planted: `_safe_name` is the one
check that only plain file and folder names are ever mirrored (never `..`, never a path).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from spam_bench.suite.errors import ConfigError

SCHEMES = ("s3", "gs", "gcs")  # pyarrow filesystems; s3 alone has the cross-machine lock
ALLOWED = "a local directory, or object storage as s3://bucket/prefix or gs://bucket/prefix"
CHECK_TIMEOUT_S = 30.0  # the longest `open_store` waits for the service to answer
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
