"""The `llm` LLaMA with its attention and MLP projections replaced by fake-quantized linears.

Only q/k/v/o/gate/up/down are quantized, as in the official code; embeddings, norms and lm_head stay
in full precision. The swap keeps module and parameter names (so optimizers see the same roles) and
the very same weight tensors, and draws no random numbers, so a quantized model starts from exactly
the weights `llm` would start from at the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spam_bench.tasks.llm.model import Llama, LlamaShape
from spam_bench.tasks.llm4bit import quant

QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class QuantSpec:
    """What a QLinear does to its weight and input (built from LLM4bitConfig by `from_config`)."""

    format: str = "w4a4"
    weight_bits: int = 4
    act_bits: int = 4
    weight_group_size: int = 256
    act_group_size: int = 64
    weight_topk: int = 0
    act_topk: int = 2
    stochastic_round: bool = False

    @classmethod
    def from_config(cls, c) -> QuantSpec:
        return cls(
            format=c.format,
            weight_bits=c.weight_bits,
            act_bits=c.act_bits,
            weight_group_size=c.weight_group_size,
            act_group_size=c.act_group_size,
            weight_topk=c.weight_topk,
            act_topk=c.act_topk,
            stochastic_round=c.stochastic_round and c.format != "fp4",
        )  # fp4 always rounds to nearest

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        if self.format == "fp4":
            return quant.minifloat(w, self.weight_group_size, topk=self.weight_topk)
        return quant.int_asymmetric(w, self.weight_bits, self.weight_group_size)

    def activation(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.format == "fp4":
            return quant.minifloat(x, self.act_group_size, topk=self.act_topk)
        return quant.int_symmetric(x, self.act_bits, self.act_group_size, self.act_topk, generator)


class QLinear(nn.Linear):
    """A bias-optional linear layer that computes F.linear(Q_a(x), Q_w(W)) with straight-through gradients.

    Stochastic rounding draws from a generator seeded by (run seed, layer index, call count); the
    count is a persistent buffer, so it is checkpointed with the model and a resumed run draws the
    same numbers. Only training-mode calls round stochastically (and count); evaluation is
    deterministic. The official code rounds stochastically in evaluation too, when enabled.
    """

    def __init__(self, linear: nn.Linear, spec: QuantSpec, seed: int = 0, index: int = 0):
        # Adopt the existing parameters instead of calling nn.Linear.__init__, which would allocate
        # and re-initialise new ones (and consume the global RNG, shifting everything after it).
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.spec, self.seed, self.index = spec, seed, index
        self.register_buffer("sr_calls", torch.zeros((), dtype=torch.int64))

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if not (self.spec.stochastic_round and self.training):
            return None
        # Tuples of ints hash the same in every process (PYTHONHASHSEED only salts str and bytes).
        gen = torch.Generator(device=device).manual_seed(
            hash((self.seed, self.index, int(self.sr_calls))) & (2**63 - 1)
        )
        self.sr_calls += 1
        return gen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = quant.ste(self.weight, self.spec.weight(self.weight))
        x = quant.ste(x, self.spec.activation(x, self._generator(x.device)))
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"{super().extra_repr()}, format={s.format}, w{s.weight_bits}/g{s.weight_group_size}"
            f"/top{s.weight_topk}, a{s.act_bits}/g{s.act_group_size}/top{s.act_topk}, sr={s.stochastic_round}"
        )


def quantize_projections(model: nn.Module, spec: QuantSpec, seed: int = 0) -> nn.Module:
    """Replace every nn.Linear named in QUANTIZED by a QLinear sharing its parameters; returns `model`."""
    targets = [
        (name, m) for name, m in model.named_modules() if type(m) is nn.Linear and name.rsplit(".", 1)[-1] in QUANTIZED
    ]
    for index, (name, linear) in enumerate(targets):
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, QLinear(linear, spec, seed, index))
    return model


def build_quantized_llama(shape: LlamaShape, spec: QuantSpec, seed: int = 0) -> Llama:
    """The Trainer's `build_model` hook for llm4bit (bind spec and seed with functools.partial)."""
    return quantize_projections(Llama(shape), spec, seed)
