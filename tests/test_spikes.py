"""Spike instruments: the GSS formula, planted-spike counting, injection that ignores the optimizer."""

import numpy as np
import pytest
import torch

from spam_bench.suite.clipping import ClipRule
from spam_bench.suite.instruments import Instruments
from spam_bench.suite.model_info import ModelInfo
from spam_bench.suite.spike_config import SpikeFields
from spam_bench.suite.spikes import (
    KEEP_GSS,
    TRACE_ROWS,
    GradientTelemetry,
    GssRecord,
    LossSpikeDetector,
    RecoveryTracker,
    SpikeInjector,
    gss,
    gss_spike_counts,
)


def test_gss_is_magnitude_over_the_mean_magnitude_of_the_whole_trajectory():
    trace = np.array([[1.0, -2.0], [-3.0, 2.0], [2.0, 0.0], [2.0, -4.0]])
    expected = np.abs(trace) / np.array([[(1 + 3 + 2 + 2) / 4, (2 + 2 + 0 + 4) / 4]])
    np.testing.assert_allclose(gss(trace), expected)


def test_spike_counting_finds_exactly_the_planted_spikes():
    rng = np.random.default_rng(0)
    trace = rng.uniform(0.5, 1.5, size=(400, 6))  # GSS of ordinary entries stays below 3
    planted = {(10, 0), (200, 0), (33, 3), (399, 5)}
    for step, col in planted:
        trace[step, col] = 1e3 * np.sign(rng.standard_normal())
    found = {tuple(x) for x in np.argwhere(gss(trace) > 50)}
    assert found == planted
    assert gss_spike_counts(trace, ["norm", "norm", "mlp", "mlp", "output", "output"]) == {
        "norm": 2,
        "mlp": 1,
        "output": 1,
    }


def _fields(**changes) -> SpikeFields:
    return SpikeFields(**{"telemetry": False, **changes})


def _model_and_info():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 1))
    info = ModelInfo(roles={"0.weight": "mlp", "0.bias": "bias", "1.weight": "output", "1.bias": "bias"})
    return model, info


def test_injection_hits_the_same_steps_and_entries_whatever_the_gradient():
    injector = SpikeInjector(seed=3, step_fraction=0.2, entry_fraction=0.1, factor=1000.0)
    steps = [s for s in range(1, 200) if injector.is_spike_step(s)]
    assert 20 <= len(steps) <= 60
    hits = []
    for grad_value in (1.0, -0.5):  # two "optimizers" seeing different gradients
        model, _ = _model_and_info()
        for p in model.parameters():
            p.grad = torch.full_like(p, grad_value)
        assert injector.apply(steps[0], model.parameters())
        hits.append([(p.grad.abs() > 1.0).nonzero().tolist() for p in model.parameters()])
    assert hits[0] == hits[1] and any(hits[0])
    assert not injector.apply(next(s for s in range(1, 200) if s not in steps), model.parameters())


def test_the_kept_record_counts_spikes_exactly_like_the_full_trace_in_bounded_size(tmp_path):
    rng = np.random.default_rng(1)
    trace = rng.standard_normal((5000, 12)).astype(np.float32)
    trace[rng.integers(0, 5000, 40), rng.integers(0, 12, 40)] *= rng.uniform(5, 400, 40).astype(np.float32)
    roles = ["norm"] * 4 + ["mlp"] * 4 + ["output"] * 4
    GssRecord.of(trace).save(tmp_path / "r.npz")
    record = GssRecord.load(tmp_path / "r.npz")  # numbers only: allow_pickle=False
    assert record.rows == 5000 and record.trace.shape == (TRACE_ROWS, 12)
    assert record.trace_steps[0] == 0 and record.trace_steps[-1] == 4999
    np.testing.assert_array_equal(record.trace, trace[record.trace_steps])
    for threshold in (KEEP_GSS, 20.0, 50.0, 100.0):
        assert record.spike_counts(roles, threshold) == gss_spike_counts(trace, roles, threshold)
    assert sum(record.spike_counts(roles, 50.0).values()) > 0  # the fixture does spike
    with pytest.raises(ValueError, match="below"):
        record.spike_counts(roles, KEEP_GSS / 2)


def test_telemetry_flags_a_gradient_norm_spike_in_its_role_only():
    model, info = _model_and_info()
    telemetry = GradientTelemetry(model, info, spike_ratio=10.0, samples_per_tensor=4, seed=0)
    for step in range(30):
        for p in model.parameters():
            p.grad = torch.ones_like(p) * (100.0 if step == 20 and p.shape == (16, 8) else 1.0)
        metrics = telemetry.observe()
        assert metrics["grad_spike/mlp"] == float(step == 20)
        assert metrics["grad_spike/output"] == 0.0
    assert telemetry.trace().shape == (30, 4 + 4 + 4 + 1)


def test_loss_spike_is_k_times_the_running_median_and_recovery_is_counted():
    detector = LossSpikeDetector(factor=2.0)
    flags = [detector.observe(x) for x in [1.0] * 20 + [2.5, 1.0]]
    assert flags == [False] * 20 + [True, False]
    tracker = RecoveryTracker()
    for step, (loss, injected) in enumerate([(1.0, False)] * 10 + [(5.0, True), (3.0, False), (1.04, False)]):
        tracker.observe(step, loss, injected)
    assert tracker.summary() == {"spikes_tracked": 1, "spikes_unrecovered": 0, "recovery_steps_mean": 2.0}


@pytest.mark.parametrize("kernel", ["native", "eager"])
def test_spam_reports_exactly_the_entries_it_clipped_and_its_resets(kernel: str):
    from spam_bench.optimizers import spam_native
    from spam_bench.optimizers.spam import SPAM

    if kernel == "native" and spam_native.load() is None:
        pytest.skip(f"the C kernel is unavailable: {spam_native.unavailable_reason()}")
    model, info = _model_and_info()
    opt = SPAM(model.parameters(), lr=1e-3, reset_interval=40, clip_delay=5, spike_threshold=5000.0, kernel=kernel)
    logged: dict[int, dict[str, float]] = {}
    instruments = Instruments(
        model,
        info,
        _fields(),
        seed=0,
        optimizer=opt,
        clip=ClipRule(None, None),
        log=lambda step, split, metrics: logged.setdefault(step, {}).update(metrics),
    )
    weight = model[0].weight
    for step in range(1, 61):
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.01)
        if step == 30:
            weight.grad.view(-1)[[3, 17, 40]] = 100.0  # |g| = 1e4 x RMS: far past sqrt(5000) x sqrt(v)
        instruments.before_step()
        opt.step()
        instruments.after_step()
        expected = {weight: 3} if step == 30 else {}
        assert {p: n for p, n in opt.clipped_last_step.items() if n} == expected
        assert logged[step].get("clipped/mlp", 0.0) == (3.0 if step == 30 else 0.0)
    assert instruments.reset_steps == [40]
    assert instruments.clipped == {"mlp": 3}
