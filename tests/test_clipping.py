"""The one clip rule (suite/clipping.py) and its place in the instruments' order of work."""

import pytest
import torch

from spam_bench.suite.clipping import ClipRule
from spam_bench.suite.instruments import Instruments
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.spike_config import SpikeFields


@pytest.mark.parametrize(
    "task,optimizer,effective",
    [(None, None, None), (0.5, None, 0.5), (None, 1.0, 1.0), (0.5, 1.0, 0.5), (2.0, 1.0, 1.0)],
)
def test_the_recipes_clip_and_the_optimizers_both_apply_so_the_tighter_wins(task, optimizer, effective):
    rule = ClipRule(task=task, optimizer=optimizer)
    assert rule.effective == effective
    assert rule.record()["grad_clip"] == effective
    assert (rule.record()["grad_clip_task"], rule.record()["grad_clip_optimizer"]) == (task, optimizer)


def test_an_injected_spike_is_measured_before_the_clip_and_clipped_after_it():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    info = ModelInfo(roles={"weight": "mlp", "bias": "bias"})
    logged: dict = {}
    fields = SpikeFields(telemetry=False, inject_step_fraction=1.0, inject_entry_fraction=0.5, inject_factor=1000.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    instruments = Instruments(
        model,
        info,
        fields,
        seed=0,
        optimizer=opt,
        clip=ClipRule(task=None, optimizer=1.0),
        log=lambda step, split, metrics: logged.update(metrics),
    )
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.01)
    norm = instruments.before_step()
    instruments.after_step(loss=1.0)
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (
        norm > 100 * 0.01 * 72**0.5 and logged["grad_norm"] == norm
    )  # 100x the unspiked norm and logged["injected_spike"] == 1.0
    assert float(after) == pytest.approx(1.0, rel=1e-5)
    assert instruments.clipped_steps == 1 and instruments.step == 1


def test_a_non_finite_gradient_is_not_clipped_into_nans_everywhere():
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    instruments = Instruments(
        model,
        ModelInfo(roles={"weight": "mlp", "bias": "bias"}),
        SpikeFields(telemetry=False),
        seed=0,
        optimizer=opt,
        clip=ClipRule(task=0.5, optimizer=None),
        log=lambda *_: None,
    )
    model.weight.grad = torch.tensor([[float("inf"), 1.0, 1.0, 1.0]])
    model.bias.grad = torch.ones(1)
    instruments.before_step()
    assert float(model.bias.grad) == 1.0 and instruments.clipped_steps == 0
