"""Generated C4-format data and a matching word-level tokenizer, for checks on machines without a network.

The paper scales read C4 (`dataset: c4`) and the T5 tokenizer from the hub; a machine with no network has
neither. This writes files in C4's JSON-lines layout and naming (`c4-train.*.json`, `c4-validation.*.json`,
fields text/timestamp/url: what `--set data_files=...` reads) and a `tokenizers` JSON file of exactly
`vocab_size` entries (`--set tokenizer=/path/tokenizer.json`). The text is pseudo-words drawn from a
Zipf-like distribution: it measures throughput through the real data path, not language modelling.
Every document has at least `words_per_doc` words, so a row of `seq_len <= words_per_doc` tokens is full
(no padding: every token slot is a real token).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers

SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5's tokenizer
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def words(n: int) -> list[str]:
    """n distinct lower-case pseudo-words: a, b, ..., z, ba, bb, ... (base 26 numerals in letters)."""
    out = []
    for i in range(n):
        word = ""
        while True:
            i, r = divmod(i, 26)
            word = _LETTERS[r] + word
            if i == 0:
                break
        out.append(word)
    return out


def tokenizer(vocab_size: int) -> Tokenizer:
    """A word-level tokenizer of exactly `vocab_size` entries: the specials, then `words(vocab_size - 3)`."""
    if vocab_size <= len(SPECIALS):
        raise ValueError(f"vocab_size must exceed {len(SPECIALS)}, got {vocab_size}")
    vocab = {w: i for i, w in enumerate([*SPECIALS, *words(vocab_size - len(SPECIALS))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def _documents(rng: np.random.Generator, vocab: list[str], n_docs: int, words_per_doc: int) -> list[str]:
    weights = 1.0 / (np.arange(len(vocab)) + 10.0)  # Zipf-like: a learnable unigram distribution
    ids = rng.choice(len(vocab), size=(n_docs, words_per_doc), p=weights / weights.sum())
    return [" ".join(map(vocab.__getitem__, row)) for row in ids.tolist()]


def write_c4(
    folder: Path, *, vocab_size: int, train_docs: int, val_docs: int, words_per_doc: int, seed: int = 0
) -> tuple[Path, Path]:
    """Write `folder`/c4/{c4-train,c4-validation}.00000-of-00001.json and `folder`/tokenizer.json;
    returns (the data folder for `data_files`, the tokenizer file for `tokenizer`)."""
    data = folder / "c4"
    data.mkdir(parents=True, exist_ok=True)
    vocab = words(vocab_size - len(SPECIALS))
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_docs), ("validation", val_docs)):
        with open(data / f"c4-{split}.00000-of-00001.json", "w") as fh:
            for i, text in enumerate(_documents(rng, vocab, n, words_per_doc)):
                row = {"text": text, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.invalid/{split}/{i}"}
                fh.write(json.dumps(row) + "\n")
    tok_file = folder / "tokenizer.json"
    tokenizer(vocab_size).save(str(tok_file))
    return data, tok_file
