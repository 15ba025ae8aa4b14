"""SPAM behaviours, one per test, on tiny tensors (docs/spam.md#update-rule to #sparse-momentum)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from spam_bench.optimizers.spam import SPAM, SPEC, SPAMConfig, make, warmup_factor
from spam_bench.suite.config import build_config
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.model_info import ModelInfo

B1, B2 = 0.9, 0.999


def run_constant(opt: SPAM, p: torch.Tensor, calls: int, grad: torch.Tensor | None = None) -> None:
    for _ in range(calls):
        p.grad = torch.ones_like(p) if grad is None else grad.clone()
        opt.step()


def spike_at(call: int, **kw) -> torch.Tensor:
    """v after a 1e4 gradient at `call`, following unit gradients."""
    p = torch.zeros(1, requires_grad=True)
    opt = SPAM([p], **kw)
    run_constant(opt, p, call - 1)
    run_constant(opt, p, 1, torch.full((1,), 1e4))
    return opt.state[p]["exp_avg_sq"]


def test_defaults_are_the_papers() -> None:
    opt = SPAM([torch.zeros(1, requires_grad=True)])
    g = opt.defaults
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-6, 0.0)
    assert (opt.spike_threshold, opt.reset_interval, opt.warmup_steps, opt.clip_delay) == (5000.0, 500, 150, 20)


def test_reset_zeroes_moments_on_multiples_of_reset_interval_before_accumulating() -> None:
    p = torch.zeros(3, requires_grad=True)
    opt = SPAM([p], reset_interval=5, spike_threshold=0)
    for call in range(1, 12):
        run_constant(opt, p, 1)
        fresh = torch.allclose(opt.state[p]["exp_avg"], torch.full((3,), 1 - B1), rtol=0, atol=1e-7)
        assert fresh == (call in (1, 5, 10)), call


@pytest.mark.parametrize("call, clipped", [(2, False), (3, True), (12, False), (13, True), (19, True)])
def test_clip_window_opens_at_clip_delay_and_after_each_reset(call: int, clipped: bool) -> None:
    v = spike_at(call, reset_interval=10, clip_delay=3)
    assert bool(v.item() < 1.0) == clipped


def test_clipped_gradient_keeps_sign_and_equals_sqrt_theta_v() -> None:
    p = torch.zeros(2, requires_grad=True)
    opt = SPAM([p])
    run_constant(opt, p, 25)
    m_prev, v_prev = opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone()
    spike = torch.tensor([-1e3, 1e3])
    p.grad = spike.clone()
    opt.step()
    clipped = torch.tensor([-1.0, 1.0]) * torch.sqrt(5000 * v_prev)
    torch.testing.assert_close(opt.state[p]["exp_avg"], B1 * m_prev + (1 - B1) * clipped, rtol=1e-6, atol=0)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], B2 * v_prev + (1 - B2) * clipped**2, rtol=1e-6, atol=0)
    assert torch.equal(p.grad, spike), "the user's gradient must not be modified"


def test_warmup_factor_curve_is_001_at_reset_and_exactly_1_at_n() -> None:
    values = [warmup_factor(c, 150) for c in range(152)]
    assert values[0] == pytest.approx(0.01, abs=1e-12)
    assert values[150] == 1.0 and values[151] == 1.0 and values[149] < 1.0
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert values[75] == pytest.approx(0.5, abs=0.01)
    assert warmup_factor(0, 0) == 1.0


def test_warmup_scales_updates_after_a_reset_but_not_at_the_start() -> None:
    def deltas(n: int) -> list[float]:
        p = torch.zeros(1, requires_grad=True)
        opt = SPAM([p], lr=1e-2, reset_interval=10, warmup_steps=n, spike_threshold=0)
        out = []
        for _ in range(16):
            before = p.item()
            run_constant(opt, p, 1)
            out.append(p.item() - before)
        return out

    warm, plain = deltas(4), deltas(0)
    ratio = [w / q for w, q in zip(warm, plain)]
    assert ratio[:9] == pytest.approx([1.0] * 9)  # calls 1-9: no warmup at the start
    assert ratio[9] == pytest.approx(0.01, rel=1e-4)  # call 10: the reset call
    assert ratio[10] == pytest.approx(warmup_factor(1, 4), rel=1e-4)
    assert ratio[13:] == pytest.approx([1.0] * 3)  # calls 14-16: C >= N


def test_bias_correction_count_is_not_reset() -> None:
    p = torch.zeros(1, requires_grad=True)
    opt = SPAM([p], lr=1e-2, reset_interval=10, warmup_steps=0, spike_threshold=0)
    run_constant(opt, p, 9)
    before = p.item()
    run_constant(opt, p, 1)
    assert opt.state[p]["step"] == 10
    alpha = 1e-2 * math.sqrt(1 - B2**10) / (1 - B1**10)
    expected = -alpha * 0.1 / (math.sqrt(0.001) + 1e-6)
    assert p.item() - before == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("density", [0.25, 0.3225, 0.9])
def test_initial_mask_has_floor_of_density_times_numel_entries(density: float) -> None:
    p = torch.zeros(10, 13, requires_grad=True)
    opt = SPAM([{"params": [p], "density": density}])
    assert int(opt.mask(p).sum()) == int(density * 130) == opt.state[p]["mask_count"]
    p.grad = torch.ones_like(p)
    opt.step()
    state_bytes = sum(v.numel() * v.element_size() for v in opt.state[p].values() if torch.is_tensor(v))
    # fp32 moments of the masked entries + the packed mask (130 bits padded to 192): 8d + 1/8 B/param
    assert state_bytes == 8 * int(density * 130) + 24 <= (8 * density + 1) * p.numel()


@pytest.mark.parametrize("kernel", ["eager", "native"])
def test_masks_pack_and_update_across_blocks_chunks_and_a_ragged_tail(kernel: str) -> None:
    from spam_bench.optimizers import spam_native

    if kernel == "native" and spam_native.load() is None:
        pytest.skip(f"the C kernel is unavailable: {spam_native.unavailable_reason()}")
    gen = torch.Generator().manual_seed(0)
    p = torch.zeros(301, 997, requires_grad=True)  # 300,097 positions: many chunks, a tail of 1 bit
    opt = SPAM([{"params": [p], "density": 0.6}], lr=1e-2, block_size=70_000, kernel=kernel)
    mask = opt.mask(p)
    assert int(mask.sum()) == int(0.6 * p.numel()) and opt.state[p]["mask_bits"].numel() == 37_520
    p.grad = torch.randn(p.shape, generator=gen)
    opt.step()  # eager: blocks of 70,000 positions
    moved = p.detach() != 0
    assert torch.equal(moved, mask)
    root = math.sqrt(1 - B2)
    expected = -1e-2 * p.grad * root / (root * p.grad.abs() + 1e-6)  # first Adam step
    torch.testing.assert_close(p.detach()[mask], expected[mask], rtol=1e-5, atol=1e-8)


def test_masks_resample_at_the_end_of_calls_delta_t_minus_one() -> None:
    p = torch.zeros(20, 20, requires_grad=True)
    opt = SPAM([{"params": [p], "density": 0.25}], reset_interval=6)
    changed = []
    for _ in range(12):
        before = opt.mask(p).clone()
        run_constant(opt, p, 1)
        changed.append(not torch.equal(before, opt.mask(p)))
    assert [c for c, flag in enumerate(changed, 1) if flag] == [5, 11]
    assert opt.state[p]["exp_avg"].numel() == int(opt.mask(p).sum())
    assert 60 < int(opt.mask(p).sum()) < 140  # Bernoulli(0.25) of 400


def test_only_masked_entries_move() -> None:
    p = torch.randn(8, 8).requires_grad_()
    start = p.detach().clone()
    opt = SPAM([{"params": [p], "density": 0.25}], lr=1e-2, reset_interval=100)
    for _ in range(10):
        p.grad = torch.randn(8, 8)
        opt.step()
    mask = opt.mask(p)
    assert torch.equal(p.detach()[~mask], start[~mask])
    assert (p.detach()[mask] != start[mask]).all()


def test_weight_decay_reaches_dense_and_masked_params_everywhere() -> None:
    dense, masked = torch.randn(5).requires_grad_(), torch.randn(6, 6).requires_grad_()
    d0, m0 = dense.detach().clone(), masked.detach().clone()
    opt = SPAM([{"params": [dense]}, {"params": [masked], "density": 0.25}], lr=0.1, weight_decay=0.1)
    dense.grad, masked.grad = torch.zeros(5), torch.zeros(6, 6)  # zero update, decay only
    opt.step()
    torch.testing.assert_close(dense.detach(), d0 - 0.01 * d0)
    torch.testing.assert_close(masked.detach(), m0 - 0.01 * m0)  # outside the mask too


def test_reset_interval_zero_never_resets_or_resamples() -> None:
    p = torch.zeros(6, 6, requires_grad=True)
    opt = SPAM([{"params": [p], "density": 0.5}], reset_interval=0, clip_delay=3)
    mask = opt.mask(p).clone()
    run_constant(opt, p, 40)
    assert torch.equal(opt.mask(p), mask)
    assert opt.state[p]["exp_avg"][0].item() == pytest.approx(1 - B1**40, rel=1e-5)
    assert spike_at(3, reset_interval=0, clip_delay=3).item() < 1.0  # window needs only t >= A


def test_zero_v_entries_freeze_in_the_clip_window_as_official() -> None:
    p = torch.zeros(2, requires_grad=True)
    opt = SPAM([p], lr=1e-2)
    run_constant(opt, p, 30, torch.tensor([1.0, 0.0]))
    run_constant(opt, p, 20, torch.tensor([1.0, 1.0]))
    assert p[1].item() == 0.0 and opt.state[p]["exp_avg_sq"][1].item() == 0.0


def test_guard_zero_v_lets_late_entries_move() -> None:
    p = torch.zeros(2, requires_grad=True)
    opt = SPAM([p], lr=1e-2, guard_zero_v=True)
    run_constant(opt, p, 30, torch.tensor([1.0, 0.0]))
    run_constant(opt, p, 20, torch.tensor([1.0, 1.0]))
    assert p[1].item() < -0.05


def test_spike_inflates_adams_state_but_not_spams() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.ones(20)
    noise = [0.1 * torch.randn(20, generator=gen) for _ in range(300)]
    for k in (40, 41, 120):
        noise[k] = noise[k] * 1e5

    def train(opt_cls, **kw) -> tuple[float, float]:
        p = torch.zeros(20, requires_grad=True)
        opt = opt_cls([p], lr=1e-2, **kw)
        peak = 0.0
        for g in noise:
            p.grad = p.detach() - target + g
            opt.step()
            peak = max(peak, opt.state[p]["exp_avg_sq"].max().item())
        return peak, float(((p.detach() - target) ** 2).mean())

    adam_v, adam_loss = train(torch.optim.Adam, eps=1e-6)
    spam_v, spam_loss = train(SPAM, clip_delay=5)
    assert adam_v > 1e3 and spam_v < 10.0
    assert spam_loss < 0.5 * adam_loss  # Adam stalls behind its inflated v


def test_params_without_grad_are_skipped_but_reset_and_counters_are_global() -> None:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = SPAM([a, b], reset_interval=4, spike_threshold=0)
    for call in range(1, 5):
        a.grad = torch.ones(2)
        b.grad = torch.ones(2) if call <= 2 else None
        opt.step()
    assert opt.state[a]["step"] == 4 and opt.state[b]["step"] == 2
    assert opt.state_dict()["spam"]["step"] == 4
    assert torch.count_nonzero(opt.state[b]["exp_avg"]) == 0  # reset at call 4 without a grad


def test_lr_scheduler_and_closure() -> None:
    p = torch.ones(3, requires_grad=True)
    opt = SPAM([p], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch == 0 else 0.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(3.0)
    sched.step()
    moved = p.detach().clone()
    opt.step(closure)
    assert torch.equal(p.detach(), moved) and moved[0].item() < 1.0


def test_density_group_rejects_non_2d_params() -> None:
    with pytest.raises(ValueError, match="2-D"):
        SPAM([{"params": [torch.zeros(4, requires_grad=True)], "density": 0.5}])
    with pytest.raises(ValueError, match="density"):
        SPAM([{"params": [torch.zeros(4, 4, requires_grad=True)], "density": 1.5}])


def test_factory_masks_only_2d_attention_and_mlp_weights() -> None:
    model = torch.nn.ModuleDict(
        {
            "embed": torch.nn.Embedding(10, 4),
            "q": torch.nn.Linear(4, 4, bias=False),
            "mlp": torch.nn.Linear(4, 8),
            "norm": torch.nn.LayerNorm(4, bias=False),
            "head": torch.nn.Linear(4, 10, bias=False),
        }
    )
    info = ModelInfo(
        roles={
            "embed.weight": "embedding",
            "q.weight": "attn_q",
            "mlp.weight": "mlp",
            "mlp.bias": "mlp",
            "norm.weight": "norm",
            "head.weight": "output",
        }
    )
    opt = make(model, info, lr=1e-3, density=0.25)
    dense, sparse = opt.param_groups
    assert "density" not in dense and sparse["density"] == 0.25
    assert {id(p) for p in sparse["params"]} == {id(model["q"].weight), id(model["mlp"].weight)}
    assert len(dense["params"]) == 4  # embed, mlp.bias, norm, head
    assert len(make(model, info, lr=1e-3).param_groups) == 1
    assert SPEC.name == "spam" and SPEC.build(model, info, 1e-3, {"density": "0.5"}).param_groups[1]["density"] == 0.5


@pytest.mark.parametrize(
    "field, value",
    [
        ("density", 0),
        ("density", 1.5),
        ("reset_interval", -1),
        ("spike_threshold", -1),
        ("state_dtype", "fp16"),
        ("clip_delay", 2.5),
    ],
)
def test_config_rejects_out_of_range_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        build_config(SPAMConfig, {field: value})
