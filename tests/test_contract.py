"""The run contract, checked on every registered task (a new task is covered without a new test).

Each task runs at its `smoke` scale (seconds on a CPU), which every task must ship. For each one:
the one clip rule is applied and recorded the same way, an optimizer's declared lr scale reaches
every param group, the instruments log and summarise the same keys, the primary metric is logged before training, an impossible optimizer is refused before the
disk, a run SIGKILLed mid-way resumes to the same numbers as an uninterrupted one (the one kill-and-
resume test per task: a task's own test file adds only what its smoke scale cannot reach), and the
code fingerprint covers the task's own files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spam_bench.reports import sensitivity
from spam_bench.runners.cli import main
from spam_bench.suite import identity, seeding
from spam_bench.suite.registry import OPTIMIZERS, TASKS, OptimizerSpec
from spam_bench.suite.resolve import resolve
from spam_bench.suite.results import read_json, read_metrics

TASK_NAMES = TASKS.names()
# The summary keys the suite's instruments add to every gradient-based run.
INSTRUMENT_KEYS = {
    "optimizer_steps",
    "spike_events",
    "clip_applied_steps",
    "clipped_entries",
    "reset_steps",
    "spikes_injected",
    "gss_spikes",
    "spikes_unrecovered",
    "recovery_steps_mean",
}
CLIP_KEYS = {"grad_clip", "grad_clip_task", "grad_clip_optimizer", "grad_clip_rule"}


def _run(out: Path, task: str, opt: str, *extra: str) -> int:
    return main(["run", "--task", task, "--opt", opt, "--scale", "smoke", "--out", str(out), *extra])


def _summary(out: Path, task: str) -> dict:
    (path,) = out.glob(f"runs/{task}/*/summary.json")
    return read_json(path)


def _curve(run_dir: Path) -> list[tuple]:
    return [(m["step"], m["split"], m["name"], m["value"]) for m in read_metrics(run_dir)]


def _run_dir(out: Path, summary: dict) -> Path:
    return out / "runs" / summary["task"] / summary["run_id"]


# The contract runs' optimizer: adam_clip declaring a default lr a tenth of the task's, so that every
# check below also holds for an optimizer with its own lr scale (registry.OptimizerSpec.lr_scale).
SCALED = "adam_clip_tenth_lr"
LR_SCALE = 0.1


def _scaled_adam_clip(seen: list[float]) -> OptimizerSpec:
    """SCALED, its factory recording into `seen` the lr it is given, then every group's lr at each step."""
    base = OPTIMIZERS.get("adam_clip")

    def factory(model, model_info, *, lr, **hparams):
        seen.append(lr)
        optimizer = base.factory(model, model_info, lr=lr, **hparams)
        optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.extend(g["lr"] for g in opt.param_groups))
        return optimizer

    return dataclasses.replace(base, name=SCALED, factory=factory, lr_scale=LR_SCALE)


@pytest.fixture(scope="module")
def adam_clip_runs(tmp_path_factory) -> tuple[Path, dict[str, dict], dict[str, list[float]]]:
    """Each task's smoke run of SCALED: the store, the summaries and, per task, the lr the factory got
    followed by every param group's lr after each step."""
    out = tmp_path_factory.mktemp("contract")
    seen: list[float] = []
    spec = _scaled_adam_clip(seen)
    summaries, lrs = {}, {}
    with pytest.MonkeyPatch.context() as patch:  # the plug-in must not outlive this module
        patch.setattr(OPTIMIZERS, "_items", {**OPTIMIZERS._items, SCALED: spec})
        for task in TASK_NAMES:
            assert _run(out, task, SCALED) == 0
            summaries[task], lrs[task] = _summary(out, task), list(seen)
            seen.clear()
    return out, summaries, lrs


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_ships_a_smoke_scale(task):
    assert "smoke" in TASKS.get(task).scales()


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_the_one_clip_rule_is_applied_and_recorded(task, adam_clip_runs):
    out, summaries, _ = adam_clip_runs
    s = summaries[task]
    assert set(s) >= CLIP_KEYS
    assert s["grad_clip_optimizer"] == 1.0  # adam_clip is Adam + a clip at 1.0 on every task (scaled or not)
    expected = min(v for v in (s["grad_clip_task"], 1.0) if v is not None)
    assert s["grad_clip"] == expected
    spec = read_json(_run_dir(out, s) / "spec.json")
    assert spec["grad_clip"] == expected and spec["grad_clip_rule"] == s["grad_clip_rule"]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_a_declared_lr_scale_is_the_lr_every_param_group_trains_at_and_is_recorded(task, adam_clip_runs):
    """Whatever the task's schedule (warmup and cosine, SB3 rewriting each group's lr before every
    update, Lightning's loop), the peak lr any group steps with is the recipe's lr times the scale."""
    out, summaries, lrs = adam_clip_runs
    recipe = resolve(task=task, optimizer="adam_clip", scale="smoke").config.lr
    given, *stepped = lrs[task]
    assert given == pytest.approx(recipe * LR_SCALE, rel=1e-12)
    assert stepped and max(stepped) == pytest.approx(recipe * LR_SCALE, rel=1e-9)
    spec = read_json(_run_dir(out, summaries[task]) / "spec.json")
    assert spec["lr_scale"] == LR_SCALE and spec["task_config"]["lr"] == pytest.approx(recipe * LR_SCALE, rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_a_complete_run_drops_its_checkpoint_unless_asked_to_keep_it(task, adam_clip_runs, tmp_path):
    out, summaries, _ = adam_clip_runs
    run_dir = _run_dir(out, summaries[task])
    assert (run_dir / "summary.json").exists() and not (run_dir / "checkpoint.pt").exists()
    if task == "rl":  # the flag is the suite's, the same for every task; rl checkpoints at its end (spikes never does)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(OPTIMIZERS, "_items", {**OPTIMIZERS._items, SCALED: _scaled_adam_clip([])})
            assert _run(tmp_path, task, SCALED, "--keep-checkpoint") == 0
        kept = _run_dir(tmp_path, _summary(tmp_path, task))
        again = _summary(tmp_path, task)
        assert (kept / "checkpoint.pt").exists()
        assert (again["run_id"], again["value"]) == (summaries[task]["run_id"], summaries[task]["value"])


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_reports_the_same_instrument_keys(task, adam_clip_runs):
    out, summaries, _ = adam_clip_runs
    s = summaries[task]
    assert set(s) >= INSTRUMENT_KEYS
    assert {"injected", "loss_spikes"} <= set(s["spike_events"])
    assert s["optimizer_steps"] > 0 and s["optimizer_state_bytes"] > 0 and s["n_params"] > 0
    assert s["clip_applied_steps"] <= s["optimizer_steps"]
    optim = [m for m in read_metrics(_run_dir(out, s)) if m["split"] == "optim"]
    assert len([m for m in optim if m["name"] == "grad_norm"]) == s["optimizer_steps"]
    assert max(m["step"] for m in optim) == s["optimizer_steps"]  # one counter: the optimizer's steps


def test_what_runs_before_training_leaves_every_global_rng_where_it_was():
    def draws() -> tuple:
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    seeding.seed_everything(7)
    expected = draws()
    seeding.seed_everything(7)
    with seeding.rng_untouched():
        draws(), seeding.seed_everything(123), draws()
    assert draws() == expected


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_logs_its_primary_metric_before_training(task, adam_clip_runs):
    """An LR study caps each run at its metric before training (Wortsman et al.), read at step 0 by
    the report's own reader, so the test goes through that reader."""
    out, summaries, _ = adam_clip_runs
    s = summaries[task]
    rows = pd.DataFrame(read_metrics(_run_dir(out, s))).assign(task=task, run_id=s["run_id"])
    (initial,) = sensitivity.step0_values(rows, task, {s["run_id"]}, s["primary_metric"])
    assert math.isfinite(initial) and initial != s["value"]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_spam_reports_its_resets_through_the_suite(task, tmp_path):
    assert _run(tmp_path, task, "spam", "--set", "opt.reset_interval=3", "--set", "opt.warmup_steps=1") == 0
    s = _summary(tmp_path, task)
    assert s["reset_steps"] and s["reset_steps"][0] == 3 and s["clipped_entries"] is not None
    resets = [m["step"] for m in read_metrics(_run_dir(tmp_path, s)) if m["name"] == "optimizer_reset"]
    assert resets == s["reset_steps"]


@pytest.mark.parametrize("task", TASK_NAMES)
def test_an_optimizer_that_needs_a_closure_is_refused_before_the_disk(task, tmp_path, capsys):
    code = _run(tmp_path, task, "po:lbfgs")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "closure" in err[0] and "po:lbfgs" in err[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_a_run_killed_mid_way_resumes_to_the_same_numbers(task, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert _run(straight, task, "adamw") == 0
    s = _summary(straight, task)
    crash_at = max(1, int(s["steps"] * 0.6))
    cmd = [
        sys.executable,
        "-m",
        "spam_bench.runners.cli",
        "run",
        "--task",
        task,
        "--opt",
        "adamw",
        "--scale",
        "smoke",
        "--out",
        str(tmp_path / "killed"),
    ]
    # SIGKILL, not an exception: no `finally`, no flush, so what was on disk at that instant must suffice
    env = {**os.environ, "SPAMBENCH_CRASH_ONCE": f"{crash_at}:{tmp_path / 'markers'}:kill"}
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (killed_dir,) = (tmp_path / "killed" / "runs" / task).iterdir()
    assert not (killed_dir / "summary.json").exists()
    assert (killed_dir / "checkpoint.pt").exists() == TASKS.get(task).checkpoints, (
        "the kill must land after a checkpoint, or the resume resumes nothing"
    )
    monkeypatch.setenv("SPAMBENCH_CRASH_ONCE", env["SPAMBENCH_CRASH_ONCE"])  # spent: its marker is written
    assert _run(tmp_path / "killed", task, "adamw") == 0  # the resume, in this process
    r = _summary(tmp_path / "killed", task)
    assert r["value"] == s["value"] and r["steps"] == s["steps"]
    assert r["spike_events"] == s["spike_events"] and r["optimizer_steps"] == s["optimizer_steps"]
    assert _curve(_run_dir(tmp_path / "killed", r)) == _curve(_run_dir(straight, s))


@pytest.mark.parametrize("task", TASK_NAMES)
def test_the_code_fingerprint_covers_every_file_of_the_task_package(task, monkeypatch):
    module = TASKS.module_of(task)
    files = identity.module_closure(module, identity._package_of(module))
    package_dir = Path(sys.modules[module].__file__).parent
    own = {p for p in package_dir.glob("*.py")}
    assert own <= set(files.values()), f"not reached from {module}: {own - set(files.values())}"

    identity.component_hash.cache_clear()
    before = identity.component_hash(module)
    edited = sorted(own)[-1]
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: real_read(self) + (b"# edit" if self == edited else b""))
    identity.component_hash.cache_clear()
    assert identity.component_hash(module) != before
    identity.component_hash.cache_clear()


@pytest.mark.slow
def test_editing_an_optimizer_reruns_the_same_command_and_says_why(tmp_path, monkeypatch, capsys):
    plugin = tmp_path / "plugin" / "probe_opt"
    plugin.mkdir(parents=True)
    source = (
        "import torch\nfrom dataclasses import dataclass\n"
        "from spam_bench.suite.registry import OptimizerSpec\n\n"
        "@dataclass\nclass Config:\n    pass\n\n"
        "def make(model, model_info, *, lr):\n"
        "    return torch.optim.SGD(model.parameters(), lr=lr)\n\n"
        'SPEC = OptimizerSpec(name="probe_sgd", factory=make, config_cls=Config, description="probe")\n'
    )
    (plugin / "__init__.py").write_text(source)
    monkeypatch.syspath_prepend(str(plugin.parent))
    from spam_bench.suite.registry import OPTIMIZERS

    for attr in ("_items", "_modules", "local"):  # the probe must not outlive this test
        monkeypatch.setattr(OPTIMIZERS, attr, dict(getattr(OPTIMIZERS, attr)))
    import probe_opt

    OPTIMIZERS.register("probe_sgd", probe_opt.SPEC, module="probe_opt")
    out = tmp_path / "out"
    identity.component_hash.cache_clear()
    assert _run(out, "spikes", "probe_sgd") == 0
    first = _summary(out, "spikes")
    assert _run(out, "spikes", "probe_sgd") == 0
    assert "already complete" in capsys.readouterr().out  # same code: reused

    (plugin / "__init__.py").write_text(
        source.replace("SGD(model.parameters(), lr=lr)", "SGD(model.parameters(), lr=lr, momentum=0.5)")
    )
    identity.component_hash.cache_clear()
    assert _run(out, "spikes", "probe_sgd") == 0
    captured = capsys.readouterr()
    assert "re-running" in captured.err and "the optimizer's code changed" in captured.err
    second = _summary(out, "spikes")
    assert second["code"]["optimizer"] != first["code"]["optimizer"]
    (kept,) = (out / "superseded" / "spikes").iterdir()
    assert json.loads((kept / "summary.json").read_text())["code"]["id"] == first["code"]["id"]
    identity.component_hash.cache_clear()
