"""The `llm` task's configuration; the scales in configs/*.yaml set these fields."""

from __future__ import annotations

from dataclasses import dataclass

from spam_bench.suite.config import param
from spam_bench.suite.errors import ConfigError
from spam_bench.suite.spike_config import RunFields


@dataclass
class LLMConfig(RunFields):
    # --- model (the paper's configs/llama_*.json) ---
    vocab_size: int = param(2048, "Vocabulary size (tiny: BPE trained on the corpus; paper: T5's 32000).", ge=16)
    hidden_size: int = param(128, "Model width.", ge=8)
    intermediate_size: int = param(352, "SwiGLU hidden width.", ge=8)
    n_heads: int = param(4, "Attention heads.", ge=1)
    n_kv_heads: int | None = param(None, "Key/value heads (None = n_heads, as in the paper).", ge=1)
    n_layers: int = param(4, "Decoder blocks.", ge=1)
    seq_len: int = param(128, "Tokens per sequence (paper: 256).", ge=8)
    dtype: str = param(
        "float32", "Parameter dtype; the paper casts the whole model to bfloat16.", choices=("float32", "bfloat16")
    )
    # --- data ---
    dataset: str = param(
        "shakespeare", "shakespeare (tiny, offline) or c4 (paper, streamed).", choices=("shakespeare", "c4")
    )
    data_files: str | None = param(None, "c4 only: a local folder/file in C4's JSON-lines format instead of the hub.")
    tokenizer: str = param("bpe", "bpe (trained on the tiny corpus) or a tokenizers hub name such as t5-base.")
    val_every: int = param(14, "shakespeare: every n-th play is held out for validation.", ge=2)
    # --- optimisation ---
    steps: int = param(1000, "Optimizer updates. Tiny keeps >= 1000 so SPAM's reset at 500 happens.", ge=1)
    batch_size: int = param(16, "Sequences per update (paper: 512).", ge=1)
    micro_batch_size: int | None = param(
        None, "Sequences per forward pass; gradients accumulate up to batch_size.", ge=1
    )
    lr: float = param(1e-3, "Peak learning rate of the schedule.", gt=0.0)
    lr_warmup_steps: int = param(100, "Linear warmup from 0 (paper: 1000).", ge=0)
    min_lr_ratio: float = param(0.1, "Cosine decays to this fraction of the peak (paper: 0.1).", ge=0.0, le=1.0)
    # --- evaluation and bookkeeping ---
    eval_every: int = param(250, "Validate every this many updates (and at the end).", ge=1)
    eval_tokens: int = param(32768, "Validation token budget per evaluation (paper: 10M).", ge=1)
    checkpoint_every: int = param(100, "Checkpoint every this many updates (and on Ctrl-C).", ge=1)
    threads: int | None = param(None, "torch CPU threads (None = torch's default).", ge=1)

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.batch_size

    def validate(self) -> None:
        if self.hidden_size % self.n_heads:
            raise ConfigError("n_heads", self.n_heads, f"a divisor of hidden_size={self.hidden_size}")
        if self.batch_size % self.micro_batch:
            raise ConfigError("micro_batch_size", self.micro_batch_size, f"a divisor of batch_size={self.batch_size}")
        if (self.hidden_size // self.n_heads) % 2:
            raise ConfigError("n_heads", self.n_heads, "a value giving an even head dimension (RoPE)")
