"""The C4 stream resumes from its saved position: the same batches as an uninterrupted run, reading one
shard's prefix and one window instead of every document before the checkpoint; and a killed llm run on
C4-format data resumes to the uninterrupted run's loss curve."""

import gzip
import io
import json
import sys

import pytest
import torch
from conftest import sigkill_when, small_llm_sets
from datasets.packaged_modules.json.json import Json

from spam_bench.runners import synthetic_c4
from spam_bench.runners.cli import main
from spam_bench.suite.results import CHECKPOINT_GLOBALS, read_json, read_metrics
from spam_bench.tasks.llm.data import C4Data

VOCAB = 256
WORDS = synthetic_c4.words(VOCAB - len(synthetic_c4.SPECIALS))
FIRST_WORD = len(synthetic_c4.SPECIALS)  # the word-level tokenizer's id of WORDS[0]
INDEX_BASE = 64  # document i of a shard starts with WORDS[s], then WORDS[INDEX_BASE + i]


def write_c4_shards(folder, *, shards: int, docs: int, val_docs: int = 40):
    """`shards` gzipped C4-layout train files of `docs` documents each (C4's naming), one validation file,
    and a word-level tokenizer; document i of shard s starts with the words WORDS[s], WORDS[INDEX_BASE + i]."""
    assert shards <= INDEX_BASE and INDEX_BASE + max(docs, val_docs) <= len(WORDS)
    folder.mkdir(parents=True, exist_ok=True)

    def write(path, rows):
        with gzip.open(path, "wt") as fh:
            for i, text in enumerate(rows):
                fh.write(
                    json.dumps({"text": text, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://x.invalid/{i}"})
                )
                fh.write("\n")

    for s in range(shards):
        filler = [
            " ".join(WORDS[(s * 31 + i * 7 + j * j) % len(WORDS)] for j in range(3 + (i * 5) % 40)) for i in range(docs)
        ]
        write(
            folder / f"c4-train.{s:05d}-of-{shards:05d}.json.gz",
            [f"{WORDS[s]} {WORDS[INDEX_BASE + i]} {filler[i]}" for i in range(docs)],
        )
    write(
        folder / "c4-validation.00000-of-00001.json.gz",
        [" ".join(WORDS[(i * 13 + j) % len(WORDS)] for j in range(20 + i)) for i in range(val_docs)],
    )
    tok_file = folder.parent / "tokenizer.json"
    synthetic_c4.tokenizer(VOCAB).save(str(tok_file))
    return folder, tok_file


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 shards of 25 documents: 200 documents an epoch, 50 batches of 4."""
    return write_c4_shards(tmp_path_factory.mktemp("c4") / "c4", shards=8, docs=25)


def _c4(folder, tok_file, **kw) -> C4Data:
    from tokenizers import Tokenizer

    settings = {"seq_len": 16, "batch_size": 4, "eval_tokens": 64, "shuffle_window": 10, **kw}
    return C4Data(tokenizer=Tokenizer.from_file(str(tok_file)), data_files=str(folder), pad_id=0, **settings)


def _documents(batch) -> list[tuple[int, int]]:
    """(shard, index) of each row's document, from its first two tokens."""
    x, _ = batch
    return [(int(r[0]) - FIRST_WORD, int(r[1]) - FIRST_WORD - INDEX_BASE) for r in x]


def _through_checkpoint(state):
    """The state as a resumed run gets it: saved and loaded with torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.fixture
def rows_read(monkeypatch):
    """Counts the documents the json reader parses from the files (what resuming costs in reading)."""
    count = [0]
    original = Json._generate_tables

    def counting(self, *args, **kwargs):
        for key, table in original(self, *args, **kwargs):
            count[0] += len(table)
            yield key, table

    monkeypatch.setattr(Json, "_generate_tables", counting)
    return count


def test_each_epoch_reads_every_document_once_in_a_new_order(shards):
    data = _c4(*shards)
    epochs = [[d for step in range(e * 50, (e + 1) * 50) for d in _documents(data.train_batch(step))] for e in (0, 1)]
    every = {(s, i) for s in range(8) for i in range(25)}
    for docs in epochs:
        assert len(docs) == len(set(docs)) == 200 and set(docs) == every
    assert epochs[0] != epochs[1]
    window = epochs[0][:10]  # the first window: a shard's first 10 documents, permuted
    assert len({s for s, _ in window}) == 1 and sorted(i for _, i in window) == list(range(10))
    assert [i for _, i in window] != list(range(10))


@pytest.mark.parametrize("world_size", [2, 3])  # 8 shards: split by shard (2), by document within shards (3)
def test_ranks_split_each_epoch_into_disjoint_parts(shards, world_size):
    steps = 200 // world_size // 4  # batches of 4 within each rank's first epoch
    per_rank = []
    for rank in range(world_size):
        data = _c4(*shards, rank=rank, world_size=world_size)
        per_rank.append([d for step in range(steps) for d in _documents(data.train_batch(step))])
    seen = [d for docs in per_rank for d in docs]
    assert len(seen) == len(set(seen)) == steps * 4 * world_size
    if world_size == 2:  # the whole epoch, each rank reading 4 whole shards
        assert len(seen) == 200 and all(len({s for s, _ in docs}) == 4 for docs in per_rank)


def test_resume_from_the_saved_state_gives_the_uninterrupted_batches(shards):
    """Resume at every step of two and a half epochs (mid-window, window, shard and epoch boundaries);
    the window (10) divides neither the shard (25) nor the batch (4)."""
    straight, states, batches = _c4(*shards), [], []
    for step in range(125):
        states.append(_through_checkpoint(straight.state_dict()))
        batches.append(straight.train_batch(step))
    resumed = _c4(*shards)  # a fresh object per resume is the honest case; one, reloaded, keeps the test fast
    for step in range(0, 125, 3):
        resumed.load_state_dict(states[step])
        for k in range(step, min(step + 4, 125)):
            got = resumed.train_batch(k)
            assert torch.equal(got[0], batches[k][0]) and torch.equal(got[1], batches[k][1]), (step, k)
    fresh = _c4(*shards)
    fresh.load_state_dict(states[97])
    assert torch.equal(fresh.train_batch(97)[0], batches[97][0])


def test_the_saved_state_is_plain_data(shards):
    data = _c4(*shards)
    for step in range(7):
        data.train_batch(step)
    state = data.state_dict()
    assert _through_checkpoint(state) == state and state["step"] == 7

    def leaves(value):
        if isinstance(value, dict):
            assert all(type(k) is str for k in value)
            return [leaf for v in value.values() for leaf in leaves(v)]
        return [value]

    assert {type(leaf) for leaf in leaves(state)} <= {int, str, type(None)}


def _opened(folder, tok_file) -> C4Data:
    data = _c4(folder, tok_file)
    data._train_split()  # opening the split parses the first file's first chunk (feature inference): a constant
    return data


def test_resume_reads_at_most_two_shards_not_the_stream_before_it(shards, rows_read):
    straight, states, batches = _c4(*shards), {}, {}
    for step in range(96):
        states[step] = straight.state_dict()
        batches[step] = straight.train_batch(step)
    resumed, skipped = {}, {}
    for step in (5, 10, 45, 95):
        data, before = _opened(*shards), rows_read[0]
        data.load_state_dict(states[step])
        assert torch.equal(data.train_batch(step)[0], batches[step][0])
        resumed[step] = rows_read[0] - before
        data, before = _opened(*shards), rows_read[0]  # no saved position: read from the start, as skip() did
        assert torch.equal(data.train_batch(step)[0], batches[step][0])
        skipped[step] = rows_read[0] - before
    # Resuming parses the saved window's shard from its start (a small file is parsed whole: 25 documents),
    # and the next shard too when the window reaches into it (step 5: documents 20-29 straddle shards 0
    # and 1); the same at step 95, in the second epoch, as at step 10.
    assert resumed == {5: 50, 10: 25, 45: 25, 95: 25}, resumed
    assert all(skipped[step] >= 4 * (step + 1) for step in skipped) and skipped[95] >= 400, skipped


@pytest.mark.slow
def test_killed_c4_run_resumes_to_the_uninterrupted_loss_curve(tmp_path, monkeypatch):
    data, tok_file = write_c4_shards(tmp_path / "data" / "c4", shards=6, docs=20)  # 15 batches of 8 an epoch
    sets = [
        *small_llm_sets(steps=40, eval_every=20),
        "dataset=c4",
        f"data_files={data}",
        f"tokenizer={tok_file}",
        f"vocab_size={VOCAB}",
    ]
    straight = tmp_path / "straight"
    argv = ["run", "--task", "llm", "--opt", "adamw"]
    assert main([*argv, "--out", str(straight), *[a for s in sets for a in ("--set", s)]]) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "spam_bench.runners.cli", *argv, "--out", str(killed)]
    cmd += [a for s in sets for a in ("--set", s)]
    run_dir = sigkill_when(cmd, killed, "llm", lambda lines: lines[-1]["step"] >= 18)
    with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
        task_state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["task"]
    assert task_state["data"]["step"] == task_state["step"] >= 15  # past the first epoch and 3 shards

    loaded, load = [], C4Data.load_state_dict
    monkeypatch.setattr(C4Data, "load_state_dict", lambda self, state: (loaded.append(state), load(self, state))[1])
    assert main([*argv, "--out", str(killed), *[a for s in sets for a in ("--set", s)]]) == 0
    assert loaded == [task_state["data"]], "the resumed run positions the stream from the checkpoint"
    assert not list(run_dir.glob("checkpoint.pt.corrupt-*")), "the checkpoint was set aside, not resumed"
    (straight_dir,) = (straight / "runs" / "llm").iterdir()
    a, b = read_json(straight_dir / "summary.json"), read_json(run_dir / "summary.json")
    assert a["value"] == b["value"] and b["steps"] == 40

    def curve(d):
        return [(m["step"], m["split"], m["name"], m["value"]) for m in read_metrics(d)]

    assert curve(straight_dir) == curve(run_dir)
