"""`make gpu-check`: one prepared check of the CUDA paths, for one H100/H200-class GPU (under 8 minutes).

Three sections, each recorded even when another fails:

1. tests: the test files that skip without CUDA (`skipif(not torch.cuda.is_available())`, found by
   grepping tests/), run with pytest `-k cuda`;
2. perf: `spambench perf --device cuda` (runners/device_perf.py): fused AdamW against SPAM's eager,
   compiled and Triton kernels (Triton where installed), dense and d = 0.25, on LLaMA-60M and LLaMA-1B
   shapes, bf16 and fp32;
3. llm: 200 steps of the llm task's `paper-60m` scale through `spambench run`'s code path, on C4-format
   data and a word-level tokenizer generated here (runners/synthetic_c4.py: the GPU machine has no
   network, so neither C4 nor the T5 tokenizer), printing tokens/s and the model FLOPs utilisation
   MFU = 6 N tokens/s / peak bf16 dense FLOP/s, the peak looked up by GPU name.

Everything printed also goes to OUT/gpu_check.log, and the results to OUT/gpu_check.json (rewritten
after each section, so a run cut short still leaves what it measured); OUT also holds perf.json, the
pytest JUnit XML and the llm run's folder. `--dry-run` runs the same sections on the CPU at tiny sizes
(the CUDA tests skip, shapes shrunk 16x, the `smoke` scale for a few steps) in well under a minute, so
that CI catches a broken script (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, TextIO

import torch

from spam_bench.runners import device_perf
from spam_bench.runners import synthetic_c4 as synthetic
from spam_bench.runners.api import run as run_task
from spam_bench.suite.registry import TASKS
from spam_bench.suite.results import METRICS
from spam_bench.tasks.llm.config import LLMConfig

# Peak dense bf16 tensor-core TFLOP/s (vendor datasheets; "with sparsity" figures halved), matched in order
# against torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H200", "NVL"), 835.0),
    (("H200",), 989.0),
    (("H100", "NVL"), 835.0),
    (("H100", "PCIe"), 756.0),
    (("H100",), 989.0),
    (("A100",), 312.0),
]
CUDA_SKIP = re.compile(r"skipif\(\s*not\s+(?:torch\.)?cuda\.is_available\(\)")
TARGET_S = 480  # the whole check on one H100/H200-class GPU


def peak_tflops(gpu: str | None) -> float | None:
    """The GPU's peak dense bf16 TFLOP/s, or None for a GPU (or CPU) not in the table."""
    for words, tflops in PEAK_BF16_TFLOPS:
        if gpu and all(w in gpu for w in words):
            return tflops
    return None


def cuda_test_files(tests: Path) -> list[Path]:
    """The test files with a CUDA-only skip (what `grep -l 'skipif(not torch.cuda.is_available()' tests/` finds)."""
    return sorted(p for p in tests.glob("test_*.py") if CUDA_SKIP.search(p.read_text()))


class _Tee(io.TextIOBase):
    """Writes to several text streams: the terminal and the log file."""

    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def _junit_counts(path: Path) -> dict[str, int]:
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    root = ET.parse(path).getroot()
    for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


def section_tests(out: Path, tests: Path, timeout_s: int) -> dict[str, Any]:
    files = cuda_test_files(tests)
    if not files:
        return {"ok": False, "error": f"no test file in {tests} skips without CUDA"}
    xml = out / "pytest-cuda.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda"]
    cmd += ["--junitxml", str(xml), *(str(f.relative_to(tests.parent)) for f in files)]
    print(f"$ python {' '.join(cmd[1:])}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=tests.parent, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "files": [f.name for f in files], "error": f"pytest ran past {timeout_s} s"}
    output = (proc.stdout + proc.stderr).strip()
    print(output)
    counts = _junit_counts(xml) if xml.exists() else {}
    passed = counts.get("tests", 0) - sum(counts.get(k, 0) for k in ("failures", "errors", "skipped"))
    return {
        "ok": proc.returncode == 0,
        "files": [f.name for f in files],
        "returncode": proc.returncode,
        **counts,
        "passed": passed,
        "output_tail": output[-4000:],
    }


def section_perf(out: Path, device: str, dry_run: bool) -> dict[str, Any]:
    argv = ["--device", device, "--json", str(out / "perf.json")]
    if dry_run:  # tiny shapes, few steps (warmup still past clip_delay), no torch.compile (~25 s on a CPU)
        argv += ["--shrink", "16", "--kernels", "eager", "--warmup", "21", "--number", "2", "--blocks", "3"]
    print(f"$ spambench perf {' '.join(argv)}", flush=True)
    code = device_perf.main(argv)
    result = json.loads((out / "perf.json").read_text()) if code == 0 else {}
    return {"ok": code == 0, "returncode": code, **result}


def _steady_tokens_per_s(run_dir: Path, tokens_per_step: int, skip: int) -> float | None:
    """Tokens/s between the train logs of steps `skip` and the last: no start-up, no final evaluation."""
    walls: dict[int, float] = {}
    for line in (run_dir / METRICS).read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train" and rec["name"] == "loss":
            walls[rec["step"]] = rec["wall"]
    last = max(walls, default=0)
    if skip not in walls or last <= skip or walls[last] <= walls[skip]:
        return None
    return (last - skip) * tokens_per_step / (walls[last] - walls[skip])


def section_llm(out: Path, device: str, scale: str, steps: int, opt: str, gpu: str | None) -> dict[str, Any]:
    config = LLMConfig(**TASKS.get("llm").scale_values(scale))
    batch, seq = config.batch_size, config.seq_len
    with tempfile.TemporaryDirectory(prefix="spambench-gpu-check-") as tmp:
        start = time.perf_counter()
        # One document per sequence per step (no epoch repeats), each long enough to fill a row.
        data, tok = synthetic.write_c4(
            Path(tmp), vocab_size=config.vocab_size, train_docs=steps * batch, val_docs=batch, words_per_doc=seq + 8
        )
        print(f"generated {steps * batch:,} C4-format documents in {time.perf_counter() - start:.1f} s", flush=True)
        overrides = {
            "dataset": "c4",
            "data_files": str(data),
            "tokenizer": str(tok),
            "steps": steps,
            "eval_tokens": batch * seq,  # one evaluation batch, at the end
        }
        sets = " ".join(f"--set {k}={v}" for k, v in overrides.items())
        print(f"$ spambench run --task llm --opt {opt} --scale {scale} --device {device} {sets}", flush=True)
        result = run_task("llm", opt, scale=scale, overrides=overrides, out=out / "store", device=device, force=True)
    shape = device_perf.scale_shape(scale)
    n_total = sum(p.numel() for p in device_perf.meta_model(shape).parameters())
    n_matmul = n_total - shape.vocab_size * shape.hidden_size  # less the input-embedding table (a lookup)
    fed = batch * (seq - 1)  # C4 rows: seq_len - 1 input tokens each (next-token targets)
    steady = _steady_tokens_per_s(result.run_dir, fed, skip=min(20, steps // 2))
    peak = peak_tflops(gpu)
    mfu = 6 * n_matmul * steady / (peak * 1e12) if peak and steady else None
    mfu_all = 6 * n_total * steady / (peak * 1e12) if peak and steady else None
    summary = result.summary
    row = {
        "ok": result.status == "complete" and bool(steady),
        "scale": scale,
        "optimizer": opt,
        "steps": steps,
        "status": result.status,
        "val_ppl": result.value,
        "tokens_per_step": fed,
        "tokens_per_s": steady,
        "tokens_per_s_summary": summary.get("tokens_per_s"),
        "wall_time_s": summary.get("wall_time_s"),
        "n_params": n_total,
        "n_params_matmul": n_matmul,
        "gpu": gpu,
        "peak_bf16_tflops": peak,
        "mfu": mfu,
        "mfu_all_params": mfu_all,
        "run_dir": str(result.run_dir),
    }
    shown = f"{steady:,.0f}" if steady else "n/a"
    print(
        f"llm {scale}, {opt}, {steps} steps: {result.status}, val ppl {result.value or float('nan'):.2f}; "
        f"{shown} tokens/s "
        f"(steady, after step {min(20, steps // 2)}; the task's summary over the whole run incl. the final "
        f"evaluation: {summary.get('tokens_per_s') or 0:,.0f})"
    )
    if mfu is None:
        why = "unknown GPU" if peak is None else "no steady tokens/s"
        print(f"MFU: n/a ({why}: {gpu or device})")
    else:
        print(
            f"MFU {100 * mfu:.1f}% = 6 N tokens/s / {peak:g} TFLOP/s (bf16 dense, {gpu}); N = {n_matmul / 1e6:.1f}M: "
            f"the {n_total / 1e6:.1f}M parameters less the input-embedding table, a lookup "
            f"(with all {n_total / 1e6:.1f}M: {100 * (mfu_all or 0):.1f}%)"
        )
    return row


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m spam_bench.runners.gpu_check", description=__doc__)
    ap.add_argument("--out", default="out/gpu-check", help="results folder (gpu_check.json, gpu_check.log, ...)")
    ap.add_argument("--dry-run", action="store_true", help="the same sections on the CPU at tiny sizes")
    ap.add_argument("--device", default=None, help="default cuda (cpu with --dry-run)")
    ap.add_argument("--tests", default="tests", help="the repository's tests folder")
    ap.add_argument("--sections", default="tests,perf,llm", help="a subset of tests,perf,llm (for a rerun)")
    ap.add_argument("--opt", default="spam", help="optimizer of the llm section")
    ap.add_argument("--llm-steps", type=int, default=None, help="default 200 (5 with --dry-run)")
    ap.add_argument("--tests-timeout", type=int, default=300, help="seconds before pytest is stopped")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    device = args.device or ("cpu" if args.dry_run else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: error: no CUDA device here (torch sees none); use --dry-run on a CPU", file=sys.stderr)
        return 2
    sections = args.sections.split(",")
    if not sections or any(s not in ("tests", "perf", "llm") for s in sections):
        print(f"gpu-check: error: --sections {args.sections!r}: a subset of tests,perf,llm", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the hub; fail fast if something asks
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "device": device,
        "gpu": gpu,
        "peak_bf16_tflops": peak_tflops(gpu),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    begin = time.perf_counter()
    with open(out / "gpu_check.log", "w") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        print(f"gpu-check{' (dry run)' if args.dry_run else ''}: {gpu or device}, torch {torch.__version__}")
        for name in sections:
            print(f"\n== {name} ==", flush=True)
            start = time.perf_counter()
            try:
                if name == "tests":
                    result = section_tests(out, Path(args.tests).resolve(), args.tests_timeout)
                elif name == "perf":
                    result = section_perf(out, device, args.dry_run)
                else:
                    scale, steps = ("smoke", 5) if args.dry_run else ("paper-60m", 200)
                    result = section_llm(out, device, scale, args.llm_steps or steps, args.opt, gpu)
            except Exception as err:  # record it and go on: the other sections' results still matter
                result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                print(f"{name}: FAILED: {result['error']}")
            result["elapsed_s"] = round(time.perf_counter() - start, 1)
            print(f"{name}: {'ok' if result['ok'] else 'FAILED'} in {result['elapsed_s']} s", flush=True)
            report[name] = result
            report["elapsed_s"] = round(time.perf_counter() - begin, 1)
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        report["ok"] = all(report[s]["ok"] for s in sections)
        over = report["elapsed_s"] > TARGET_S
        target = (
            "" if args.dry_run else f" ({'OVER' if over else 'within'} the target of {TARGET_S} s on one H100/H200)"
        )
        print(f"\ngpu-check: {'ok' if report['ok'] else 'FAILED'} in {report['elapsed_s']} s{target}; results in {out}")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
