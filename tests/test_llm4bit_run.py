"""The llm4bit task end to end on the real tiny corpus: llm's scales, adamw and spam runs, resume."""

import pytest
from conftest import small_llm_sets

from spam_bench.runners.cli import main
from spam_bench.suite.resolve import resolve
from spam_bench.suite.results import read_json, read_metrics
from spam_bench.tasks.llm import TASK as LLM_TASK
from spam_bench.tasks.llm4bit import TASK

pytestmark = pytest.mark.slow  # end-to-end runs: `make test` runs them, `make test-fast` skips them


def _run(out_dir, *sets, opt="adamw", extra=()):
    argv = ["run", "--task", "llm4bit", "--opt", opt, "--out", str(out_dir), *extra]
    for s in sets:
        argv += ["--set", s]
    return main(argv)


def _run_dirs(out_dir):
    return sorted((out_dir / "runs" / "llm4bit").iterdir())


def _curve(run_dir):
    return [(m["step"], m["split"], m["name"], m["value"]) for m in read_metrics(run_dir)]


def test_scales_are_llms_with_the_qat_budget():
    assert TASK.scales() == LLM_TASK.scales()
    assert TASK.scale_values("tiny") == LLM_TASK.scale_values("tiny")
    for scale in ("paper-60m", "paper-1b"):
        assert TASK.scale_values(scale) == {**LLM_TASK.scale_values(scale), "steps": 20000}
    run = resolve(task="llm4bit", optimizer="adamw", scale="paper-350m")
    assert run.config.hidden_size == 1024 and run.config.format == "w4a4" and run.config.act_group_size == 64


@pytest.mark.parametrize("opt", ["adamw", "spam"])
def test_tiny_run_trains_and_records_the_quantization(out_dir, opt):
    assert _run(out_dir, *small_llm_sets(), opt=opt) == 0
    (run_dir,) = _run_dirs(out_dir)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "complete" and summary["steps"] == 30 and summary["optimizer"] == opt
    assert summary["primary_metric"] == "val_ppl" and summary["direction"] == "min"
    assert summary["quant_format"] == "w4a4" and summary["quant_weight_bits"] == 4 and summary["quant_act_bits"] == 4
    assert summary["quant_act_group_size"] == 64 and summary["quant_stochastic_round"] is True
    train = [v for _, split, name, v in _curve(run_dir) if split == "train" and name == "loss"]
    assert sum(train[-5:]) / 5 < sum(train[:5]) / 5 - 0.5  # the loss clearly falls despite 4 bits
    assert summary["value"] < 2048
    spec = read_json(run_dir / "spec.json")
    assert spec["task_config"]["format"] == "w4a4" and spec["task_config"]["weight_topk"] == 0


def test_other_formats_run_and_are_told_apart(out_dir):
    for fmt in ("w8a8", "fp4"):
        assert _run(out_dir, *small_llm_sets(steps=5, eval_every=5), f"format={fmt}") == 0
    summaries = [read_json(d / "summary.json") for d in _run_dirs(out_dir)]
    assert {(s["quant_format"], s["quant_act_group_size"], s["quant_weight_topk"]) for s in summaries} == {
        ("w8a8", 64, 0),
        ("fp4", 256, 2),
    }
    assert len({s["run_id"] for s in summaries}) == 2
