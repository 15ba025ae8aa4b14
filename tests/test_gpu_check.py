"""`make gpu-check`: its CPU dry run end to end, and the pieces it relies on (no GPU needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spam_bench.runners import cli, device_perf, gpu_check
from spam_bench.runners import synthetic_c4 as synthetic
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.registry import TASKS
from spam_bench.tasks.llm.config import LLMConfig, parameter_count

TESTS = Path(__file__).parent


@pytest.mark.slow  # ~10-20 s: a pytest subprocess, the perf table and a 5-step llm run
def test_dry_run_writes_the_perf_table_and_tokens_per_s(tmp_path) -> None:
    out = tmp_path / "gpu-check"
    cmd = [sys.executable, "-m", "spam_bench.runners.gpu_check", "--dry-run", "--out", str(out), "--tests", str(TESTS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] and report["dry_run"] and report["device"] == "cpu"
    tests = report["tests"]
    assert "test_spam_equivalence.py" in tests["files"] and tests["tests"] > 0 and tests["failures"] == 0
    if not torch.cuda.is_available():
        assert tests["skipped"] == tests["tests"]
    rows = report["perf"]["rows"]
    kinds = {(r["shapes"], r["dtype"], r["variant"]) for r in rows}
    for shapes in ("paper-60m/16", "paper-1b/16"):
        for dtype in ("bfloat16", "float32"):
            for variant in ("torch AdamW fused", "spam dense, eager", "spam density 0.25, eager"):
                assert (shapes, dtype, variant) in kinds
    assert all(r["ms_per_step"] > 0 and r["vs_fused_adamw"] > 0 for r in rows)
    assert all(r["target_met"] is not None for r in rows if r["variant"] != "torch AdamW fused")
    llm = report["llm"]
    assert llm["status"] == "complete" and llm["tokens_per_s"] > 0 and llm["mfu"] is None  # no GPU: no peak
    log = (out / "gpu_check.log").read_text()
    assert "| paper-1b/16 | float32 | spam density 0.25, eager |" in log and "tokens/s" in log
    assert json.loads((out / "perf.json").read_text())["rows"] == rows


def test_the_cuda_tests_are_found_by_their_skip() -> None:
    files = [p.name for p in gpu_check.cuda_test_files(TESTS)]
    assert "test_spam_equivalence.py" in files and "test_gpu_check.py" not in files


def test_peak_flops_by_gpu_name() -> None:
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0  # the SXM part
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_tflops("Tesla T4") is None and gpu_check.peak_tflops(None) is None


def test_perf_shapes_are_the_llm_tasks_paper_models() -> None:
    for scale in ("paper-60m", "paper-1b"):
        config = LLMConfig(**TASKS.get("llm").scale_values(scale))
        model = device_perf.meta_model(device_perf.scale_shape(scale))
        assert sum(p.numel() for p in model.parameters()) == parameter_count(config)
        assert all(p.is_meta for p in model.parameters())
    small = device_perf.scale_shape("paper-1b", 16)
    assert small.hidden_size % small.n_heads == 0 and (small.hidden_size // small.n_heads) % 2 == 0
    assert sum(p.numel() for p in device_perf.meta_model(small).parameters()) < 1_000_000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_perf_on_cuda_without_cuda_is_one_line_and_exit_2(capsys) -> None:
    assert cli.main(["perf", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spambench: error: device: invalid value 'cuda'") and err.count("\n") == 1


def test_c4_accepts_a_local_tokenizer_file_and_still_refuses_other_paths(tmp_path) -> None:
    data, tok = synthetic.write_c4(tmp_path, vocab_size=64, train_docs=3, val_docs=2, words_per_doc=10)
    assert synthetic.tokenizer(64).get_vocab_size() == 64
    LLMConfig(dataset="c4", data_files=str(data), tokenizer=str(tok), vocab_size=64).validate()
    for bad in ("../../../etc/passwd", str(tmp_path / "missing.json"), str(data)):
        with pytest.raises(ConfigError, match="tokenizers hub name"):
            LLMConfig(dataset="c4", tokenizer=bad).validate()
    rows = [json.loads(line) for line in (data / "c4-train.00000-of-00001.json").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"text", "timestamp", "url"} and len(rows[0]["text"].split()) == 10
