"""The `llm` task's configuration; the scales in configs/*.yaml set these fields."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from spam_bench.suite.config import check_fits_memory, param
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
    data_files: str | None = param(
        None, "c4 only: an existing local folder/file in C4's JSON-lines format instead of the hub."
    )
    tokenizer: str = param(
        "bpe",
        "bpe (shakespeare: trained on the tiny corpus) or, with c4, a tokenizers hub name such as t5-base "
        "(org/name of letters, digits, '.', '_' and '-'), or an existing local tokenizers .json file (offline).",
    )
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
    eval_tokens: int = param(
        32768,
        "Validation token budget per evaluation (paper: 10M); at least seq_len x batch_size, one full "
        "evaluation batch. Below one sequence nothing is evaluated (a perplexity of exactly 1 that would "
        "rank first), below one batch the estimate rests on a handful of sequences, and C4 rounds the "
        "budget up to whole batches anyway.",
        ge=1,
    )
    checkpoint_every: int = param(100, "Checkpoint every this many updates (and on Ctrl-C).", ge=1)
    threads: int | None = param(None, "torch CPU threads (None = torch's default).", ge=1)

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.batch_size

    def rank_micro_batch(self, world_size: int) -> int:
        """The micro-batch of one of `world_size` data-parallel ranks: each rank has batch_size /
        world_size rows, in micro-batches of at most `micro_batch` (a memory cap, not a number that
        changes the update: the loss is the global batch's mean either way)."""
        if self.batch_size % world_size:
            raise ConfigError("nproc", world_size, f"a divisor of batch_size={self.batch_size}")
        rows = self.batch_size // world_size
        micro = min(self.micro_batch, rows)
        if rows % micro:
            raise ConfigError("nproc", world_size, f"a world leaving whole micro-batches of {micro} per rank")
        return micro

    def validate(self) -> None:
        if self.hidden_size % self.n_heads:
            raise ConfigError("n_heads", self.n_heads, f"a divisor of hidden_size={self.hidden_size}")
        if self.n_heads % self.kv_heads:
            raise ConfigError("n_kv_heads", self.n_kv_heads, f"a divisor of n_heads={self.n_heads} (grouped queries)")
        if self.batch_size % self.micro_batch:
            raise ConfigError("micro_batch_size", self.micro_batch_size, f"a divisor of batch_size={self.batch_size}")
        if (self.hidden_size // self.n_heads) % 2:
            raise ConfigError("n_heads", self.n_heads, "a value giving an even head dimension (RoPE)")
        if self.eval_tokens < self.seq_len * self.batch_size:
            raise ConfigError(
                "eval_tokens",
                self.eval_tokens,
                f">= seq_len x batch_size = {self.seq_len * self.batch_size} (one full evaluation batch)",
            )
        self._validate_data()
        check_fits_memory(
            self,
            bytes_at_least,
            ("vocab_size", "hidden_size", "intermediate_size", "n_layers", "seq_len", "batch_size", "micro_batch_size"),
            f"a {_count(parameter_count(self))}-parameter model",
        )

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def _validate_data(self) -> None:
        """The data source's fields must agree with `dataset`: each is used by one of them only, and a
        value the run would ignore (a tokenizer with shakespeare) would still change its run id."""
        if self.dataset == "shakespeare":
            if self.tokenizer != "bpe":
                raise ConfigError("tokenizer", self.tokenizer, "bpe with dataset=shakespeare (a hub name needs c4)")
            if self.data_files is not None:
                raise ConfigError("data_files", self.data_files, "None unless dataset=c4")
            return
        if self.data_files is not None and not _existing_path(self.data_files):
            raise ConfigError(
                "data_files", self.data_files, "an existing file or folder of C4 JSON lines (None: the hub)"
            )
        if local_tokenizer_file(self.tokenizer):
            return
        if self.tokenizer == "bpe" or not _HUB_NAME.fullmatch(self.tokenizer) or ".." in self.tokenizer:
            raise ConfigError(
                "tokenizer",
                self.tokenizer,
                "a tokenizers hub name such as t5-base or org/name (letters, digits, '.', '_', '-') with dataset=c4, "
                "or an existing tokenizers .json file",
            )


# A Hugging Face hub repository id: [org/]name, each part starting and ending with a letter or digit.
_HUB_NAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?/)?[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
)


def local_tokenizer_file(text: str) -> bool:
    """Whether `text` names an existing `tokenizers` JSON file (read with `Tokenizer.from_file`, no hub):
    the offline stand-in for a hub tokenizer, e.g. the one spam_bench.runners.synthetic_c4 writes. Only a name
    ending in .json that is a file counts, so a hub name is never taken for a path by accident."""
    return text.endswith(".json") and _existing_path(text) and Path(text).is_file()


def _existing_path(text: str) -> bool:
    """Whether `text` names something on disk (a NUL byte or an over-long name is just "no")."""
    try:
        return bool(text.strip()) and Path(text).exists()
    except (OSError, ValueError):
        return False


def _count(n: int) -> str:
    """1,234,567 for a count that is readable that way, 1.2e+20 for an absurd one."""
    return f"{n:,}" if n < 10**15 else f"{float(n):.2g}" if n < 2**1000 else f"1e{int(math.log10(n))}"


def parameter_count(config: LLMConfig) -> int:
    """The LLaMA's parameters (tasks/llm/model.py: untied embedding and lm_head, GQA projections)."""
    h, head_dim = config.hidden_size, config.hidden_size // config.n_heads
    attention = 2 * h * config.n_heads * head_dim + 2 * h * config.kv_heads * head_dim
    block = attention + 3 * h * config.intermediate_size + 2 * h
    return 2 * config.vocab_size * h + config.n_layers * block + h


def bytes_at_least(config: LLMConfig) -> int:
    """A lower bound on the bytes a run holds at once: the parameters and their gradients in the
    model's dtype, and one micro-batch's logits. Optimizer state and other activations are left out,
    so the bound holds for every optimizer (and refuses only what cannot run anywhere near here)."""
    width = 2 if config.dtype == "bfloat16" else 4
    logits = config.micro_batch * config.seq_len * config.vocab_size
    return width * (2 * parameter_count(config) + logits)
