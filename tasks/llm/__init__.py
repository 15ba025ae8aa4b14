"""`llm`: LLaMA pre-training, the paper's main benchmark (docs/spam.md#llama-on-c4).

Primary metric: validation perplexity (lower is better). Scales: `tiny` (Shakespeare, ~1.3M
parameters, CPU minutes) and `paper-60m` ... `paper-1b` (C4, the paper's shapes and recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spam_bench.suite.context import RunContext
from spam_bench.suite.contract import TaskResult
from spam_bench.suite.task_base import TaskBase
from spam_bench.tasks.llm import corpus
from spam_bench.tasks.llm.config import LLMConfig, local_tokenizer_file


def build_data(config: LLMConfig, seed: int) -> Any:
    from spam_bench.tasks.llm.data import C4Data, ShakespeareData

    if config.dataset == "shakespeare":
        return ShakespeareData.build(
            vocab_size=config.vocab_size,
            seq_len=config.seq_len,
            batch_size=config.batch_size,
            seed=seed,
            eval_tokens=config.eval_tokens,
            val_every=config.val_every,
        )
    from tokenizers import Tokenizer

    if local_tokenizer_file(config.tokenizer):
        tok = Tokenizer.from_file(config.tokenizer)
    else:
        tok = Tokenizer.from_pretrained(config.tokenizer)
    return C4Data(
        tokenizer=tok,
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        eval_tokens=config.eval_tokens,
        data_files=config.data_files,
    )


class LLMTask(TaskBase):
    distributed = True  # data-parallel with --nproc (suite/distributed.py; llm4bit inherits it)

    def check_world(self, config: LLMConfig, size: int) -> None:
        """Refuse a world the batch cannot be split over, before any process starts."""
        config.rank_micro_batch(size)

    def run(self, ctx: RunContext) -> TaskResult:
        from spam_bench.tasks.llm.train import Trainer

        return Trainer(ctx, build_data(ctx.config, ctx.seed)).fit()

    def fetch_data(self) -> None:
        corpus.fetch_corpus()


TASK = LLMTask(
    name="llm",
    description="LLaMA pre-training (tiny: Shakespeare on CPU; paper: C4, 60M-1B)",
    config_cls=LLMConfig,
    primary_metric="val_ppl",
    direction="min",
    config_dir=Path(__file__).parent / "configs",
    libraries=("tokenizers", "datasets"),
)
