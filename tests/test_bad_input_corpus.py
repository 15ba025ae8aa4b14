"""The bad-input corpus: every input that once gave a traceback, a hang or a wrong acceptance.

The contract (runners/cli.py): bad input is ONE line on stderr (`spambench: error: <field>: invalid
value <v> (allowed: <what>)`), exit status 2, no traceback, and nothing in the results store. Bad
*files* in the store are not bad input: `spambench report` skips each malformed run folder with one
warning line naming the file, counts them in the header, and still reports the good runs.

Cases run in-process (`main([...])`) where capsys sees everything; a subprocess runs the console
script where the process's own stderr or timing matters (Ray's, a plug-in's, a probe's).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from spam_bench.runners import ray_tune
from spam_bench.runners.cli import main
from spam_bench.suite.paths import out_root

ROOT = Path(__file__).resolve().parents[1]
SPAMBENCH = [sys.executable, "-m", "spam_bench.runners.cli"]


def _refused(code: int, err: str, expected: str, out: Path) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("spambench: error: "), err
    assert "Traceback" not in err
    assert expected in err, err
    assert not (out / "runs").exists()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Relative paths (the default ./out, a literal ./~) land in the test's folder, never the checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPAMBENCH_OUT", raising=False)


# --- spambench run: argv after `run`, and what the one line must say -------------------------------

RUN_CASES = [
    ("seed-2**32", ["--task", "spikes", "--opt", "adamw", "--seed", "4294967296"], "seed: invalid value 4294967296"),
    ("seed-huge", ["--task", "spikes", "--opt", "adamw", "--seed", "9" * 5000], "seed: invalid value '999"),
    ("seed-arabic-digit", ["--task", "spikes", "--opt", "adamw", "--seed", "٣"], "seed: invalid value '٣'"),
    ("seed-underscore", ["--task", "spikes", "--opt", "adamw", "--seed", "1_0"], "seed: invalid value '1_0'"),
    (
        "set-int-arabic-digit",
        ["--task", "spikes", "--opt", "adamw", "--set", "steps=٣"],
        "steps: invalid value '٣' (allowed: int)",
    ),
    (
        "spikes-dim-absurd",
        ["--task", "spikes", "--opt", "adamw", "--set", "dim=10000000000000"],
        "dim: invalid value 10000000000000 (allowed: a size that fits in memory: the quadratic problem needs",
    ),
    (
        "spikes-logistic-n_train-absurd",
        ["--task", "spikes", "--opt", "adamw", "--set", "problem=logistic", "--set", "n_train=1000000000000"],
        "n_train: invalid value 1000000000000 (allowed: a size that fits in memory",
    ),
    (
        "llm-shape-absurd",
        ["--task", "llm", "--opt", "adamw", "--set", "hidden_size=1000000"],
        "hidden_size: invalid value 1000000 (allowed: a size that fits in memory",
    ),
    (
        "llm-n_kv_heads",
        ["--task", "llm", "--opt", "adamw", "--set", "n_kv_heads=3"],
        "n_kv_heads: invalid value 3 (allowed: a divisor of n_heads=4",
    ),
    (
        "llm-data_files-missing",
        ["--task", "llm", "--opt", "adamw", "--set", "dataset=c4", "--set", "data_files=/nonexistent"],
        "data_files: invalid value '/nonexistent' (allowed: an existing file or folder",
    ),
    (
        "llm-data_files-with-shakespeare",
        ["--task", "llm", "--opt", "adamw", "--set", "data_files=/tmp"],
        "data_files: invalid value '/tmp' (allowed: None unless dataset=c4)",
    ),
    (
        "llm-tokenizer-path",
        ["--task", "llm", "--opt", "adamw", "--set", "tokenizer=../../../etc/passwd"],
        "tokenizer: invalid value '../../../etc/passwd' (allowed: bpe with dataset=shakespeare",
    ),
    (
        "llm-tokenizer-path-c4",
        ["--task", "llm", "--opt", "adamw", "--set", "dataset=c4", "--set", "tokenizer=../../../etc/passwd"],
        "tokenizer: invalid value '../../../etc/passwd' (allowed: a tokenizers hub name",
    ),
    (
        "llm4bit-tokenizer-path",
        ["--task", "llm4bit", "--opt", "adamw", "--set", "tokenizer=../x"],
        "tokenizer: invalid value '../x'",
    ),
    (
        "llm-eval_tokens-1",
        ["--task", "llm", "--opt", "adamw", "--set", "eval_tokens=1"],
        "eval_tokens: invalid value 1 (allowed: >= seq_len x batch_size = 2048",
    ),
    (
        "set-key-twice",
        ["--task", "spikes", "--opt", "adamw", "--set", "steps=5", "--set", "steps=6"],
        "--set: invalid value 'steps=6' (allowed: each key once (steps is already '5'))",
    ),
    (
        "set-opt-key-twice",
        ["--task", "spikes", "--opt", "adamw", "--set", "opt.beta2=0.9", "--set", "beta2=0.99"],
        "beta2: invalid value '0.99' (allowed: one value per field",
    ),
    ("device-newline", ["--task", "spikes", "--opt", "adamw", "--device", "cpu\n"], "device: invalid value 'cpu\\n'"),
    ("device-arabic-digit", ["--task", "spikes", "--opt", "adamw", "--device", "cuda:٣"], "device: invalid value"),
]


@pytest.mark.parametrize("argv,expected", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_bad_run_input_is_one_line_exit_2_and_writes_nothing(argv, expected, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", *argv, "--out", str(out)])
    _refused(code, capsys.readouterr().err, expected, out)
    assert not out.exists()


def test_the_largest_seed_is_accepted(tmp_path, capsys):
    assert main(["run", "--task", "spikes", "--opt", "adamw", "--scale", "smoke", "--seed", "4294967295",
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    assert "seed 4294967295: objective" in capsys.readouterr().out


# --- where results go: --out and $SPAMBENCH_OUT --------------------------------------------------


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


OUT_CASES = [
    ("file", lambda t: str(_a_file(t)), "(it is a file)"),
    ("under-a-file", lambda t: str(_a_file(t) / "sub"), "a-file is a file, not a directory"),
    ("proc", lambda t: "/proc/spambench-test", "/proc is a kernel pseudo-filesystem"),
    ("sys", lambda t: "/sys/spambench-test", "/sys is a kernel pseudo-filesystem"),
    ("nul-byte", lambda t: "out\x00x", "a path without NUL bytes"),
    ("name-too-long", lambda t: "x" * 300, "names of at most 255 bytes"),
    ("unknown-user", lambda t: "~no-such-user-spambench/x", "~ does not expand here"),
]


@pytest.mark.parametrize("make,expected", [c[1:] for c in OUT_CASES], ids=[c[0] for c in OUT_CASES])
@pytest.mark.parametrize("command", ["run", "report"])
def test_out_must_be_a_writable_directory(command, make, expected, tmp_path, capsys):
    out = make(tmp_path)
    argv = ["run", "--task", "spikes", "--opt", "adamw"] if command == "run" else ["report"]
    code = main([*argv, "--out", out])
    err = capsys.readouterr().err
    _refused(code, err, expected, tmp_path)
    assert "spambench: error: out: invalid value" in err
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["a-file"])


@pytest.mark.parametrize("make,expected", [c[1:] for c in OUT_CASES[:3]], ids=[c[0] for c in OUT_CASES[:3]])
def test_spambench_out_is_checked_like_out(make, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPAMBENCH_OUT", make(tmp_path))
    code = main(["run", "--task", "spikes", "--opt", "adamw"])
    err = capsys.readouterr().err
    _refused(code, err, expected, tmp_path)
    assert "SPAMBENCH_OUT: invalid value" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-0555 folder anyway")
def test_out_in_a_read_only_directory_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code = main(["run", "--task", "spikes", "--opt", "adamw", "--out", str(locked / "out")])
        _refused(code, capsys.readouterr().err, "is not writable by this user", locked)
    finally:
        locked.chmod(0o755)


def test_out_on_a_read_only_filesystem_is_refused(tmp_path, monkeypatch, capsys):
    """Root passes every permission check, so a read-only mount is told by its flag (faked here)."""
    real_statvfs = os.statvfs

    class ReadOnly:
        def __init__(self, result: os.statvfs_result):
            self._result = result
            self.f_flag = result.f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly(real_statvfs(p)))
    code = main(["report", "--out", str(tmp_path / "out")])
    _refused(code, capsys.readouterr().err, "is on a read-only filesystem", tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_tilde_in_spambench_out_means_home(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SPAMBENCH_OUT", "~/results")
    assert out_root() == home / "results"
    assert main(["report"]) == 0
    capsys.readouterr()
    assert (home / "results" / "report" / "leaderboard.md").exists()
    assert not (tmp_path / "~").exists()


# --- spambench sweep / tune: refused before Ray starts ----------------------------------------------

SWEEP_CASES = [
    ("opt-twice", ["--opt", "adamw,adamw"], "opt: invalid value 'adamw,adamw' (allowed: each value once"),
    ("seed-twice", ["--opt", "adamw", "--seeds", "0-2,2"], "seeds: invalid value '0-2,2' (allowed: each value once"),
    ("seeds-huge-range", ["--opt", "adamw", "--seeds", "0-100000000"], "at most 10,000 seeds"),
    ("seeds-2**32", ["--opt", "adamw", "--seeds", "4294967296"], "seeds: invalid value '4294967296'"),
    ("seeds-arabic-digit", ["--opt", "adamw", "--seeds", "٣"], "seeds: invalid value '٣'"),
    ("seeds-long-digits", ["--opt", "adamw", "--seeds", "9" * 5000], "seeds: invalid value '999"),
    ("sweep-too-large", ["--opt", "adamw,spam", "--seeds", "0-9999"], "at most 10,000 runs per sweep"),
    ("grid-value-twice", ["--opt", "adamw", "--grid", "lr=1e-3,1e-3"], "--grid: invalid value 'lr=1e-3,1e-3'"),
    ("grid-same-run", ["--opt", "adamw", "--grid", "lr=1e-3,0.001"], "(allowed: distinct runs (the same run as"),
    ("grid-key-twice", ["--opt", "adamw", "--grid", "lr=1e-3", "--grid", "lr=2e-3"], "--grid: invalid value 'lr=2e-3'"),
    (
        "grid-and-set",
        ["--opt", "adamw", "--grid", "lr=1e-3,2e-3", "--set", "lr=1e-3"],
        "--grid: invalid value 'lr' (allowed: a key that --set does not also fix)",
    ),
    ("set-twice", ["--opt", "adamw", "--set", "steps=5", "--set", "steps=6"], "(allowed: each key once"),
    ("cpus-nan", ["--opt", "adamw", "--cpus-per-trial", "nan"], "cpus-per-trial: invalid value nan"),
    ("cpus-inf", ["--opt", "adamw", "--cpus-per-trial", "inf"], "cpus-per-trial: invalid value inf"),
    ("max-concurrent-arabic-digit", ["--opt", "adamw", "--max-concurrent", "٣"], "max-concurrent: invalid value"),
    ("address-bad-port", ["--opt", "adamw", "--address", "localhost:٣"], "address: invalid value 'localhost:٣'"),
]


@pytest.mark.parametrize("extra,expected", [c[1:] for c in SWEEP_CASES], ids=[c[0] for c in SWEEP_CASES])
def test_bad_sweep_input_fails_in_one_line_before_ray_starts(extra, expected, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", "--task", "spikes", "--out", str(out), *extra])
    _refused(code, capsys.readouterr().err, expected, out)
    assert not out.exists()


@pytest.mark.parametrize("trials", ["٣", "1_0", "0"])
def test_tune_trials_take_ascii_digits_only(trials, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["tune", "--task", "spikes", "--opt", "adamw", "--trials", trials, "--out", str(out)])
    _refused(code, capsys.readouterr().err, f"trials: invalid value {trials!r}".replace("'0'", "0"), out)


@pytest.fixture
def not_ray():
    """A port that completes TCP handshakes (the kernel's backlog) but never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.slow  # waits out the bounded probe on purpose
def test_an_address_that_answers_tcp_but_is_not_ray_fails_within_bounded_time(not_ray, tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    proc = subprocess.run(
        [*SPAMBENCH, "sweep", "--task", "spikes", "--opt", "adamw", "--address", not_ray, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - start < 30 + 15  # the probe's bound, plus interpreter start-up
    _refused(proc.returncode, proc.stderr, f"address: invalid value '{not_ray}'", out)
    assert "no Ray GCS answered within" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("scheme", ["auto", "ray://"])
def test_auto_and_ray_client_addresses_are_probed_too(scheme, not_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ray_tune, "GCS_PROBE_TIMEOUT_S", 1.0)
    monkeypatch.setenv("RAY_ADDRESS", not_ray)
    address = "auto" if scheme == "auto" else f"ray://{not_ray}"
    out = tmp_path / "out"
    code = main(["sweep", "--task", "spikes", "--opt", "adamw", "--address", address, "--out", str(out)])
    _refused(code, capsys.readouterr().err, f"address: invalid value '{address}'", out)


def test_auto_with_no_cluster_to_find_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("ray._private.services.canonicalize_bootstrap_address", lambda *a, **k: None)
    out = tmp_path / "out"
    code = main(["sweep", "--task", "spikes", "--opt", "adamw", "--address", "auto", "--out", str(out)])
    _refused(code, capsys.readouterr().err, "address: invalid value 'auto' (allowed: a running Ray cluster", out)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_cpu_cluster():
    """A real one-node Ray cluster with 1 CPU and no GPU, in its own process group (killed after)."""
    temp = tempfile.mkdtemp(prefix="sbray", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    ports = ["--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port"]
    ports += ["--node-manager-port", "--object-manager-port", "--metrics-export-port", "--runtime-env-agent-port"]
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}"]
    cmd += ["--num-cpus=1", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    cmd += [f"{flag}={_free_port()}" for flag in ports]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while ray_tune._probe_gcs(address, 2.0) is not None or proc.poll() is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("could not start a local Ray cluster here")
            time.sleep(1)
        time.sleep(3)  # the raylet registers its node shortly after the GCS answers
        yield address, env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.cluster  # a real Ray cluster started with `ray start`
@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--cpus-per-trial", "2"], "cpus-per-trial: invalid value 2.0 (allowed: at most 1, the most CPUs one node"),
        (["--device", "cuda"], "gpus-per-trial: invalid value 1 (allowed: at most 0, the most GPUs one node"),
    ],
    ids=["cpus", "gpus"],
)
def test_a_trial_the_cluster_can_never_schedule_is_refused_after_connecting(one_cpu_cluster, extra, expected, tmp_path):
    address, env = one_cpu_cluster
    out = tmp_path / "out"
    argv = ["sweep", "--task", "spikes", "--opt", "adamw", "--set", "steps=5", "--address", "auto", "--out", str(out)]
    proc = subprocess.run(
        [*SPAMBENCH, *argv, *extra], capture_output=True, text=True, timeout=180, env={**env, "RAY_ADDRESS": address}
    )
    _refused(proc.returncode, proc.stderr, expected, out)
    assert not out.exists()


def test_an_embedded_ray_too_small_for_one_trial_is_refused_before_it_starts(tmp_path):
    out = tmp_path / "out"
    argv = ["sweep", "--task", "spikes", "--opt", "adamw", "--cpus-per-trial", "4096", "--out", str(out)]
    proc = subprocess.run([*SPAMBENCH, *argv], capture_output=True, text=True, timeout=180)
    _refused(proc.returncode, proc.stderr, "cpus-per-trial: invalid value 4096.0 (allowed: at most", out)
    assert "the CPUs of this machine (an embedded Ray)" in proc.stderr
    assert not out.exists()


# --- plug-ins --------------------------------------------------------------------------------------


def test_a_plugin_that_raises_systemexit_on_import_is_one_line(tmp_path):
    """suite/registry.py catches SystemExit from an entry point; its message may span lines."""
    site = tmp_path / "site"
    dist = site / "spambench_boom-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: spambench-boom\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[spam_bench.tasks]\nboom = spambench_boom:TASK\n")
    (site / "spambench_boom.py").write_text("raise SystemExit('no GPU here,\\nrefusing to load')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "out"
    proc = subprocess.run(
        [*SPAMBENCH, "run", "--task", "boom", "--opt", "adamw", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    _refused(proc.returncode, proc.stderr, "task: invalid value 'boom' (allowed: an importable plug-in", out)
    assert "SystemExit: no GPU here, refusing to load" in proc.stderr
    listing = subprocess.run([*SPAMBENCH, "list", "tasks"], capture_output=True, text=True, env=env, timeout=120)
    assert listing.returncode == 0 and "broken task plug-in boom" in listing.stdout


# --- spambench report ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    """One good smoke run: `spambench run --task spikes --opt adamw --scale smoke`."""
    out = tmp_path_factory.mktemp("good") / "out"
    assert main(["run", "--task", "spikes", "--opt", "adamw", "--scale", "smoke", "--out", str(out)]) == 0
    return out


def _copy_store(good_store: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "store"
    shutil.copytree(good_store, out)
    (good,) = (p.parent for p in out.glob("runs/spikes/*/summary.json"))
    return out, good


def _clone(good: Path, name: str) -> Path:
    """A copy of the good run under another run id (its summary says so), to be broken."""
    clone = good.with_name(name)
    shutil.copytree(good, clone)
    summary = json.loads((clone / "summary.json").read_text())
    (clone / "summary.json").write_text(json.dumps({**summary, "run_id": name}))
    return clone


def _truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _set_summary(path: Path, **values: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def _as_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


MALFORMED = {  # run folder name -> (what breaks it, the file the warning must name)
    "summary-truncated": (lambda d: _truncate(d / "summary.json"), "summary.json"),
    "summary-empty": (lambda d: (d / "summary.json").write_text(""), "summary.json"),
    "summary-object-empty": (lambda d: (d / "summary.json").write_text("{}"), "summary.json"),
    "summary-list": (lambda d: (d / "summary.json").write_text("[]"), "summary.json"),
    "summary-a-folder": (lambda d: _as_folder(d / "summary.json"), "summary.json"),
    "summary-value-abc": (lambda d: _set_summary(d / "summary.json", value="abc"), "summary.json"),
    "metrics-truncated": (lambda d: _truncate(d / "metrics.jsonl", 70), "metrics.jsonl"),
    "metrics-missing": (lambda d: (d / "metrics.jsonl").unlink(), "metrics.jsonl"),
    "spec-truncated": (lambda d: _truncate(d / "spec.json"), "spec.json"),
}


def _junk(out: Path) -> None:
    """Files that are not run folders at all: ignored without a word."""
    (out / "runs" / "notes.txt").write_text("junk\n")
    (out / "runs" / "spikes" / "README").write_text("junk\n")
    (out / "runs" / "spikes" / "empty-folder").mkdir()
    (out / "stray.json").write_text("{")


def test_report_skips_each_malformed_run_folder_naming_the_file_and_reports_the_good_run(good_store, tmp_path, capsys):
    out, good = _copy_store(good_store, tmp_path)
    for name, (breaks, _) in MALFORMED.items():
        breaks(_clone(good, name))
    _junk(out)
    code = main(["report", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    warnings = captured.err.splitlines()
    assert len(warnings) == len(MALFORMED)
    for name, (_, file) in MALFORMED.items():
        (line,) = [w for w in warnings if f"/{name}/" in w]
        assert line.startswith("spambench: warning: ") and f"{out}/runs/spikes/{name}/{file}: " in line
        assert line.endswith("; run folder skipped")
    assert "1 complete runs (0 diverged) of 1 tasks and 1 optimizers" in captured.out
    assert f"{len(MALFORMED)} malformed run folders skipped (named on stderr)." in captured.out
    assert f"| {good.name.split('-')[0]} |" in captured.out.replace("**", "")


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_one_malformed_run_folder_never_hides_the_good_run(name, good_store, tmp_path, capsys):
    out, good = _copy_store(good_store, tmp_path)
    breaks, file = MALFORMED[name]
    breaks(_clone(good, name))
    assert main(["report", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and f"/{name}/{file}: " in captured.err
    assert "1 complete runs" in captured.out and "1 malformed run folder skipped" in captured.out


@pytest.mark.parametrize("junk", [False, True], ids=["empty", "only-junk"])
def test_report_of_a_store_with_no_runs_says_so_and_exits_0(junk, tmp_path, capsys):
    out = tmp_path / "out"
    if junk:
        (out / "runs" / "spikes").mkdir(parents=True)
        _junk(out)
    assert main(["report", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "No complete runs: try `make bench`." in captured.out and captured.err == ""


def test_report_since_is_bounded_and_checked_before_the_store_is_read(good_store, tmp_path, capsys):
    out, good = _copy_store(good_store, tmp_path)
    _truncate(_clone(good, "broken") / "summary.json")  # reading the store would warn about it
    code = main(["report", "--out", str(out), "--since", "99999999d"])
    _refused(code, capsys.readouterr().err, "since: invalid value '99999999d' (allowed: an age of at most", tmp_path)
    assert not (out / "report").exists()
    for since in ("36525d", "0001-01-01"):
        assert main(["report", "--out", str(out), "--since", since]) == 0
        assert "1 complete runs" in capsys.readouterr().out


def _cells(line: str) -> list[str]:
    """A Markdown table row's cells (`\\|` is a pipe inside a cell)."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


def test_a_pipe_in_an_optimizer_name_does_not_break_the_markdown_tables(good_store, tmp_path, capsys):
    out, good = _copy_store(good_store, tmp_path)
    _set_summary(_clone(good, "pipe") / "summary.json", optimizer="ad|am\nnew line")
    assert main(["report", "--out", str(out), "--all-code"]) == 0
    capsys.readouterr()
    for name in ("leaderboard.md", "summary.md"):
        markdown = (out / "report" / name).read_text()
        assert "ad\\|am new line" in markdown, name
        table: list[str] = []
        for line in [*markdown.splitlines(), ""]:
            if line.startswith("|"):
                table.append(line)
                continue
            if table:
                assert len({len(_cells(row)) for row in table}) == 1, table
            table = []
