"""Sweeps on a real multi-node Ray cluster on this machine: placement, a node dying, the shared store, GPUs.

One cluster per module (`ray.cluster_utils.Cluster`): a head and a worker node of 1 CPU each, so that
two 1-CPU trials at once must use both; tests that need another node (2 logical GPUs; one that cannot
see the store) add it and remove it. Nodes are real raylets: processes of their own, with their own
node ids, that a test can kill.
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
import threading
import time
from pathlib import Path

import pytest
from conftest import small_llm_sets

from spam_bench.runners.cli import main
from spam_bench.suite.results import read_json, read_metrics

pytestmark = pytest.mark.slow  # real (tiny) training; the tests on a real cluster are also `cluster`

# A node killed outright is declared dead when the GCS's health checks fail 5 times in a row: here 1 s
# apart (Ray's default is 3 s, ~15 s in all). Each check keeps its 10 s timeout, so a raylet that is
# only slow, on a busy machine, is not declared dead: that made a live node vanish mid-test.
FAST_HEALTH = {"health_check_period_ms": 1000, "health_check_timeout_ms": 10000, "health_check_failure_threshold": 5}


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU) + worker (1 CPU). RAY_TMPDIR keeps Ray's files and its "current cluster" address
    file out of /tmp/ray, so that nothing else on this machine finds this cluster with `auto`."""
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS", "RAY_USAGE_STATS_ENABLED")}
    temp = tempfile.mkdtemp(prefix="sbrc", dir="/tmp")  # short: Ray's socket paths have a length limit
    os.environ.update(RAY_TMPDIR=temp, RAY_USAGE_STATS_ENABLED="0")
    os.environ.pop("RAY_ADDRESS", None)
    c = Cluster()
    try:
        c.add_node(num_cpus=1, include_dashboard=False, _system_config=FAST_HEALTH)  # the head
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def two_nodes(cluster):
    """The head and one live 1-CPU worker (a test before may have killed the last one)."""
    if not cluster.worker_nodes:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    (worker,) = cluster.worker_nodes
    return cluster.head_node.node_id, worker


def _argv(out, address, *extra, sets):
    argv = ["sweep", "--task", "llm", "--opt", "adamw", "--out", str(out), "--address", address, *extra]
    for s in sets:
        argv += ["--set", s]
    return argv


def _summaries(out):
    return {p.parent.name: read_json(p) for p in out.glob("runs/llm/*/summary.json")}


def _train_steps(run_dir):
    return [m["step"] for m in read_metrics(run_dir) if m["split"] == "train" and m["name"] == "loss"]


@pytest.mark.cluster
def test_a_sweep_on_the_cluster_uses_both_nodes_and_records_where_each_run_ran(two_nodes, cluster, tmp_path):
    head, worker = two_nodes
    out = tmp_path / "out"
    argv = _argv(out, cluster.address, "--seeds", "0-1", "--cpus-per-trial", "1", sets=small_llm_sets(steps=10))
    assert main(argv) == 0
    runs = _summaries(out)
    assert len(runs) == 2 and all(s["status"] == "complete" and s["steps"] == 10 for s in runs.values())
    where = [s["placement"] for s in runs.values()]
    assert {p["ray_node_id"] for p in where} == {head, worker.node_id}, "two 1-CPU trials at once need both nodes"
    assert all(p["ray_node_ip"] == worker.node_ip_address for p in where)
    assert all(p["cuda_visible_devices"] is None for p in where)  # CPU trials are given no GPU
    assert all(s["host"] == socket.gethostname() for s in runs.values())
    for run_id in runs:
        assert _train_steps(out / "runs" / "llm" / run_id) == list(range(1, 11))


def _ports() -> list[str]:
    def free() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    flags = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port"]
    return [f"{flag}={free()}" for flag in [*flags, "--runtime-env-agent-port"]]


def _private_mounts_work(folder: Path) -> bool:
    """Whether this machine lets us give a process its own mount namespace (root, or user namespaces)."""
    probe = ["unshare", "--mount", "--map-root-user", "--propagation", "private", "sh", "-c"]
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run([*probe, 'mount -t tmpfs probe "$0"', str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.mark.cluster
def test_a_store_that_one_node_cannot_see_is_refused_in_one_line(two_nodes, cluster, tmp_path, capsys):
    """A third node runs in its own mount namespace, where an empty tmpfs hides the store's folder:
    on one machine, the same situation as a node whose disk does not hold the driver's store."""
    private = tmp_path / "driver-only"
    private.mkdir()
    if not _private_mounts_work(private):
        pytest.skip("no private mount namespaces here (unshare --mount needs root or user namespaces)")
    start = [str(Path(sys.executable).with_name("ray")), "start", f"--address={cluster.address}", "--block"]
    start += ["--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", *_ports()]
    hide = 'mount -t tmpfs hidden "$0" && exec "$@"'
    cmd = ["unshare", "--mount", "--map-root-user", "--propagation", "private", "sh", "-c", hide, str(private), *start]
    before = len(cluster.global_state._live_node_ids())
    node = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while len(cluster.global_state._live_node_ids()) == before and node.poll() is None:
            assert time.time() < deadline, "the third node never joined"
            time.sleep(0.2)
        assert node.poll() is None
        out = private / "out"
        assert main(_argv(out, cluster.address, sets=small_llm_sets(steps=5))) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"out: invalid value '{out}' (allowed: a path on storage shared by every node (not visible on" in err
        assert not out.joinpath("runs").exists() and not list(out.glob(".shared-check-*"))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM)  # `ray start --block` stops its raylet on SIGTERM
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        deadline = time.time() + 30
        while len(cluster.global_state._live_node_ids()) > before and time.time() < deadline:
            time.sleep(0.2)  # later tests' sweeps must not meet a node that cannot see their store


PLACED = re.compile(r"^  (\S+): node (\w+) \((\S+)\) host (\S+) CUDA_VISIBLE_DEVICES='([^']*)' ray GPUs \[([^\]]*)\]")


@pytest.mark.cluster
def test_check_placement_gives_every_cuda_trial_its_own_gpu_without_touching_cuda(cluster, tmp_path, capsys):
    """3 CUDA trials on a node that advertises 2 (logical) GPUs: at most 2 at once, never one GPU twice."""
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    try:
        out = tmp_path / "out"
        argv = _argv(out, cluster.address, "--device", "cuda", "--seeds", "0-2", "--gpus-per-trial", "1", sets=[])
        # a 6 s hold: under load a trial's worker can take over 3 s to start, and then no two overlapped
        assert main([*argv, "--check-placement", "6"]) == 0
    finally:
        cluster.remove_node(gpu_node)
    printed = capsys.readouterr().out
    lines = [m.groups() for m in map(PLACED.match, printed.splitlines()) if m]
    assert len(lines) == 3 and len({run_id for run_id, *_ in lines}) == 3, printed
    assert {node for _, node, *_ in lines} == {gpu_node.node_id[:12]}  # the only node with GPUs
    assert all(cvd == gpus and len(cvd.split(",")) == 1 for *_, cvd, gpus in lines)  # one device each, Ray's own
    assert re.search(r"3 of 3 trials placed on 1 node, at most 2 at once; no GPU shared$", printed, re.M)
    # the same from Tune's records, with times: trials that overlapped never shared a device
    (exp,) = out.glob("ray/*-check-placement")
    results = [json.loads(p.read_text().splitlines()[-1]) for p in exp.glob("*/result.json")]
    assert len(results) == 3 and not (out / "runs").exists()  # nothing trained, no run folder
    overlapping = [
        (a, b)
        for i, a in enumerate(results)
        for b in results[i + 1 :]
        if a["started"] < b["ended"] and b["started"] < a["ended"]
    ]
    assert overlapping, "two trials must have run at once (else the GPU check proves nothing)"
    assert all(a["cuda_visible_devices"] != b["cuda_visible_devices"] for a, b in overlapping)
    assert len(overlapping) < 3, "3 trials at once on 2 GPUs"


@pytest.mark.cluster
def test_killing_a_worker_node_mid_sweep_leaves_every_run_complete_exactly_once(two_nodes, cluster, tmp_path, capsys):
    head, worker = two_nodes
    out = tmp_path / "out"
    steps = 150
    sets = small_llm_sets(steps=steps, eval_every=50, checkpoint_every=10)

    def both_mid_run() -> bool:
        """Two runs checkpointed and unfinished: with 1 CPU per node, one of them is on the worker."""
        dirs = list(out.glob("runs/llm/*"))
        return len([d for d in dirs if (d / "checkpoint.pt").exists() and not (d / "summary.json").exists()]) == 2

    killed, done = threading.Event(), threading.Event()

    def kill_the_worker_mid_run() -> None:
        while not done.wait(0.05):
            if both_mid_run():
                cluster.remove_node(worker, allow_graceful=False)  # SIGKILL: its raylet and its trial die
                killed.set()
                return

    killer = threading.Thread(target=kill_the_worker_mid_run, daemon=True)
    killer.start()
    try:
        code = main(_argv(out, cluster.address, "--seeds", "0-1", "--max-failures", "3", sets=sets))
    finally:
        done.set()
        killer.join()
    assert killed.is_set(), "the kill must land while both trials run: make the runs longer"
    assert code == 0 and "2 trials finished, 0 failed" in capsys.readouterr().out
    runs = _summaries(out)
    assert len(runs) == 2 and all(s["status"] == "complete" and s["steps"] == steps for s in runs.values())
    # the dead node's trial was retried (Tune's FailureConfig) and finished on the head
    assert {s["placement"]["ray_node_id"] for s in runs.values()} == {head}
    for run_id in runs:
        assert _train_steps(out / "runs" / "llm" / run_id) == list(range(1, steps + 1)), "no lost or repeated steps"


def test_the_placement_verdict_names_trials_that_shared_a_gpu_at_once():
    from spam_bench.runners.placement import placement_report

    def placed(run_id, node, cvd, started, ended):
        return {"status": "placed", "run_id": run_id, "node_id": node, "cuda_visible_devices": cvd}, started, ended

    rows = [
        placed("a", "n1", "0", 0.0, 2.0),
        placed("b", "n1", "0", 1.0, 3.0),  # overlaps a on n1 with the same GPU
        placed("c", "n1", "0", 3.0, 4.0),  # after b ended: reusing GPU 0 is fine
        placed("d", "n2", "0", 0.5, 1.5),  # GPU 0 of another node
    ]
    results = [dict(r, started=s, ended=e) for r, s, e in rows]
    lines, code = placement_report(results, "x")
    assert code == 1 and lines[-1].endswith(
        "at most 3 at once; GPUs shared by trials running at once: a and b (device 0)"
    )
    lines, code = placement_report([results[0], results[2], results[3]], "x")
    assert code == 0 and lines[-1] == "x: 3 of 3 trials placed on 2 nodes, at most 2 at once; no GPU shared"


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--check-placement", "-1"], "check-placement: invalid value '-1' (allowed: seconds to hold each trial"),
        (["--check-placement", "nan"], "check-placement: invalid value 'nan'"),
        (["--check-placement", "2", "--resume"], "--resume: invalid value True (allowed: not with --check-placement"),
    ],
)
def test_bad_check_placement_input_fails_in_one_line_before_ray_starts(extra, expected, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", "--task", "llm", "--opt", "adamw", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_a_run_outside_ray_records_no_node_and_never_imports_ray():
    code = (
        "import json, sys; from spam_bench.suite.environment import describe; "
        "d = describe('cuda'); print(json.dumps([d['placement'], d['hardware']['device'], 'ray' in sys.modules]))"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    where, device, ray_imported = json.loads(done.stdout)
    assert where == {"ray_node_id": None, "ray_node_ip": None, "cuda_visible_devices": "3"}
    assert not ray_imported
    import torch

    if not torch.cuda.is_available():  # a CUDA spec on a machine without CUDA: said, not a crash
        assert device.startswith("cuda (unavailable")
