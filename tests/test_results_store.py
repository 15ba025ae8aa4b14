"""The results store: atomic writes, complete-only reading, and metrics truncated back on resume."""

import json

import torch

from spam_bench.reports.summary import load_runs
from spam_bench.suite.results import RunRecorder, RunStore, atomic_write_json, read_metrics


def test_atomic_json_leaves_no_temp_file_and_stores_nan_as_null(tmp_path):
    atomic_write_json(tmp_path / "summary.json", {"value": float("nan"), "ok": 1.5})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"value": None, "ok": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_run_without_summary_is_incomplete_and_never_reported(tmp_path):
    store = RunStore(tmp_path)
    rec = RunRecorder(store.run_dir("llm", "r1"), {"run_id": "r1"})
    rec.log(1, "train", {"loss": 1.0})
    rec.close()
    assert not RunStore.is_complete(store.run_dir("llm", "r1"))
    assert list(store.complete_runs()) == []
    runs, long = load_runs(store)
    assert runs.empty and long.empty


def test_resume_truncates_metrics_logged_after_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    rec = RunRecorder(run_dir, {})
    rec.log(1, "train", {"loss": 3.0})
    rec.save_checkpoint({"step": 1, "w": torch.ones(2)})
    rec.log(2, "train", {"loss": 2.0})  # the process dies before the next checkpoint
    rec.close()
    rec = RunRecorder(run_dir, {})
    state = rec.load_checkpoint()
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(2))
    rec.log(2, "train", {"loss": 2.5})
    rec.close()
    assert [(m["step"], m["value"]) for m in read_metrics(run_dir)] == [(1, 3.0), (2, 2.5)]


def test_restart_without_checkpoint_discards_partial_metrics(tmp_path):
    rec = RunRecorder(tmp_path / "run", {})
    rec.log(1, "train", {"loss": 3.0})
    rec.close()
    rec = RunRecorder(tmp_path / "run", {})
    assert rec.load_checkpoint() is None
    rec.close()
    assert read_metrics(tmp_path / "run") == []


def test_discard_removes_the_folder(tmp_path):
    d = tmp_path / "runs" / "llm" / "x"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("")
    RunStore.discard(d)
    assert not d.exists() and list(d.parent.iterdir()) == []
