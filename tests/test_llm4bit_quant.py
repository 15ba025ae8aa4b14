"""The llm4bit fake quantizers, QLinear and the model swap: error bounds, groups, STE, outliers, rounding."""

import pytest
import torch
from torch import nn

from spam_bench.suite.config import build_config
from spam_bench.suite.errors import ConfigError
from spam_bench.tasks.llm.model import Llama, LlamaShape
from spam_bench.tasks.llm4bit import quant
from spam_bench.tasks.llm4bit.config import LLM4bitConfig
from spam_bench.tasks.llm4bit.model import QUANTIZED, QLinear, QuantSpec, build_quantized_llama

TOL = 1e-6


def _groups(x, g):
    """The reference grouping: row-wise chunks of g, the last one shorter (no padding)."""
    return list(x.split(g, dim=-1))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("cols", [512, 300, 100])  # a multiple of the group, a ragged tail, shorter than a group
def test_weight_error_is_within_half_a_step_of_each_group(bits, cols):
    w = torch.randn(6, cols) * 0.02 + 0.01
    wq = quant.int_asymmetric(w, bits, 256)
    assert wq.shape == w.shape and wq.dtype == w.dtype
    for chunk, qchunk in zip(_groups(w, 256), _groups(wq, 256)):
        half_step = (chunk.amax(-1) - chunk.amin(-1)) / (2**bits - 1) / 2
        assert ((qchunk - chunk).abs().amax(-1) <= half_step + TOL).all()
        # at most 2^b distinct values per group row
        assert all(len(row.unique()) <= 2**bits for row in qchunk)


def test_weight_group_padding_does_not_leak_into_the_last_group():
    w = torch.randn(3, 300)
    wq = quant.int_asymmetric(w, 4, 256)
    # the ragged tail of 44 quantizes exactly as it would on its own
    assert torch.equal(wq[:, 256:], quant.int_asymmetric(w[:, 256:].contiguous(), 4, 44))
    assert torch.equal(wq[:, :256], quant.int_asymmetric(w[:, :256].contiguous(), 4, 256))


def test_weight_groups_that_do_not_contain_zero_keep_the_bound():
    w = torch.rand(2, 256) + 5.0  # all positive: the official clamped zero point would clip these
    wq = quant.int_asymmetric(w, 4, 256)
    assert ((wq - w).abs() <= (w.amax(-1, keepdim=True) - w.amin(-1, keepdim=True)) / 15 / 2 + TOL).all()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("cols", [128, 100])
def test_activation_error_is_within_half_a_step_of_each_group(bits, cols):
    x = torch.randn(2, 5, cols)
    xq = quant.int_symmetric(x, bits, 64, topk=0)
    assert xq.shape == x.shape
    for chunk, qchunk in zip(_groups(x, 64), _groups(xq, 64)):
        half_step = chunk.abs().amax(-1) / (2 ** (bits - 1) - 1) / 2
        assert ((qchunk - chunk).abs().amax(-1) <= half_step + TOL).all()


def test_activation_outliers_are_kept_exactly_and_do_not_set_the_scale():
    x = torch.randn(4, 64)
    x[:, 7], x[:, 40] = 1000.0, -500.0
    xq = quant.int_symmetric(x, 4, 64, topk=2)
    assert torch.equal(xq[:, [7, 40]], x[:, [7, 40]])
    rest = torch.cat((x[:, :7], x[:, 8:40], x[:, 41:]), dim=1)
    rest_q = torch.cat((xq[:, :7], xq[:, 8:40], xq[:, 41:]), dim=1)
    assert ((rest_q - rest).abs() <= rest.abs().amax(-1, keepdim=True) / 7 / 2 + TOL).all()


def _ties_and_nans(seed: int) -> torch.Tensor:
    g = torch.randn(3, 50, 64, generator=torch.Generator().manual_seed(seed))
    g[0, 0, 5] = g[0, 0, 9] = -g[0, 0].abs().max() - 1  # two equal |g| at the top of one group
    g[1, 3, :] = 0.0  # a group of zeros: every entry ties
    g[2, 7, 11] = float("nan")  # NaN wins
    return g


@pytest.mark.parametrize("k", [1, 2, 5])
def test_outlier_picks_match_argmax_on_ties_and_nan(k):
    # The first of equal maxima, and NaN before anything, as k argmax passes would pick them.
    g = _ties_and_nans(k)
    remaining, expected = g.abs(), []
    for _ in range(k):
        expected.append(remaining.argmax(-1, keepdim=True))
        remaining.scatter_(-1, expected[-1], -1.0)
    assert torch.equal(quant._top_abs_indices(g, k), torch.cat(expected, dim=-1))


@pytest.mark.parametrize("k", [1, 2, 5])
def test_outlier_picks_match_torch_topk(k):
    # The argmax-based picker must choose exactly what torch.topk chooses, in the same order.
    g = torch.randn(3, 50, 64, generator=torch.Generator().manual_seed(k))
    before = g.clone()
    expected = g.abs().topk(k, dim=-1).indices
    assert torch.equal(quant._top_abs_indices(g, k), expected)
    assert torch.equal(g, before)  # it marks winners in a copy, never in the activations


def test_stochastic_rounding_is_unbiased_in_expectation():
    x = torch.randn(1, 64).expand(4000, 64).contiguous()
    gen = torch.Generator().manual_seed(0)
    xq = quant.int_symmetric(x, 4, 64, topk=0, generator=gen)
    step = x[0].abs().max() / 7
    assert ((xq - x).abs() < step + TOL).all()
    # 4000 draws: the standard error of the mean is <= step / 2 / sqrt(4000) ~ step / 126
    assert (xq.mean(0) - x[0]).abs().max() < step / 25
    assert (xq != quant.int_symmetric(x, 4, 64, topk=0)).any()  # it really is not round-to-nearest


def test_stochastic_rounding_is_reproducible_with_a_seed():
    x = torch.randn(8, 64)

    def draw(seed):
        return quant.int_symmetric(x, 4, 64, topk=2, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))


def test_e1m2_is_the_uniform_grid_of_absmax_over_seven_with_outliers_kept():
    x = torch.randn(3, 300)
    x[0, 5] = 50.0
    xq = quant.minifloat(x, 256, exp_bits=1, man_bits=2, topk=2)
    assert xq[0, 5] == 50.0
    for chunk, qchunk in zip(_groups(x, 256), _groups(xq, 256)):
        top2 = chunk.abs().topk(2, dim=-1).indices
        rest, rest_q = chunk.scatter(-1, top2, 0.0), qchunk.scatter(-1, top2, 0.0)
        unit = rest.abs().amax(-1, keepdim=True) / 7
        k = rest_q / unit
        assert torch.allclose(k, k.round(), atol=1e-4) and k.abs().max() <= 7 + 1e-4
        assert ((rest_q - rest).abs() <= unit / 2 + TOL).all()


def test_e2m1_grid_has_the_fp4_values():
    x = torch.linspace(-6, 6, 241).unsqueeze(0)
    values = quant.minifloat(x, 241, exp_bits=2, man_bits=1).unique()
    grid = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    assert torch.equal(values, torch.cat((-grid.flip(0)[:-1], grid)))


def test_ste_gives_the_full_precision_weight_the_gradient_of_the_quantized_one():
    torch.manual_seed(0)
    layer = QLinear(nn.Linear(96, 40, bias=False), QuantSpec(weight_group_size=64, act_group_size=32))
    x = torch.randn(5, 96, requires_grad=True)
    upstream = torch.randn(5, 40)
    layer(x).backward(upstream)
    # the same computation with the quantized tensors as leaves
    wq = QuantSpec(weight_group_size=64).weight(layer.weight.detach()).requires_grad_()
    xq = QuantSpec(act_group_size=32).activation(x.detach(), None).requires_grad_()
    (xq @ wq.T).backward(upstream)
    assert torch.allclose(layer.weight.grad, wq.grad) and torch.allclose(x.grad, xq.grad)
    assert not torch.equal(wq, layer.weight)  # the forward pass did see quantized weights


def test_qlinear_stochastic_rounding_replays_from_its_call_count():
    def layer():
        return QLinear(nn.Linear(64, 8, bias=False), QuantSpec(stochastic_round=True), seed=7, index=3)

    torch.manual_seed(0)
    a = layer()
    b = layer()
    b.load_state_dict(a.state_dict())
    x = torch.randn(16, 64)
    first = [a(x) for _ in range(3)]
    assert int(a.sr_calls) == 3 and not torch.equal(first[0], first[1])
    b.load_state_dict({**a.state_dict(), "sr_calls": torch.tensor(1)})  # "resume" after the first call
    assert torch.equal(b(x), first[1]) and torch.equal(b(x), first[2])
    a.eval()
    assert torch.equal(a(x), a(x)) and int(a.sr_calls) == 3  # evaluation rounds to nearest


def test_build_swaps_exactly_the_projections_and_keeps_names_and_initial_weights():
    shape = LlamaShape(vocab_size=64, hidden_size=32, intermediate_size=48, n_heads=2, n_layers=2, max_seq_len=16)
    torch.manual_seed(0)
    ref = Llama(shape)
    after_ref = torch.rand(1)
    torch.manual_seed(0)
    model = build_quantized_llama(shape, QuantSpec())
    assert torch.equal(torch.rand(1), after_ref)  # the swap drew no random numbers
    swapped = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, QLinear)}
    assert swapped == set(QUANTIZED)
    assert sum(isinstance(m, QLinear) for m in model.modules()) == 7 * shape.n_layers
    assert type(model.lm_head) is nn.Linear and type(model.embed_tokens) is nn.Embedding
    ref_params = dict(ref.named_parameters())
    assert dict(model.named_parameters()).keys() == ref_params.keys()
    assert all(torch.equal(p, ref_params[n]) for n, p in model.named_parameters())
    assert model.model_info().roles == ref.model_info().roles
    loss = model.loss(torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_format_defaults_and_errors_name_the_field():
    fp4 = build_config(LLM4bitConfig, {"format": "fp4"})
    assert (fp4.act_group_size, fp4.weight_topk, fp4.weight_bits) == (256, 2, 4)
    assert fp4.quant_summary()["quant_stochastic_round"] is False
    w8 = build_config(LLM4bitConfig, {"format": "w8a8", "act_group_size": "32"})
    assert (w8.act_group_size, w8.weight_topk, w8.act_bits) == (32, 0, 8)
    with pytest.raises(ConfigError, match="act_topk"):
        build_config(LLM4bitConfig, {"act_group_size": "2", "act_topk": "2"})
    with pytest.raises(ConfigError, match="format"):
        build_config(LLM4bitConfig, {"format": "int4"})
