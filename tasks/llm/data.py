"""Training and validation batches for the `llm` task, through the `datasets` library.

Two sources with one interface (`train_batch(step)`, `val_batches()`):
- `ShakespeareData` (tiny): whole plays as documents, a few plays held out for validation, token
  windows sampled at random positions. The window for step s depends only on (seed, s), so a
  resumed run sees exactly the batches an uninterrupted one would.
- `C4Data` (paper): C4 "en" streamed, T5 tokenizer, one document per sequence padded to max_length
  with pad labels -100, split by rank, as in the paper's code (docs/spam.md#llama-on-c4). Shuffled with
  seed 42 as the paper's `shuffle(seed=42)`, but by shard order and in fixed windows instead of a
  shuffle buffer, so its position (`state_dict`, saved in the checkpoint) resumes the stream exactly,
  reading at most one shard's prefix and one window instead of everything before it.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _first_cursor() -> dict[str, Any]:
    """The training stream's start: epoch 0, the first shard of its order, window 0, nothing used."""
    return {"start": {"epoch": 0, "shard": 0, "inner": None}, "window": 0, "taken": 0}


class C4Data:
    """C4 'en' (or local files in C4's JSON-lines format), streamed, one document per sequence.

    The training stream's order is a function of its position alone, so a run resumes from the saved
    position (`state_dict`) by reading at most the current shard's prefix and one window, not the stream
    before it:
    - epoch e reads the shards in the order `default_rng([shuffle_seed, e]).permutation(n_shards)`; a rank
      takes every world_size-th shard of it when world_size divides the shard count, else every
      world_size-th document of each shard (`split_dataset_by_node`'s two strategies);
    - within a shard, the documents in file order, positioned with `datasets`' `IterableDataset.state_dict()`;
    - consecutive windows of `shuffle_window` documents (an epoch's last one shorter) are permuted by
      `default_rng([shuffle_seed, rank, window number])`: a shuffle buffer's local mixing, with no buffer
      whose contents a checkpoint would have to hold (`datasets`' shuffle buffer is not in its state).
    """

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        seq_len: int,
        batch_size: int,
        eval_tokens: int,
        data_files: str | None = None,
        shuffle_seed: int = 42,
        shuffle_window: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int | None = None,
    ):
        self.tok, self.seq_len, self.batch_size, self.eval_tokens = tokenizer, seq_len, batch_size, eval_tokens
        self.data_files, self.shuffle_seed, self.shuffle_window = data_files, shuffle_seed, shuffle_window
        self.rank, self.world_size = rank, world_size
        self.pad_id = pad_id if pad_id is not None else (tokenizer.token_to_id("<pad>") or 0)
        self.vocab_size = tokenizer.get_vocab_size()
        self._train: datasets.IterableDataset | None = None
        self._stream: Iterator[tuple[str, dict[str, Any]]] | None = None
        self._step = 0  # the step whose batch the stream yields next
        self._cursor = _first_cursor()  # where that batch's first document comes from

    def _load(self, split: str) -> datasets.IterableDataset:
        if self.data_files:
            files = sorted(str(p) for p in Path(self.data_files).glob(f"*{split}*.json*")) or [self.data_files]
            return datasets.load_dataset("json", data_files=files, split="train", streaming=True)
        return datasets.load_dataset("allenai/c4", "en", split=split, streaming=True)

    # --- training: the resumable stream ---
    def state_dict(self) -> dict[str, Any]:
        """The stream's position after the last batch: plain data (ints, str, dicts), for the checkpoint."""
        return {"step": self._step, "cursor": copy.deepcopy(self._cursor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step, self._cursor, self._stream = state["step"], copy.deepcopy(state["cursor"]), None

    def train_batch(self, step: int) -> Batch:
        """Batch `step` of the stream. Without a saved position for `step` (a fresh object asked for a later
        step, or a checkpoint with no data state) the stream is read from its start up to it."""
        if step != self._step:
            self._step, self._cursor, self._stream = 0, _first_cursor(), None
        if self._stream is None:
            self._stream = self._shuffled(self._cursor)
        while self._step <= step:
            texts = []
            for _ in range(self.batch_size):
                text, self._cursor = next(self._stream)
                texts.append(text)
            self._step += 1
        return tokenize_padded(texts, self.tok, self.seq_len, self.pad_id)

    def _train_split(self) -> datasets.IterableDataset:
        if self._train is None:
            self._train = self._load("train")
        return self._train

    def _shard_order(self, epoch: int) -> list[int]:
        """This rank's shards in epoch `epoch`, in reading order."""
        n = self._train_split().num_shards
        order = np.random.default_rng([self.shuffle_seed, epoch]).permutation(n).tolist()
        return order[self.rank :: self.world_size] if n % self.world_size == 0 else order

    def _shard(self, index: int) -> datasets.IterableDataset:
        full = self._train_split()
        ds = full.shard(num_shards=full.num_shards, index=index)
        if full.num_shards % self.world_size:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        return ds

    def _documents(self, start: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """This rank's documents from position `start` on, epoch after epoch, each with the position after it.
        A position is {epoch, shard (an index into the epoch's order), inner (the shard's `datasets` state,
        None at its start)}; after a shard's last document it is the next shard's start, so resuming
        there reads nothing of the finished shard."""
        epoch, first, inner = start["epoch"], start["shard"], start["inner"]
        while True:
            order, whole_epoch, found = self._shard_order(epoch), first == 0 and inner is None, False
            for k in range(first, len(order)):
                ds = self._shard(order[k])
                if inner is not None:
                    ds.load_state_dict(inner)
                inner, pending = None, None
                for row in ds:  # each document waits for the next, which shows the shard goes on
                    if pending is not None:
                        yield pending
                    pending = (row["text"], {"epoch": epoch, "shard": k, "inner": ds.state_dict()})
                if pending is not None:
                    found = True
                    ends_epoch = k + 1 == len(order)
                    yield pending[0], {"epoch": epoch + ends_epoch, "shard": 0 if ends_epoch else k + 1, "inner": None}
            if whole_epoch and not found:
                raise ValueError(f"no training documents for rank {self.rank} in {self.data_files or 'allenai/c4'}")
            epoch, first = epoch + 1, 0

    def _shuffled(self, cursor: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """The documents from `cursor` on, window-shuffled, each with the cursor after it. A cursor is
        {start (the position its window starts at), window (its number), taken (how many of it were used)}."""
        start, window, taken = cursor["start"], cursor["window"], cursor["taken"]
        documents = self._documents(start)
        while True:
            texts: list[str] = []
            end = start
            for text, end in documents:
                texts.append(text)
                if len(texts) == self.shuffle_window or end["epoch"] != start["epoch"]:
                    break
            order = np.random.default_rng([self.shuffle_seed, self.rank, window]).permutation(len(texts)).tolist()
            for k in range(taken, len(texts)):
                after = {"start": start, "window": window, "taken": k + 1}
                if k + 1 == len(texts):  # the window is used up: the next cursor is the next window's start
                    after = {"start": end, "window": window + 1, "taken": 0}
                yield texts[order[k]], after
            start, window, taken = end, window + 1, 0

    # --- validation: the split from its start, every time ---
    def _validation_texts(self) -> Iterator[list[str]]:
        ds = split_dataset_by_node(self._load("validation"), rank=self.rank, world_size=self.world_size)
        batch: list[str] = []
        for row in ds:
            batch.append(row["text"])
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def val_batches(self) -> Iterator[Batch]:
        seen = 0
        for texts in self._validation_texts():
            x, y = tokenize_padded(texts, self.tok, self.seq_len, self.pad_id)
            yield x, y
            seen += int((y != -100).sum())
            if seen >= self.eval_tokens:
                return
