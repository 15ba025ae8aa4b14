"""Every bad input: one line naming the field, the value and what is allowed; exit 2; nothing written."""

import subprocess
import sys

import pytest

from spam_bench.runners.cli import main

BAD_INPUTS = [
    (["--task", "nope", "--opt", "adamw"], "task: invalid value 'nope' (allowed: one of llm"),
    (["--task", "llm", "--opt", "nope"], "optimizer: invalid value 'nope' (allowed: one of adafactor"),
    (["--task", "llm", "--opt", "adamw", "--scale", "huge"], "scale: invalid value 'huge' (allowed: one of paper-130m"),
    (["--task", "llm", "--opt", "adamw", "--set", "stepz=3"], "stepz: invalid value '3' (allowed: task keys"),
    (["--task", "llm", "--opt", "adamw", "--set", "steps=abc"], "steps: invalid value 'abc' (allowed: int)"),
    (["--task", "llm", "--opt", "adamw", "--set", "steps=2.5"], "steps: invalid value '2.5' (allowed: int)"),
    (["--task", "llm", "--opt", "adamw", "--set", "lr=0"], "lr: invalid value 0.0 (allowed: float > 0.0)"),
    (["--task", "llm", "--opt", "adamw", "--set", "lr=-1e-3"], "lr: invalid value -0.001 (allowed: float > 0.0)"),
    (["--task", "llm", "--opt", "adamw", "--set", "lr=nan"], "lr: invalid value nan (allowed: finite float > 0.0)"),
    (
        ["--task", "llm", "--opt", "adamw", "--set", "dtype=fp8"],
        "dtype: invalid value 'fp8' (allowed: one of float32, bfloat16)",
    ),
    (["--task", "llm", "--opt", "adamw", "--seed", "-1"], "seed: invalid value -1 (allowed: int >= 0)"),
    (["--task", "llm", "--opt", "adamw", "--seed", "x"], "seed: invalid value 'x' (allowed: int)"),
    (["--task", "llm", "--opt", "adamw", "--set", "steps"], "--set: invalid value 'steps' (allowed: key=value)"),
    (
        ["--task", "llm", "--opt", "adamw", "--set", "opt.beta9=1"],
        "opt.beta9: invalid value '1' (allowed: optimizer adamw keys",
    ),
    (
        ["--task", "llm", "--opt", "adamw", "--set", "opt.beta2=1.5"],
        "opt.beta2: invalid value 1.5 (allowed: float >= 0.0 and < 1.0)",
    ),
    (
        ["--task", "llm", "--opt", "adamw", "--device", "tpu"],
        "device: invalid value 'tpu' (allowed: cpu, cuda or cuda:N)",
    ),
    (
        ["--task", "llm", "--opt", "adamw", "--set", "n_heads=3"],
        "n_heads: invalid value 3 (allowed: a divisor of hidden_size=128)",
    ),
    (
        ["--task", "spikes", "--opt", "po:lbfgs"],
        "opt: invalid value 'po:lbfgs' (allowed: an optimizer that steps without a closure",
    ),
]
if not __import__("torch").cuda.is_available():  # a device this machine does not have
    BAD_INPUTS += [
        (
            ["--task", "spikes", "--opt", "adamw", "--device", "cuda"],
            "device: invalid value 'cuda' (allowed: cpu (no CUDA",
        ),
        (
            ["--task", "llm", "--opt", "adamw", "--device", "cuda:99"],
            "device: invalid value 'cuda:99' (allowed: cpu (no CUDA",
        ),
    ]


@pytest.mark.parametrize("argv,expected", BAD_INPUTS, ids=[e.split(":")[0] for _, e in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, expected, out_dir, capsys):
    code = main(["run", *argv, "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("spambench: error: ")
    assert expected in err
    assert not out_dir.exists()


def test_console_script_exits_2_for_unknown_flag(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "spam_bench.runners.cli", "run", "--task", "llm", "--opt", "adamw", "--bogus"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unrecognized arguments: --bogus" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_list_shows_tasks_scales_and_optimizer_defaults(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "llm" in out and "paper-60m" in out and "tiny" in out
    assert "adamw" in out and "eps=1e-08" in out
