"""The `llm4bit` task's configuration: the `llm` fields plus the quantization settings.

The scales share `llm`'s YAML values (tasks/llm4bit/__init__.py), so only the quantization fields and
what the paper's QAT runs change (20K steps) are declared here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spam_bench.suite.config import param
from spam_bench.suite.errors import ConfigError
from spam_bench.tasks.llm.config import LLMConfig

# format -> (weight bits, activation bits); fp4 is the E1M2 minifloat for both.
BITS = {"w4a4": (4, 4), "w8a8": (8, 8), "fp4": (4, 4)}
# Defaults that depend on the format (a field left at None takes these): the Stable-SPAM INT4 runs
# pass --act_group_size 64 and keep no weight outliers; its FP4 code uses groups of 256 and keeps the
# top-2 |x| of weights and activations alike.
FORMAT_DEFAULTS = {
    "w4a4": {"act_group_size": 64, "weight_topk": 0},
    "w8a8": {"act_group_size": 64, "weight_topk": 0},
    "fp4": {"act_group_size": 256, "weight_topk": 2},
}


@dataclass
class LLM4bitConfig(LLMConfig):
    # --- quantization (docs/spam.md#4-bit-qat; tasks/llm4bit/quant.py says what we follow) ---
    format: str = param(
        "w4a4",
        "w4a4 / w8a8: INT weights and activations (the paper's QAT curves); "
        "fp4: E1M2 minifloat weights and activations (Stable-SPAM's FP4).",
        choices=tuple(BITS),
    )
    weight_group_size: int = param(256, "Weight entries per quantization group, along each row (official: 256).", ge=1)
    act_group_size: int | None = param(
        None, "Activation entries per group along the features (None = the format's: 64 for int, 256 for fp4).", ge=1
    )
    act_topk: int = param(2, "Largest-|x| activations per group kept in full precision (official: 2).", ge=0)
    weight_topk: int | None = param(
        None, "Largest-|w| weights per group kept in full precision (None = the format's: 0 for int, 2 for fp4).", ge=0
    )
    stochastic_round: bool = param(
        True,
        "Round int activations stochastically while training (seeded by the run "
        "seed; evaluation rounds to nearest). Stable-SPAM's INT4 command asks for it.",
    )

    def __post_init__(self) -> None:
        # Resolve the format's defaults here so spec.json records the effective values.
        for name, value in FORMAT_DEFAULTS.get(self.format, {}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @property
    def weight_bits(self) -> int:
        return BITS[self.format][0]

    @property
    def act_bits(self) -> int:
        return BITS[self.format][1]

    def quant_summary(self) -> dict[str, Any]:
        """The effective quantization settings, for the run summary (reports must never mix formats)."""
        return {
            "quant_format": self.format,
            "quant_weight_bits": self.weight_bits,
            "quant_act_bits": self.act_bits,
            "quant_weight_group_size": self.weight_group_size,
            "quant_act_group_size": self.act_group_size,
            "quant_act_topk": self.act_topk,
            "quant_weight_topk": self.weight_topk,
            "quant_stochastic_round": self.stochastic_round and self.format != "fp4",
        }

    def validate(self) -> None:
        super().validate()
        if self.act_topk >= self.act_group_size:
            raise ConfigError("act_topk", self.act_topk, f"an int < act_group_size={self.act_group_size}")
        if self.weight_topk >= self.weight_group_size:
            raise ConfigError("weight_topk", self.weight_topk, f"an int < weight_group_size={self.weight_group_size}")
        if self.weight_topk and self.format != "fp4":
            raise ConfigError(
                "weight_topk", self.weight_topk, "0 for int formats (their min-max quantizer keeps no outliers)"
            )
