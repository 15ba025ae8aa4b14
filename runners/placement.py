"""`spambench sweep --check-placement`: place every trial of a sweep and say where it landed, without training.

Checking a new cluster should not cost GPU hours. Each trial here asks Ray for exactly the resources a
real trial of the sweep asks for (`ray_tune.sweep` wraps it the same way), reports its node, host,
`CUDA_VISIBLE_DEVICES` and the GPU ids Ray assigned, and returns: it never resolves the spec (which
would check the device), builds a model, touches CUDA or writes a run folder. The driver then prints
one line per trial and a verdict: how many trials ran at once, and whether two trials that ran at the
same time on one node were given the same GPU.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from spam_bench.suite.environment import placement
from spam_bench.suite.spec import RunSpec


def placement_trainable(hold_s: float) -> Callable[[dict[str, Any]], None]:
    """A Tune trainable that reports its placement, holding its resources `hold_s` seconds first.

    The hold lets trials that fit on the cluster at the same time overlap, so that the verdict can
    tell how they pack (with 0 they may well run one after another).
    """

    def check_placement(config: dict[str, Any]) -> None:
        import ray
        from ray import tune

        started = time.time()
        spec = config["trial"]["spec"]
        where = placement()
        gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        if hold_s > 0:
            time.sleep(hold_s)
        tune.report(
            {
                "done": True,
                "status": "placed",
                "run_id": RunSpec.from_canonical(spec).run_id,
                "node_id": where["ray_node_id"],
                "node_ip": where["ray_node_ip"],
                "host": socket.gethostname(),
                "cuda_visible_devices": where["cuda_visible_devices"],
                "ray_gpu_ids": ",".join(str(g) for g in gpu_ids),
                "started": started,
                "ended": time.time(),
            }
        )

    return check_placement


def _devices(result: dict[str, Any]) -> set[str]:
    return {d for d in (result.get("cuda_visible_devices") or "").split(",") if d.strip()}


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["started"] < b["ended"] and b["started"] < a["ended"]


def most_at_once(results: list[dict[str, Any]]) -> int:
    """The largest number of placed trials whose [started, ended] intervals overlap at one instant."""
    edges = sorted([(r["started"], 1) for r in results] + [(r["ended"], -1) for r in results])
    most = now = 0
    for _, step in edges:  # at a tie, an end (-1) sorts before a start: touching is not overlapping
        now += step
        most = max(most, now)
    return most


def shared_gpus(results: list[dict[str, Any]]) -> list[str]:
    """Pairs of trials that ran at the same time on one node and saw a common CUDA device."""
    found = []
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            common = _devices(a) & _devices(b)
            if a.get("node_id") == b.get("node_id") and common and _overlap(a, b):
                found.append(f"{a['run_id']} and {b['run_id']} (device {','.join(sorted(common))})")
    return found


def placement_report(results: list[dict[str, Any]], name: str) -> tuple[list[str], int]:
    """One line per trial, then the verdict; exit status 0 only if every trial was placed and no
    GPU was shared by trials running at the same time."""
    placed = [r for r in results if not r.get("error") and r.get("status") == "placed"]
    failed = [r for r in results if r not in placed]
    t0 = min((r["started"] for r in placed), default=0.0)
    lines = []
    for r in sorted(placed, key=lambda r: (r["started"], r["run_id"])):
        cvd = r.get("cuda_visible_devices")
        lines.append(
            f"  {r['run_id']}: node {str(r.get('node_id'))[:12]} ({r.get('node_ip')}) host {r.get('host')} "
            f"CUDA_VISIBLE_DEVICES={'unset' if cvd is None else repr(cvd)} ray GPUs [{r.get('ray_gpu_ids', '')}] "
            f"{r['started'] - t0:.1f}-{r['ended'] - t0:.1f} s"
        )
    lines += [f"  {r.get('run_id', '?')}: not placed {r.get('error') or ''}".rstrip() for r in failed]
    shared = shared_gpus(placed)
    nodes = len({r.get("node_id") for r in placed})
    verdict = "GPUs shared by trials running at once: " + "; ".join(shared) if shared else "no GPU shared"
    lines.append(
        f"{name}: {len(placed)} of {len(results)} trials placed on {nodes} node{'s' if nodes != 1 else ''}, "
        f"at most {most_at_once(placed)} at once; {verdict}"
    )
    return lines, 1 if failed or shared else 0
