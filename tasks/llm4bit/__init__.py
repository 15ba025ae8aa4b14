"""`llm4bit`: quantization-aware LLaMA pre-training with 4-bit (or 8-bit) weights and activations.

The paper's low-precision benchmark (docs/spam.md#4-bit-qat): the `llm` task's
model, data, training loop and evaluation, with the attention and MLP projections fake-quantized
(tasks/llm4bit/quant.py). Primary metric: validation perplexity (lower is better).

Scales are `llm`'s: each configs/<scale>.yaml here holds only what differs from `llm`'s file of the
same name (the paper's QAT runs are 20K steps), so the two tasks never drift apart.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from spam_bench.suite.config import load_yaml
from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.tasks.llm import TASK as LLM_TASK
from spam_bench.tasks.llm import LLMTask, build_data
from spam_bench.tasks.llm4bit.config import LLM4bitConfig


class LLM4bitTask(LLMTask):
    def scale_values(self, scale: str) -> dict[str, Any]:
        return {**LLM_TASK.scale_values(scale), **load_yaml(self.scale_path(scale))}

    def run(self, ctx: RunContext) -> TaskResult:
        from spam_bench.tasks.llm.train import Trainer
        from spam_bench.tasks.llm4bit.model import QuantSpec, build_quantized_llama

        c: LLM4bitConfig = ctx.config
        build = partial(build_quantized_llama, spec=QuantSpec.from_config(c), seed=ctx.seed)
        result = Trainer(ctx, build_data(c, ctx.seed), build_model=build).fit()
        result.metrics = {**result.metrics, **c.quant_summary()}
        return result


TASK = LLM4bitTask(
    name="llm4bit",
    description="4-bit quantization-aware LLaMA pre-training (W4A4 / W8A8 / FP4; llm's scales)",
    config_cls=LLM4bitConfig,
    primary_metric="val_ppl",
    direction="min",
    config_dir=Path(__file__).parent / "configs",
    libraries=("tokenizers", "datasets"),
)
