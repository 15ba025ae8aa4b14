"""`make perf-roofline` (runners/roofline.py): the tiny language models' FLOPs, counted by torch's
FlopCounterMode, agree with the count from the architecture; the table's ceilings follow from what
it measured; bad flags exit 2 in one line."""

import re

import pytest
import torch

from spam_bench.runners import roofline


def _analytic_gflop(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward + backward FLOPs of the tiny LLaMA from its shapes: 6 per token per Linear weight (2 forward,
    4 backward), plus full attention: 2 forward and 5 backward (b*h, s, d) x (d, s) matmuls per layer."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention_layers = [m for m in model.modules() if type(m).__name__ == "Attention"]
    batch, seq = x.shape
    heads, head_dim = attention_layers[0].n_heads, attention_layers[0].head_dim
    one_bmm = 2 * batch * heads * seq * seq * head_dim
    return (6 * x.numel() * linear + len(attention_layers) * 7 * one_bmm) / 1e9


@pytest.mark.parametrize("task", ["llm", "llm4bit"])
def test_flop_count_matches_the_architecture(task):
    model, x, y = roofline._model_and_batch(task)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=roofline.CPU_ATTENTION_FLOPS) as counter:
        roofline._pass(model, x, y)
    assert counter.get_total_flops() / 1e9 == pytest.approx(_analytic_gflop(model, x), rel=1e-9)


def test_the_table_states_what_it_measured(capsys):
    assert roofline.main(["--tasks", "llm", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("| llm |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    gflop, ms, achieved, peak = (float(c) for c in cells[1:5])
    share, dense = (float(c.rstrip("%")) / 100 for c in cells[5:7])
    free, at_peak = (float(c.rstrip("x")) for c in cells[7:9])
    assert achieved == pytest.approx(gflop / (ms / 1000), rel=0.01)
    assert share > 0 and peak > 0  # share: the median of per-round ratios, measured side by side
    # the shares are printed as whole percents and the ceilings to 2 decimals: compare within that rounding
    assert 0 < dense < 1 and 1 / (dense + 0.005) - 0.005 <= free <= 1 / max(dense - 0.005, 1e-9) + 0.005
    assert 1 / (share + 0.005) - 0.005 <= at_peak <= 1 / max(share - 0.005, 1e-9) + 0.005
    assert re.search(r"1 thread\(s\), torch \S+, float32; peak = torch.mm at \d+x\d+x\d+", out)


@pytest.mark.parametrize(
    "argv, field", [(["--tasks", "rl"], "tasks"), (["--steps", "0"], "steps"), (["--threads", "0"], "threads")]
)
def test_bad_flags_exit_2_in_one_line(argv, field, capsys):
    with pytest.raises(SystemExit) as exit_info:
        roofline.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"roofline: {field}: invalid value")
