"""The LLaMA model: the paper's parameter counts, complete roles, causality."""

import pytest
import torch

from spam_bench.suite.model_info import ROLES
from spam_bench.suite.resolve import resolve
from spam_bench.tasks.llm.model import Llama, count_parameters
from spam_bench.tasks.llm.train import model_shape

PAPER_COUNTS = {"paper-60m": 58.07e6, "paper-130m": 134.11e6, "paper-350m": 367.97e6, "paper-1b": 1339.08e6}


@pytest.mark.parametrize("scale", sorted(PAPER_COUNTS))
def test_paper_configs_have_the_logged_parameter_counts(scale):
    config = resolve(task="llm", optimizer="adamw", scale=scale).config
    with torch.device("meta"):
        model = Llama(model_shape(config, config.vocab_size))
    assert round(count_parameters(model) / 1e6, 2) == round(PAPER_COUNTS[scale] / 1e6, 2)


def _small() -> Llama:
    torch.manual_seed(0)
    config = resolve(
        task="llm",
        optimizer="adamw",
        sets={"hidden_size": "32", "n_heads": "2", "n_layers": "2", "intermediate_size": "48"},
    ).config
    return Llama(model_shape(config, 64))


def test_every_parameter_has_a_known_role_and_matrices_are_classified():
    model = _small()
    roles = model.model_info().roles
    assert set(roles) == {n for n, _ in model.named_parameters()}
    assert set(roles.values()) <= set(ROLES) and "other" not in roles.values()
    assert roles["layers.0.self_attn.q_proj.weight"] == "attn_q"
    assert roles["layers.1.mlp.down_proj.weight"] == "mlp"
    assert roles["embed_tokens.weight"] == "embedding" and roles["lm_head.weight"] == "output"
    assert roles["layers.0.input_layernorm.weight"] == "norm" and roles["norm.weight"] == "norm"


def test_logits_at_a_position_do_not_depend_on_later_tokens():
    model = _small().eval()
    x = torch.randint(0, 64, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 64
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0, :10], model(y)[0, :10])


def test_padding_labels_are_ignored_by_the_loss():
    model = _small()
    x = torch.randint(0, 64, (2, 8))
    labels = x.clone()
    labels[1] = -100
    assert torch.isclose(model.loss(x, labels), model.loss(x[:1], labels[:1]))
