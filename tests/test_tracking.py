"""Experiment trackers, config files, `list --json` and the report's machine-readable outputs.

The trackers are the real libraries, offline: TensorBoard's own event reader, W&B's offline run files
(read with W&B's protobuf schema), MLflow's file store through `mlflow.search_runs`. Nothing here
touches the network.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import sigkill_when, small_llm_sets

from spam_bench.reports.build import LEADERBOARD_COLUMNS, write_leaderboard
from spam_bench.runners.cli import main
from spam_bench.suite import tracking
from spam_bench.suite.config_file import load_config
from spam_bench.suite.registry import OPTIMIZERS, TASKS
from spam_bench.suite.resolve import resolve
from spam_bench.suite.results import read_json, read_metrics

FIXTURES = Path(__file__).parent / "fixtures"
SMOKE = ["--task", "spikes", "--opt", "adamw", "--scale", "smoke"]
# What a summary measures about the process rather than the run: the clock, and the process's peak
# memory, which only grows within one test process (and grows with a tracker library loaded).
MEASURED = {"wall_time_s", "peak_memory_bytes", "time_split_s"}


@pytest.fixture(autouse=True)
def _tracker_env(monkeypatch):
    """The trackers' defaults (offline W&B under the run folder, MLflow's file store under out/),
    whatever the machine running the tests has set."""
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


def _run(out: Path, *extra: str) -> Path:
    assert main(["run", *SMOKE, "--out", str(out), *extra]) == 0
    (run_dir,) = (p.parent for p in out.glob("runs/spikes/*/summary.json"))
    return run_dir


def _rate_limited(run_dir: Path, split: str, name: str, every: int = tracking.DEFAULT_EVERY) -> dict[int, float]:
    """metrics.jsonl's curve as a tracker receives it: the first value in each window of `every` steps."""
    sent: dict[int, float] = {}
    for m in read_metrics(run_dir):
        if m["split"] == split and m["name"] == name and m["step"] // every not in {s // every for s in sent}:
            sent[m["step"]] = m["value"]
    return sent


def _wandb_records(run_dir: Path) -> Iterator[object]:
    """The records of a W&B offline run file, parsed with W&B's own protobuf schema.

    The file is a LevelDB-style log (a 7-byte header ":W&B", 0xBEE1, version; then 32 KiB blocks of
    records: crc32, length, type FULL/FIRST/MIDDLE/LAST, data), as W&B's former Python reader
    describes it (https://github.com/wandb/wandb/blob/v0.18.7/wandb/sdk/internal/datastore.py);
    wandb >= 0.20 reads it in its Go core only.
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the block's end
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _items(items) -> dict[str, object]:
    return {("/".join(i.nested_key) or i.key): json.loads(i.value_json) for i in items}


def _mlflow_runs(out: Path, experiment: str, monkeypatch) -> pd.DataFrame:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (out / "mlruns").resolve().as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return mlflow.search_runs(experiment_names=[experiment])


def test_tensorboard_event_files_hold_the_stores_curves(out_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _run(out_dir, "--track", "tensorboard")
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    for split, name in (("train", "loss"), ("eval", "objective"), ("optim", "grad_norm")):
        expected = (
            _rate_limited(run_dir, split, name)
            if split != "eval"
            else {m["step"]: m["value"] for m in read_metrics(run_dir) if (m["split"], m["name"]) == (split, name)}
        )
        got = {e.step: e.value for e in events.Scalars(f"{split}/{name}")}
        assert len(expected) > 1 and got == {s: float(np.float32(v)) for s, v in expected.items()}
    assert min(_rate_limited(run_dir, "train", "loss")) == 1 and 10 in _rate_limited(run_dir, "train", "loss")
    summary = read_json(run_dir / "summary.json")
    (final,) = events.Scalars("final/value")
    assert final.value == pytest.approx(summary["value"], rel=1e-6)


def test_wandb_offline_run_has_the_spec_as_config_the_group_and_the_summary(out_dir):
    run_dir = _run(out_dir, "--track", "wandb", "--track-every", "25")
    spec = read_json(run_dir / "spec.json")
    records = list(_wandb_records(run_dir))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.run_group, run.project) == ("spikes-adamw-s0", "spikes", "spam-bench")
    assert list(run.tags) == ["spikes", "adamw", "seed-0", "smoke"]
    config = {k: v for k, v in _items(run.config.update).items() if not k.startswith("_")}
    assert config == json.loads(json.dumps(spec))
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    losses = {int(h["_step"]): h["train/loss"] for h in history if "train/loss" in h}
    assert losses == pytest.approx(_rate_limited(run_dir, "train", "loss", every=25))
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    assert summary["status"] == "complete" and summary["objective"] == pytest.approx(
        read_json(run_dir / "summary.json")["value"]
    )


def test_mlflow_file_store_finds_the_run_with_params_and_final_metric(out_dir, monkeypatch):
    run_dir = _run(out_dir, "--track", "mlflow")
    summary = read_json(run_dir / "summary.json")
    (row,) = _mlflow_runs(out_dir, "spikes", monkeypatch).to_dict("records")
    assert row["status"] == "FINISHED" and row["tags.status"] == "complete"
    assert row["tags.mlflow.runName"] == "spikes-adamw-s0" and row["tags.spam_bench.run_id"] == run_dir.name
    assert row["params.spec.optimizer"] == "adamw" and row["params.task_config.steps"] == "300"
    assert row["metrics.final/objective"] == pytest.approx(summary["value"])
    assert row["metrics.train/loss"] == pytest.approx(list(_rate_limited(run_dir, "train", "loss").values())[-1])


class _Broken(tracking.TrackerSink):
    """A tracker that raises on every call (a missing login, a dead server)."""

    name = "wandb"
    calls = 0

    def _start(self, step):
        type(self).calls += 1
        raise RuntimeError("no login\nsecond line")

    def _finish(self, summary):
        type(self).calls += 1
        raise RuntimeError("no login")


def _numbers(run_dir: Path) -> tuple[list[tuple], dict]:
    lines = [(m["step"], m["split"], m["name"], m["value"]) for m in read_metrics(run_dir)]
    summary = {k: v for k, v in read_json(run_dir / "summary.json").items() if k not in MEASURED}
    return lines, summary


def test_trackers_never_change_the_run_and_a_failing_one_is_named_once(tmp_path, monkeypatch, capsys):
    plain_dir = _run(tmp_path / "plain")
    plain = _numbers(plain_dir)
    real = _numbers(_run(tmp_path / "real", "--track", "tensorboard,wandb,mlflow"))
    capsys.readouterr()
    monkeypatch.setitem(tracking.SINKS, "wandb", _Broken)
    broken_dir = _run(tmp_path / "broken", "--track", "wandb,tensorboard")
    err = capsys.readouterr().err
    assert plain == real == _numbers(broken_dir)
    assert broken_dir.name == plain_dir.name  # the same run_id
    assert err == "tracking: wandb disabled: RuntimeError: no login second line\n"
    assert _Broken.calls == 1, "a failed tracker is never called again"
    assert list((broken_dir / "tb").glob("events.out.tfevents.*")), "the other trackers carry on"


def test_an_unknown_tracker_fails_in_one_line_before_the_run(out_dir, capsys):
    assert main(["run", *SMOKE, "--out", str(out_dir), "--track", "tensorboard,neptune"]) == 2
    err = capsys.readouterr().err
    assert err == "spambench: error: track: invalid value 'neptune' (allowed: tensorboard, wandb, mlflow)\n"
    assert not out_dir.exists()


def test_a_config_file_names_the_same_run_as_the_equivalent_flags(out_dir, tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text("steps: 120\nlr: 0.02\nopt.beta2: 0.95\nopt: {eps: 1.0e-7}\n")
    first = _run(out_dir, "--config", str(config))
    capsys.readouterr()
    argv = ["run", *SMOKE, "--out", str(out_dir), "--set", "steps=120", "--set", "lr=2e-2"]
    assert main([*argv, "--set", "opt.beta2=0.95", "--set", "opt.eps=1e-7"]) == 0
    printed = capsys.readouterr().out
    assert "already complete" in printed and printed.rstrip().endswith(str(first))
    # --set wins over the file
    sets = {**load_config(config, "run").sets, "steps": "200"}
    assert resolve(task="spikes", optimizer="adamw", scale="smoke", sets=sets).spec.overrides["steps"] == 200


def test_an_unknown_config_key_is_one_line_exit_2_and_nothing_written(out_dir, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("steps: 10\nnope: 1\n")
    assert main(["run", *SMOKE, "--out", str(out_dir), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spambench: error: nope: invalid value 1 (allowed: task keys")
    assert not out_dir.exists()
    config.write_text("seeds: 0-2\n")  # a sweep key means nothing to a single run
    assert main(["run", *SMOKE, "--out", str(out_dir), "--config", str(config)]) == 2
    assert "seeds: invalid value '0-2'" in capsys.readouterr().err


def test_a_scale_file_is_recorded_by_stem_and_content(tmp_path, capsys):
    values = yaml.safe_load((TASKS.get("spikes").config_dir / "smoke.yaml").read_text())
    mine = tmp_path / "a" / "my-scale.yaml"
    mine.parent.mkdir()
    mine.write_text(yaml.safe_dump({**values, "steps": 60}))
    out = tmp_path / "out"
    argv = ["run", "--task", "spikes", "--opt", "adamw", "--out", str(out)]
    assert main([*argv, "--scale", str(mine)]) == 0
    (summary,) = (read_json(p) for p in out.glob("runs/spikes/*/summary.json"))
    assert summary["scale"].startswith("my-scale-") and summary["steps"] == 60
    moved = tmp_path / "b" / "my-scale.yaml"  # moved and reformatted: the same values, the same runs
    moved.parent.mkdir()
    moved.write_text(yaml.safe_dump({**values, "steps": 60}, default_flow_style=True))
    capsys.readouterr()
    assert main([*argv, "--scale", str(moved)]) == 0
    assert "already complete" in capsys.readouterr().out
    moved.write_text(yaml.safe_dump({**values, "steps": 61}))
    assert main([*argv, "--scale", str(moved)]) == 0
    assert len(list(out.glob("runs/spikes/*/summary.json"))) == 2
    assert main([*argv, "--scale", str(tmp_path / "missing.yaml")]) == 2


def test_a_sweep_config_is_layered_under_the_command_line(out_dir, tmp_path, monkeypatch, capsys):
    """What reaches Ray: the file's optimizers, seeds and steps, its grid axis replaced by --set, the
    trackers; a scale file's values travel with the runs (the trials register them again)."""
    from spam_bench.runners import ray_tune
    from spam_bench.suite.config_file import user_scales

    seen = {}
    monkeypatch.setattr(ray_tune, "sweep", lambda runs, options: seen.update(runs=runs, options=options) or [])
    config = tmp_path / "sweep.yaml"
    config.write_text("opt: [adamw, spam]\nseeds: [0, 1]\nsteps: 50\ngrid: {lr: [0.01, 0.02]}\ntrack: mlflow\n")
    scale = tmp_path / "quick.yaml"
    scale.write_text((TASKS.get("spikes").config_dir / "smoke.yaml").read_text())
    argv = ["sweep", "--task", "spikes", "--scale", str(scale), "--config", str(config), "--out", str(out_dir)]
    assert main([*argv, "--set", "lr=0.03", "--track-every", "5"]) == 0
    runs, options = seen["runs"], seen["options"]
    assert sorted((r.spec.optimizer, r.spec.seed) for r in runs) == [
        ("adamw", 0),
        ("adamw", 1),
        ("spam", 0),
        ("spam", 1),
    ]
    assert {(r.config.lr, r.config.steps) for r in runs} == {(0.03, 50)}
    assert (options.track, options.track_every) == (("mlflow",), 5)
    assert runs[0].spec.scale.startswith("quick-") and runs[0].spec.scale in user_scales(runs[0].task)
    assert "4 runs, 0 already complete, 4 to run" in capsys.readouterr().out


@pytest.mark.slow
def test_a_tracked_sweep_is_one_group_in_each_tool(out_dir, monkeypatch, capsys):
    argv = ["sweep", "--task", "spikes", "--opt", "adamw,spam", "--seeds", "0", "--scale", "smoke"]
    assert main([*argv, "--out", str(out_dir), "--track", "wandb,mlflow"]) == 0
    run_dirs = [p.parent for p in out_dir.glob("runs/spikes/*/summary.json")]
    assert len(run_dirs) == 2
    groups = set()
    for run_dir in run_dirs:
        (run,) = [r.run for r in _wandb_records(run_dir) if r.WhichOneof("record_type") == "run"]
        groups.add(run.run_group)
    (group,) = groups
    assert group.startswith("sweep-spikes-") and f"{group}: 2 trials finished" in capsys.readouterr().out
    runs = _mlflow_runs(out_dir, group, monkeypatch)
    assert sorted(runs["tags.spam_bench.run_id"]) == sorted(d.name for d in run_dirs)
    assert set(runs["status"]) == {"FINISHED"}
    from mlflow.tracking import MlflowClient

    names = {e.name for e in MlflowClient((out_dir / "mlruns").resolve().as_uri()).search_experiments()}
    assert names - {"Default"} == {group}


@pytest.mark.slow
def test_a_killed_and_resumed_run_shows_each_step_once_in_tensorboard(out_dir):
    """The resumed process re-logs the steps after the checkpoint; TensorBoard's purge (SummaryWriter's
    purge_step) hides what the killed process had logged from there on, so no step appears twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = ["run", "--task", "llm", "--opt", "adamw", "--out", str(out_dir), "--track", "tensorboard"]
    argv += ["--track-every", "3"]
    for s in small_llm_sets(steps=60, checkpoint_every=5):
        argv += ["--set", s]
    run_dir = sigkill_when(
        [sys.executable, "-m", "spam_bench.runners.cli", *argv], out_dir, "llm", lambda m: m[-1]["step"] >= 23
    )
    assert main(argv) == 0
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("train/loss")]
    steps = [s for s, _ in got]
    assert steps == sorted(set(steps)) and steps[-1] == 60 and len(steps) >= 60 // 3
    logged = {m["step"]: m["value"] for m in read_metrics(run_dir) if (m["split"], m["name"]) == ("train", "loss")}
    assert got == [(s, float(np.float32(logged[s]))) for s in steps]


def test_list_json_names_every_registered_task_and_optimizer(capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listing["tasks"]] == TASKS.names()
    assert [o["name"] for o in listing["optimizers"]] == OPTIMIZERS.names()
    spikes = next(t for t in listing["tasks"] if t["name"] == "spikes")
    assert spikes["metric"] == "objective" and spikes["direction"] == "min" and "smoke" in spikes["scales"]
    spam = next(o for o in listing["optimizers"] if o["name"] == "spam")
    assert spam["defaults"] == json.loads(json.dumps(OPTIMIZERS.get("spam").defaults()))
    assert set(spam["capabilities"]) == {"needs_closure", "needs_roles", "sparse_state", "devices", "dtypes"}
    assert isinstance(spam["search_space"], list)
    assert main(["list", "tasks", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"tasks", "broken"}


def test_report_writes_the_leaderboard_as_csv_and_parquet_and_every_figure_as_svg(tmp_path):
    shutil.copytree(FIXTURES / "report_runs" / "runs", tmp_path / "runs")
    # an optimizer named with mathtext in it must not break a plot
    for summary_path in (tmp_path / "runs").glob("*/adam-s*/summary.json"):
        summary = json.loads(summary_path.read_text())
        summary_path.write_text(json.dumps({**summary, "optimizer": "ad$^$am"}))
    _, report = write_leaderboard(tmp_path, all_code=True)
    csv = pd.read_csv(report / "leaderboard.csv")
    parquet = pd.read_parquet(report / "leaderboard.parquet")
    assert list(csv.columns) == list(parquet.columns) == LEADERBOARD_COLUMNS
    assert len(csv) == len(parquet) > 0 and "ad$^$am" in set(parquet["optimizer"])
    assert parquet.groupby(["task", "scale", "problem", "optimizer", "recipe"]).size().max() == 1
    assert (parquet["n"] >= 1).all() and parquet["rank"].min() == 1
    pngs = {p.stem for p in report.glob("*.png") if not p.name.startswith("spikes-")}
    assert {"profile", "curves-llm-tiny", "final-llm-tiny"} <= pngs
    assert pngs <= {p.stem for p in report.glob("*.svg")}
    assert "data:image/png;base64," in (report / "leaderboard.html").read_text()


def test_a_resumed_writer_sorts_after_the_killed_processs_file_even_within_one_second(tmp_path):
    """TensorBoard reads event files in name order (<second>.<host>.<pid>): a resumed process with a
    smaller pid that starts within the killed one's second must still come after it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    record = {"spec": {"task": "t", "optimizer": "o", "seed": 0, "scale": "s"}}
    killed = SummaryWriter(log_dir=str(tmp_path / "tb"), purge_step=1)
    for step in range(1, 31):
        killed.add_scalar("train/loss", float(step), global_step=step)
    killed.close()
    (old,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    parts = old.name.split(".")
    parts[5] = "99999999"  # the killed process's pid, larger than any this one can have
    old.rename(old.with_name(".".join(parts)))
    sink = tracking.TensorBoardSink(tmp_path, record, group="g", every=1)
    for step in range(21, 41):
        sink.log(step, "train", {"loss": 100.0 + step})
    sink.finish({"status": "complete"})
    names = sorted(p.name for p in (tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(names) == 2 and names[0] == ".".join(parts)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert got == [(s, float(s)) for s in range(1, 21)] + [(s, 100.0 + s) for s in range(21, 41)]
