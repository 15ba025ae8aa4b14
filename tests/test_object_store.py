"""A results store on object storage (`--out s3://...`), against a real S3 server (moto's, started here):
a sweep on Ray lands there, a report reads it back and writes there, a killed run resumes from it on
another machine (a fresh staging folder), the cross-machine run lock, and bad URLs refused in one line."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections import Counter

import boto3
import pandas as pd
import pytest
import torch
from conftest import small_llm_sets

from spam_bench.runners.cli import main
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.faults import InjectedFault
from spam_bench.suite.lock import RunInProgress, RunLockLost
from spam_bench.suite.object_store import ObjectLock, ObjectStore, parse_url
from spam_bench.suite.results import CHECKPOINT_GLOBALS

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` skips them

SPEED = small_llm_sets(steps=20, eval_every=10)  # checkpoints every 5 steps
BUCKET = "bench"


class S3:
    """The moto server's bucket, read with boto3."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.client = boto3.client("s3", endpoint_url=endpoint)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def summaries(self, prefix: str) -> dict[str, dict]:
        return {k.split("/")[-2]: json.loads(self.read(k)) for k in self.keys(prefix) if k.endswith("/summary.json")}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        # Ray workers started by the embedded ray.init inherit this environment.
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("SPAMBENCH_STAGING", str(tmp_path_factory.mktemp("staging")))
        store = S3(f"http://{host}:{port}")
        store.client.create_bucket(Bucket=BUCKET)
        yield store
    server.stop()


def _argv(command: str, url: str, *extra: str) -> list[str]:
    argv = [command, "--task", "llm", "--out", url, *extra]
    for s in SPEED:
        argv += ["--set", s]
    return argv


@pytest.fixture(scope="module")
def swept(s3):
    """A trial on an embedded Ray, its store and Tune's files on S3."""
    assert main(_argv("sweep", f"s3://{BUCKET}/sweep", "--opt", "adamw", "--seeds", "0")) == 0
    return s3.summaries("sweep/runs/")


def test_a_sweep_writes_every_run_complete_to_object_storage(s3, swept):
    assert len(swept) == 1 and all(s["status"] == "complete" for s in swept.values())
    keys = s3.keys("sweep/")
    for run_id in swept:
        files = {k.rsplit("/", 1)[1] for k in keys if k.startswith(f"sweep/runs/llm/{run_id}/")}
        # a complete run's files, and neither the resume-only files nor the lock left behind
        assert {"summary.json", "spec.json", "metrics.jsonl", "steps.parquet", "grad_samples.npz"} <= files
        assert not files & {"checkpoint.pt", "steps.bin", "grad_samples.f32", ".lock"}
    assert any(k.startswith("sweep/ray/") for k in keys)  # Tune's storage_path is <url>/ray


def test_report_reads_the_store_back_and_writes_there(s3, swept, capsys):
    assert main(["report", "--out", f"s3://{BUCKET}/sweep"]) == 0
    assert f"written: s3://{BUCKET}/sweep/report/" in capsys.readouterr().out
    keys = s3.keys("sweep/report/")
    assert {"sweep/report/leaderboard.md", "sweep/report/leaderboard.html"} <= set(keys)
    results = pd.read_parquet(io.BytesIO(s3.read("sweep/report/results.parquet")))
    assert set(results.run_id) == set(swept)
    assert "adamw" in s3.read("sweep/report/leaderboard.md").decode()


def test_a_killed_run_resumes_from_object_storage_on_another_machine(s3, swept, tmp_path, monkeypatch):
    url = f"s3://{BUCKET}/resume"
    monkeypatch.setenv("SPAMBENCH_CRASH_ONCE", f"12:{tmp_path}")  # after the checkpoint at step 10
    with pytest.raises(InjectedFault):
        main(_argv("run", url, "--opt", "adamw", "--seed", "0"))
    (run_key,) = {k.rsplit("/", 1)[0] for k in s3.keys("resume/runs/")}
    files = {k.rsplit("/", 1)[1] for k in s3.keys(run_key + "/")}
    assert "checkpoint.pt" in files and "summary.json" not in files and ".lock" not in files
    with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
        checkpoint = torch.load(io.BytesIO(s3.read(f"{run_key}/checkpoint.pt")), weights_only=True)
    before = s3.read(f"{run_key}/metrics.jsonl")[: checkpoint["_metrics_bytes"]]
    assert before

    shutil.rmtree(ObjectStore.open(url).staging)  # another machine: nothing staged here
    assert main(_argv("run", url, "--opt", "adamw", "--seed", "0")) == 0

    run_id = run_key.rsplit("/", 1)[1]
    assert run_id in swept  # the same spec the sweep ran, uninterrupted
    summary = s3.summaries("resume/runs/")[run_id]
    assert summary["status"] == "complete" and summary["value"] == swept[run_id]["value"]
    after = s3.read(f"{run_key}/metrics.jsonl")
    assert after.startswith(before)  # resumed from the checkpoint: the lines before it are the same bytes
    lines = [json.loads(line) for line in after.decode().splitlines()]
    counts = Counter((r["step"], r["split"], r["name"]) for r in lines)
    assert max(counts.values()) == 1  # every step exactly once, none missing
    assert sorted(r["step"] for r in lines if (r["split"], r["name"]) == ("train", "loss")) == list(range(1, 21))
    assert sorted(r["step"] for r in lines if (r["split"], r["name"]) == ("val", "ppl")) == [0, 10, 20]
    assert not {"checkpoint.pt", ".lock"} & {k.rsplit("/", 1)[1] for k in s3.keys(run_key + "/")}


def test_the_run_lock_is_one_object_across_machines(s3):
    client = boto3.client("s3")
    key = "locks/run/.lock"
    first = ObjectLock(client, BUCKET, key, f"s3://{BUCKET}/{key}", "run").acquire()
    try:
        with pytest.raises(RunInProgress, match=f"pid {os.getpid()}"):
            ObjectLock(client, BUCKET, key, f"s3://{BUCKET}/{key}", "run").acquire()
        # a holder gone from this host (a pid no process has) is taken over, saying so
        dead = json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename, "started": 0, "token": "x"})
        client.put_object(Bucket=BUCKET, Key=key, Body=dead.encode())
        said: list[str] = []
        second = ObjectLock(client, BUCKET, key, f"s3://{BUCKET}/{key}", "run").acquire(say=said.append)
        assert said and "taking over" in said[0] and "no longer exists" in said[0]
        with pytest.raises(RunLockLost):  # the first holder learns it lost the lock before writing
            first.verify()
        second.release()
        assert s3.keys("locks/") == []
    finally:
        first.release()


MISSING = ("s3://missing-bucket/x", None, "an existing bucket (missing-bucket does not exist")
UNREACHABLE = ("s3://bench/x", "http://127.0.0.1:1", "object storage this machine can reach")
UNKNOWN = ("gopher://bench/x", None, "gopher:// is not a scheme")


@pytest.mark.parametrize(
    "command,url,endpoint,expected",
    [
        ("run", *MISSING),
        ("sweep", *MISSING),
        ("report", *MISSING),
        ("run", *UNREACHABLE),
        ("sweep", *UNREACHABLE),
        ("sweep", *UNKNOWN),
        ("report", *UNKNOWN),
        ("run", "s3://bench/a/../b", None, "without '.' or '..'"),
    ],
)
def test_bad_urls_are_refused_in_one_line_writing_nothing(
    s3, command, url, endpoint, expected, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    staging = tmp_path / "staging"
    monkeypatch.setenv("SPAMBENCH_STAGING", str(staging))
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    before = (s3.keys(), [b["Name"] for b in s3.client.list_buckets()["Buckets"]])
    argv = ["report", "--out", url] if command == "report" else _argv(command, url, "--opt", "adamw")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"out: invalid value '{url}'" in err and expected in err
    assert (s3.keys(), [b["Name"] for b in s3.client.list_buckets()["Buckets"]]) == before
    assert list(tmp_path.iterdir()) == []  # no staging folder, no local folder named after the URL


def test_no_credentials_and_a_remote_sweep_resume_are_refused(s3, swept, monkeypatch, capsys):
    assert main(_argv("sweep", f"s3://{BUCKET}/sweep", "--opt", "adamw", "--seeds", "0-1", "--resume")) == 2
    assert "--resume: invalid value" in capsys.readouterr().err
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="none found"):
        ObjectStore.open(f"s3://{BUCKET}/sweep")
    assert parse_url("s3://bench/a/b/").url == "s3://bench/a/b"


def test_a_stale_run_is_set_aside_remotely_and_its_lock_stays(s3):
    store = ObjectStore.open(f"s3://{BUCKET}/aside")
    for name in ("spec.json", "metrics.jsonl", "checkpoint.pt", ".lock"):
        s3.client.put_object(Bucket=BUCKET, Key=f"aside/runs/llm/r1/{name}", Body=name.encode())
    run_dir = store.run_dir("llm", "r1")
    store.pull_run(run_dir)  # the remote folder staged, its lock object aside
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "metrics.jsonl", "spec.json"]
    kept = store.set_aside(run_dir, "old")
    assert store.where(kept) == f"s3://{BUCKET}/aside/superseded/llm/r1-old"
    assert s3.keys("aside/") == [
        "aside/runs/llm/r1/.lock",
        *(f"aside/superseded/llm/r1-old/{n}" for n in ("checkpoint.pt", "metrics.jsonl", "spec.json")),
    ]
    assert (kept / "checkpoint.pt").read_bytes() == b"checkpoint.pt"


def test_the_python_api_reuses_and_compares_runs_on_object_storage(swept):
    import spam_bench

    url, overrides = f"s3://{BUCKET}/sweep", dict(s.split("=", 1) for s in SPEED)
    result = spam_bench.run("llm", "adamw", seed=0, overrides=overrides, out=url)
    assert result.reused and result.value == swept[result.run_dir.name]["value"]
    assert set(result.curves["split"]) >= {"train", "val"}  # its metrics staged, though nothing ran here
    table = spam_bench.compare("llm", ["adamw"], seeds=[0], overrides=overrides, out=url)
    assert list(table["optimizer"]) == ["adamw"] and set(table["n"]) == {1}
