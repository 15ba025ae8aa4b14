"""Fair tuning (AlgoPerf's protocol): the same number of quasi-random trials per optimizer, drawn
from each optimizer's declared search space on tuning seeds; the best configuration is saved and
later re-run on fresh seeds at the full budget (`spambench sweep --from-tuning`).

Search-space keys use the `--set` convention: a task field (`lr`) or `opt.<hyperparameter>`.
Points come from a scrambled Halton sequence (any number of trials, low discrepancy, seeded).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spam_bench.suite.errors import ConfigError
from spam_bench.suite.registry import OPTIMIZERS
from spam_bench.suite.resolve import resolve
from spam_bench.suite.results import SUMMARY, RunStore, atomic_write_json, read_json
from spam_bench.suite.search_space import Dist

__all__ = ["Dist", "draw", "load_best", "plan_trials", "save_best_trials", "tuning_store"]

TUNING_SEED_BASE = 10_000  # tuning seeds never collide with the evaluation seeds users pick


def draw(space: Mapping[str, Dist], n: int, seed: int) -> list[dict[str, Any]]:
    """n quasi-random points of the space (scrambled Halton, seeded)."""
    from scipy.stats import qmc

    keys = sorted(space)
    if not keys:
        return [{} for _ in range(n)]
    points = qmc.Halton(d=len(keys), scramble=True, seed=seed).random(n)
    return [{k: space[k].sample(float(u)) for k, u in zip(keys, row)} for row in points]


def best_path(out: Path, task: str, scale: str, optimizer: str) -> Path:
    return tuning_store(out) / "best" / task / scale / f"{optimizer}.json"


def tuning_store(out: Path) -> Path:
    """Tuning runs live in their own store, so reports of evaluation runs never mix them in."""
    return out / "tuning"


def save_best(out: Path, task: str, scale: str, optimizer: str, record: Mapping[str, Any]) -> Path:
    path = best_path(out, task, scale, optimizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, dict(record))
    return path


def load_best(out: Path, task: str, scale: str, optimizer: str) -> dict[str, str]:
    """The tuned `--set` values for an optimizer (strings, as from the command line)."""
    path = best_path(out, task, scale, optimizer)
    if not path.exists():
        raise ConfigError("--from-tuning", optimizer, f"a tuned optimizer (run `spambench tune` first; missing {path})")
    return {k: str(v) for k, v in json.loads(path.read_text())["sets"].items()}


def plan_trials(
    *, task: str, optimizers: list[str], trials: int, sets: Mapping[str, str], scale: str, device: str
) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """The tuning runs: per optimizer, `trials` Halton points on seeds TUNING_SEED_BASE + i.

    Every optimizer gets the same seeds and the same number of points: a fair budget.
    Returns (runs, run_id -> drawn point)."""

    runs, drawn = [], {}
    for opt in optimizers:
        space = OPTIMIZERS.get(opt).search_space
        if not space:
            raise ConfigError("opt", opt, "an optimizer that declares a search space")
        for i, point in enumerate(draw(space, trials, seed=0)):
            run = resolve(
                task=task,
                optimizer=opt,
                seed=TUNING_SEED_BASE + i,
                scale=scale,
                device=device,
                device_here=False,
                sets={**sets, **{k: str(v) for k, v in point.items()}},
            )
            runs.append(run)
            drawn[run.spec.run_id] = point
    return runs, drawn


def save_best_trials(
    out: Path, runs: list[Any], drawn: Mapping[str, Mapping[str, Any]], trials: int
) -> list[tuple[str, bool]]:
    """Pick each optimizer's best finished trial from the store (never from Ray's files) and save it."""
    store = RunStore(tuning_store(out))
    messages = []
    for opt in dict.fromkeys(r.spec.optimizer for r in runs):
        finished = []
        for run in (r for r in runs if r.spec.optimizer == opt):
            path = store.run_dir(run.spec.task, run.spec.run_id) / SUMMARY
            if path.exists():
                summary = read_json(path)
                if summary["status"] == "complete" and summary.get("value") is not None:
                    finished.append((summary["value"], run))
        if not finished:
            messages.append((f"{opt}: no trial finished; nothing saved", False))
            continue
        task = finished[0][1].task
        sign = 1 if task.direction == "min" else -1
        value, best = min(finished, key=lambda vr: sign * vr[0])
        path = save_best(
            out,
            best.spec.task,
            best.spec.scale,
            opt,
            {
                "sets": drawn[best.spec.run_id],
                "value": value,
                "run_id": best.spec.run_id,
                "trials": trials,
                "finished": len(finished),
                "metric": task.primary_metric,
            },
        )
        messages.append(
            (f"{opt}: best {task.primary_metric} {value:.4g} with {dict(drawn[best.spec.run_id])} -> {path}", True)
        )
    return messages
