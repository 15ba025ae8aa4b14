"""Training and validation batches for the `llm` task, through the `datasets` library.

Two sources with one interface (`train_batch(step)`, `val_batches()`):
- `ShakespeareData` (tiny): whole plays as documents, a few plays held out for validation, token
  windows sampled at random positions. The window for step s depends only on (seed, s), so a
  resumed run sees exactly the batches an uninterrupted one would.
- `C4Data` (paper): C4 "en" streamed, T5 tokenizer, one document per sequence padded to max_length
  with pad labels -100, `shuffle(seed=42)` and split by rank, as in the paper's code (docs/spam.md#llama-on-c4).
  Its position is the number of sequences consumed, restored with `IterableDataset.skip`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from tokenizers import Tokenizer

from spam_bench.suite.paths import data_cache
from spam_bench.tasks.llm import corpus

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids, labels), both [batch, seq]


def split_documents(files: list[Path], every: int) -> tuple[list[Path], list[Path]]:
    """Every `every`-th play (in sorted order) is validation; the tokenizer never sees those."""
    val = [f for i, f in enumerate(files) if i % every == every - 1]
    return [f for f in files if f not in val], val


def _token_stream(files: list[Path], tok: Tokenizer) -> np.ndarray:
    """The files' documents tokenized and joined with EOS; cached as .npy beside the tokenizer,
    because tokenizing 5 MB costs seconds that every run (and every test) would pay again."""
    key = hashlib.sha256((tok.to_str() + "|" + "|".join(f.name for f in files)).encode()).hexdigest()[:16]
    cached = data_cache() / f"tokens-{key}.npy"
    if cached.exists():
        return np.load(cached)
    ds = datasets.load_dataset(
        "text",
        data_files=[str(f) for f in files],
        sample_by="document",
        split="train",
        cache_dir=str(data_cache() / "hf-datasets"),
    )
    eos = tok.token_to_id(corpus.EOS)
    ids = np.concatenate([np.asarray([*enc.ids, eos], dtype=np.int32) for enc in tok.encode_batch(ds["text"])])
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.npy")
    np.save(tmp, ids)
    os.replace(tmp, cached)
    return ids


@dataclass
class ShakespeareData:
    """Random windows over the training plays; fixed, non-overlapping windows over the held-out plays."""

    train_tokens: torch.Tensor
    val_tokens: torch.Tensor
    vocab_size: int
    seq_len: int
    batch_size: int
    seed: int
    eval_tokens: int

    @classmethod
    def build(
        cls, *, vocab_size: int, seq_len: int, batch_size: int, seed: int, eval_tokens: int, val_every: int
    ) -> ShakespeareData:
        train_files, val_files = split_documents(corpus.text_files(), val_every)
        tok = corpus.train_tokenizer(train_files, vocab_size)
        return cls(
            torch.from_numpy(_token_stream(train_files, tok)).long(),
            torch.from_numpy(_token_stream(val_files, tok)).long(),
            tok.get_vocab_size(),
            seq_len,
            batch_size,
            seed,
            eval_tokens,
        )

    def train_batch(self, step: int) -> Batch:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.train_tokens) - self.seq_len - 1, (self.batch_size,), generator=gen)
        rows = torch.stack([self.train_tokens[s : s + self.seq_len + 1] for s in starts.tolist()])
        return rows[:, :-1], rows[:, 1:]

    def val_batches(self) -> Iterator[Batch]:
        n_windows = min(self.eval_tokens // self.seq_len, (len(self.val_tokens) - 1) // self.seq_len)
        for first in range(0, n_windows, self.batch_size):
            idx = range(first, min(first + self.batch_size, n_windows))
            rows = torch.stack([self.val_tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1] for i in idx])
            yield rows[:, :-1], rows[:, 1:]


def tokenize_padded(texts: list[str], tok: Tokenizer, seq_len: int, pad_id: int) -> Batch:
    """One document per row, truncated/padded to seq_len; labels are -100 on padding (paper's code)."""
    ids = torch.full((len(texts), seq_len), pad_id, dtype=torch.long)
    for row, enc in enumerate(tok.encode_batch(texts)):
        n = min(len(enc.ids), seq_len)
        ids[row, :n] = torch.tensor(enc.ids[:n], dtype=torch.long)
    labels = ids.clone()
    labels[ids == pad_id] = -100
    # max_length tokens per document and next-token targets, as HF's shifted causal-LM loss: seq_len-1 predictions.
    return ids[:, :-1], labels[:, 1:]


class C4Data:
    """C4 'en' (or local files in C4's JSON-lines format), streamed, one document per sequence."""

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        seq_len: int,
        batch_size: int,
        eval_tokens: int,
        data_files: str | None = None,
        shuffle_seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int | None = None,
    ):
        self.tok, self.seq_len, self.batch_size, self.eval_tokens = tokenizer, seq_len, batch_size, eval_tokens
        self.data_files, self.shuffle_seed, self.rank, self.world_size = data_files, shuffle_seed, rank, world_size
        self.pad_id = pad_id if pad_id is not None else (tokenizer.token_to_id("<pad>") or 0)
        self.vocab_size = tokenizer.get_vocab_size()
        self._stream: Iterator[list[str]] | None = None
        self._position = -1

    def _split(self, split: str) -> datasets.IterableDataset:
        if self.data_files:
            files = sorted(str(p) for p in Path(self.data_files).glob(f"*{split}*.json*")) or [self.data_files]
            ds = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
        else:
            ds = datasets.load_dataset("allenai/c4", "en", split=split, streaming=True)
        if split == "train":
            ds = ds.shuffle(seed=self.shuffle_seed)
        return split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)

    def _texts(self, split: str, skip: int) -> Iterator[list[str]]:
        ds = self._split(split)
        if skip:
            ds = ds.skip(skip)
        batch: list[str] = []
        for row in ds:
            batch.append(row["text"])
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and split != "train":
            yield batch

    def train_batch(self, step: int) -> Batch:
        """Batch `step` of the stream; jumping to a new position (a resume) skips what was consumed."""
        if self._stream is None or step != self._position + 1:
            self._stream = self._texts("train", skip=step * self.batch_size)
        self._position = step
        try:
            texts = next(self._stream)
        except StopIteration:  # epoch boundary: start the stream over
            self._stream = self._texts("train", skip=0)
            texts = next(self._stream)
        return tokenize_padded(texts, self.tok, self.seq_len, self.pad_id)

    def val_batches(self) -> Iterator[Batch]:
        seen = 0
        for texts in self._texts("validation", skip=0):
            x, y = tokenize_padded(texts, self.tok, self.seq_len, self.pad_id)
            yield x, y
            seen += int((y != -100).sum())
            if seen >= self.eval_tokens:
                return
