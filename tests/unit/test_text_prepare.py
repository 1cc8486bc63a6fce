"""Text preparation at corpus scale: the cache of tokenized and packed corpora, resumable streams,
streamed validation and tokenizer training that read only what they use, and input errors that name
the file and line and say what to do."""

from __future__ import annotations

import gzip
import json
import logging

import datasets
import pytest

from hfssl.data.text import prepare as prepare_module
from hfssl.data.text.corpus import load_text_datasets
from hfssl.data.text.prepare import prepare_text_splits
from hfssl.data.text.stream import TextStream
from hfssl.data.text.tokenizer import FirstDocuments, load_or_train_tokenizer, train_tokenizer
from hfssl.errors import CheckpointError, ConfigError, DataError, TrainingStopped
from hfssl.objectives.mlm.config import MLMConfig

WORDS = "the quick brown fox jumps over lazy dog while five boxing wizards judge my vow of black quartz".split()


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def wordpiece():
    return train_tokenizer([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 5, "wordpiece", 200)


def _doc(shard: int, i: int) -> str:
    n = 3 + (7 * i + shard) % 11
    return f"shard{shard} doc{i} " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def _shards(folder, n_shards: int, per_shard: int) -> str:
    """n gzip shards of numbered documents; returns their glob."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with gzip.open(folder / f"part-{s:02d}.txt.gz", "wt", encoding="utf-8") as f:
            f.write("".join(_doc(s, i) + "\n" for i in range(per_shard)))
    return str(folder / "part-*.txt.gz")


def _cfg(train_file, **kw) -> MLMConfig:
    kw.setdefault("validation_split_percentage", 0)
    kw.setdefault("max_seq_length", 16)
    if kw.get("streaming"):
        kw.setdefault("max_steps", 10)
    return MLMConfig(train_file=str(train_file), **kw)


class _Counted:
    """Wraps a document stream with a map that records every document read (state-compatible)."""

    def __init__(self):
        self.read: list[str] = []

    def __call__(self, stream: datasets.IterableDataset) -> datasets.IterableDataset:
        return stream.map(self._see)

    def _see(self, example):
        self.read.append(example["text"])
        return example


# ----------------------------------------------------------------------------------- cache

def test_second_run_reuses_the_cache_and_each_input_invalidates_it(tmp_path, wordpiece, caplog):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(_doc(0, i) + "\n" for i in range(60)))

    def run(tokenizer=wordpiece, **kw):
        cfg = _cfg(corpus, validation_split_percentage=10, **kw)
        with caplog.at_level(logging.INFO, logger="hfssl.data.text.prepare"):
            caplog.clear()
            out = prepare_text_splits(cfg, tokenizer, load_text_datasets(cfg))
        assert out.summary in caplog.text  # the summary line is logged
        return out

    first = run()
    assert "tokenized built" in first.summary and "packed built" in first.summary
    assert first.summary.startswith("train: 54 documents")
    again = run()
    assert "tokenized reused from cache" in again.summary and "packed reused from cache" in again.summary
    assert [r.tolist() for r in again.train["input_ids"]] == [r.tolist() for r in first.train["input_ids"]]
    assert [r.tolist() for r in again.validation["input_ids"]] == [r.tolist() for r in first.validation["input_ids"]]
    longer = run(max_seq_length=32)  # same tokens, new blocks
    assert "tokenized reused" in longer.summary and "packed built" in longer.summary
    assert "tokenized built" in run(mask_strategy="whole_word").summary  # word ids needed now
    assert "tokenized built" in run(line_by_line=True).summary
    assert "tokenized built" in run(seed=7).summary  # another held-out sample
    other = train_tokenizer([_doc(1, i) for i in range(50)], "wordpiece", 150)
    assert "tokenized built" in run(tokenizer=other).summary
    assert "packed reused" in run().summary
    with open(corpus, "a") as f:  # the file changes: size and modification time
        f.write(_doc(0, 99) + "\n")
    assert "tokenized built" in run().summary


def test_tokenizer_hash_ignores_the_truncation_that_encoding_leaves_on():
    """Encoding line by line turns the tokenizer's truncation on and leaves it on: hashing that state gave the
    same tokenizer another cache key after its first use, so a process that had tokenized train and one that
    had not waited on different validation folders (a multi-GPU hang)."""
    from hfssl.data.text.cache import tokenizer_hash
    from hfssl.data.text.pack import encode

    tok = train_tokenizer([" ".join(WORDS)] * 5, "wordpiece", 120)  # not the shared fixture: this changes its state
    before = tokenizer_hash(tok)
    encode(tok, ["the quick brown fox"], with_word_ids=False, max_length=8)
    assert tok.backend_tokenizer.truncation is not None  # the state encoding leaves behind
    assert tokenizer_hash(tok) == before
    assert tokenizer_hash(train_tokenizer([" ".join(reversed(WORDS[:9]))] * 5, "wordpiece", 120)) != before


# ----------------------------------------------------------------------------------- streams

def test_resumed_stream_starts_at_the_saved_shard_and_gives_the_same_blocks(tmp_path, wordpiece):
    """Stop a packed stream in its third shard, save its position as JSON, resume in a new pipeline:
    the documents actually read start with the one that was being cut into blocks (nothing of the
    earlier shards), and the blocks are those of the uninterrupted stream."""
    cfg = _cfg(_shards(tmp_path / "shards", 4, 10), streaming=True, mask_strategy="whole_word")

    def stream(counter):
        raw = load_text_datasets(cfg)
        raw["train"] = counter(raw["train"])
        return prepare_text_splits(cfg, wordpiece, raw).train

    full = [{k: v.tolist() for k, v in b.items()} for b in stream(_Counted())]
    first = stream(_Counted())
    blocks = iter(first)
    stop = (len(full) * 5) // 8  # inside the third shard
    for _ in range(stop):
        next(blocks)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint holds
    counter = _Counted()
    resumed = stream(counter)
    resumed.load_state_dict(state)
    rest = [{k: v.tolist() for k, v in b.items()} for b in resumed]
    assert rest == full[stop:]
    assert counter.read[0].startswith("shard2 ")  # resumed inside the third shard ...
    position = int(counter.read[0].split()[1][3:])
    assert counter.read == [_doc(s, i) for s in (2, 3) for i in range(10) if s > 2 or i >= position]  # ... reading from there on
    assert 0 < position < 10


def test_streamed_validation_and_tokenizer_read_only_the_documents_they_use(tmp_path, wordpiece, monkeypatch):
    glob = _shards(tmp_path / "shards", 2, 30)
    cfg = _cfg(glob, streaming=True, validation_file=str(tmp_path / "shards" / "part-01.txt.gz"))
    monkeypatch.setattr(prepare_module, "STREAMED_VALIDATION_ROWS", 3)
    raw = load_text_datasets(cfg)
    counter = _Counted()
    raw["validation"] = counter(raw["validation"])
    out = prepare_text_splits(cfg, wordpiece, raw)
    assert len(out.validation) == 3
    body, lengths, needed = 14, [len(wordpiece(_doc(1, i), add_special_tokens=False)["input_ids"]) + 1 for i in range(30)], 0
    while sum(lengths[:needed]) < 3 * body:  # documents whose tokens fill the 3 blocks, the last one partly
        needed += 1
    assert counter.read == [_doc(1, i) for i in range(needed)]

    counter = _Counted()
    docs = FirstDocuments(counter(load_text_datasets(cfg)["train"]), 7)
    train_tokenizer(docs, "wordpiece", 120)
    assert docs.count == 7 and counter.read == [_doc(0, i) for i in range(7)]


@pytest.mark.parametrize("fmt", ["txt.gz", "jsonl.gz", "parquet", "dataset_name"])
def test_tokenizer_is_trained_from_a_stream_of_shards(tmp_path, caplog, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "shards"
    if fmt == "txt.gz":
        source = {"train_file": _shards(folder, 3, 10)}
    else:
        folder.mkdir()
        for s in range(3):
            docs = [_doc(s, i) for i in range(10)]
            if fmt == "jsonl.gz":
                with gzip.open(folder / f"part-{s}.jsonl.gz", "wt") as f:
                    f.write("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)))
            else:
                pq.write_table(pa.table({"text": docs}), folder / f"train-{s}.parquet")
        source = {"train_file": str(folder / "part-*.jsonl.gz")} if fmt == "jsonl.gz" else (
            {"train_file": str(folder / "*.parquet")} if fmt == "parquet" else {"dataset_name": str(folder)})
    cfg = MLMConfig(**source, streaming=True, max_steps=5, validation_split_percentage=0, tokenizer_train_samples=25,
                    vocab_size=150, output_dir=str(tmp_path / "out"))
    with caplog.at_level(logging.INFO, logger="hfssl.data.text.tokenizer"):
        tok = load_or_train_tokenizer(cfg, load_text_datasets(cfg)["train"])
    assert "Trained the tokenizer on 25 documents" in caplog.text
    assert "shard2" in tok.get_vocab() and (tmp_path / "out" / "tokenizer" / "tokenizer.json").is_file()


# ----------------------------------------------------------------------------------- errors


def _bad_utf8_shard(folder, good_lines: int):
    folder.mkdir(parents=True, exist_ok=True)
    good = [f"line {i} of good text, long enough to matter" for i in range(good_lines)]
    with gzip.open(folder / "a.txt.gz", "wt") as f:
        f.write("\n".join(good[:30]) + "\n")
    with gzip.open(folder / "b.txt.gz", "wb") as f:
        f.write(("\n".join(good) + "\n").encode() + "caf\xe9 in latin-1\n".encode("latin-1") + b"more\n")
    return str(folder / "*.txt.gz")


@pytest.mark.parametrize("streaming, good_lines", [(False, 20), (True, 20), (True, 30000)])
def test_undecodable_shard_is_named_with_its_line_and_the_fix(tmp_path, wordpiece, streaming, good_lines):
    """Found at load (not streamed: every file; streamed: each shard's head), or, deeper in a streamed
    shard, when the stream reaches it; either way the message names the shard, the line and the fix."""
    cfg = _cfg(_bad_utf8_shard(tmp_path / "s", good_lines), streaming=streaming)
    with pytest.raises(DataError) as err:
        raw = load_text_datasets(cfg)
        assert good_lines > 1000, "a bad line in the first chunk of a shard must fail at load"
        for _ in raw["train"]:  # what the training stream reads
            pass
    message = str(err.value)
    assert "b.txt.gz" in message and f"line {good_lines + 1} " in message and "UTF-8" in message and "iconv" in message


def test_streamed_shard_without_the_text_column_is_named(tmp_path):
    """A later shard keyed differently was read as blank documents and dropped whole, silently."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.jsonl").write_text("".join(json.dumps({"text": _doc(0, i)}) + "\n" for i in range(3))
                                             + json.dumps({"text": None}) + "\n")  # an explicit null stays a blank one
    (tmp_path / "s" / "b.jsonl").write_text("".join(json.dumps({"id": i, "content": _doc(1, i)}) + "\n" for i in range(3)))
    assert [ex["text"] for ex in load_text_datasets(_cfg(tmp_path / "s" / "a.jsonl", streaming=True))["train"]] == [
        _doc(0, 0), _doc(0, 1), _doc(0, 2), ""]
    with pytest.raises(DataError) as err:
        load_text_datasets(_cfg(tmp_path / "s" / "*.jsonl", streaming=True))
    message = str(err.value)
    assert "b.jsonl" in message and "line 1" in message and "id, content" in message and "text_column_name" in message


def test_streamed_csv_document_longer_than_the_csv_module_limit(tmp_path, monkeypatch):
    """Python's csv reader stops at 131,072 characters a field (a raw _csv.Error naming no file); the loaded
    file reads such documents whole, so the stream must too. Other csv errors name the file and line."""
    import csv

    from hfssl.data.text import readers

    big = "word " * 40000
    path = tmp_path / "corpus.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["id", "text"], [0, "short"], [1, big]])
    previous = csv.field_size_limit(131072)  # the default of a fresh process, whatever ran before
    try:
        assert [ex["text"] for ex in load_text_datasets(_cfg(path, streaming=True))["train"]] == ["short", big]
        monkeypatch.setattr(readers, "_CSV_FIELD_LIMIT", 1000)
        with pytest.raises(DataError) as err:
            load_text_datasets(_cfg(path, streaming=True))
    finally:
        csv.field_size_limit(previous)
    assert "corpus.csv" in str(err.value) and "line 3" in str(err.value)


@pytest.mark.parametrize("streaming", [False, True])
def test_non_string_text_values_name_file_and_line(tmp_path, streaming):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in [f"document {i}" for i in range(5)] + [42, "x"]))
    cfg = _cfg(path, streaming=streaming)
    with pytest.raises(DataError) as err:
        raw = load_text_datasets(cfg)
        list(raw["train"])
    message = str(err.value)
    assert "docs.jsonl, line 6" in message and "int" in message and "text_column_name" in message


@pytest.mark.parametrize("streaming", [False, True])
def test_non_string_text_column_of_a_named_dataset(tmp_path, wordpiece, streaming):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "ds").mkdir()
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "ds" / "train.parquet")
    cfg = MLMConfig(dataset_name=str(tmp_path / "ds"), streaming=streaming, max_steps=5, validation_split_percentage=0)
    with pytest.raises(DataError, match="not (a string|text).*text_column_name"):
        list(prepare_text_splits(cfg, wordpiece, load_text_datasets(cfg)).train)


@pytest.mark.parametrize("content, expected", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "line 1 (byte 0) is not valid UTF-8"),
    (gzip.compress("".join(f"line {i} holds {i * i}\n" for i in range(5000)).encode())[:9000],
     "truncated or not what its extension says"),
])
def test_unreadable_file_before_training(tmp_path, content, expected):
    path = tmp_path / ("data.txt.gz" if content[:2] == b"\x1f\x8b" else "data.txt")
    path.write_bytes(content)
    for streaming in (False, True):
        with pytest.raises(DataError) as err:
            load_text_datasets(_cfg(path, streaming=streaming))
        assert str(path) in str(err.value) and expected in str(err.value)


def test_paths_that_are_not_files(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory; give a file, or a glob of the files in it such as '.*/\*\.txt'"):
        _cfg(tmp_path)
    with pytest.raises(ConfigError, match="matches no file"):
        _cfg(tmp_path / "shards" / "*.txt.gz", streaming=True)


def test_resume_messages_say_what_is_wrong(tmp_path):
    from hfssl.checkpointing import verify_checkpoint
    from hfssl.loop_state import check_same_run_geometry

    (tmp_path / "notes").mkdir()
    with pytest.raises(CheckpointError, match="is not a checkpoint") as err:
        verify_checkpoint(tmp_path / "notes")
    assert "interrupted" not in str(err.value)
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({
        "step": 4, "seed": 1, "global_batch_size": 8, "per_device_train_batch_size": 8, "world_size": 1,
        "gradient_accumulation_steps": 1}))
    with pytest.raises(TrainingStopped) as err:
        check_same_run_geometry(json.loads((ckpt / "trainer_state.json").read_text()), ckpt, MLMConfig(seed=2, per_device_train_batch_size=8), 1)
    assert "--seed 1" in str(err.value) and "batch" not in str(err.value)
    with pytest.raises(CheckpointError, match="interrupted"):
        verify_checkpoint(ckpt)  # a checkpoint folder whose manifest is missing
    (ckpt / "trainer_state.json").write_text(json.dumps({
        "step": 4, "seed": 1, "global_batch_size": 16, "per_device_train_batch_size": 8, "world_size": 2,
        "gradient_accumulation_steps": 1, "stream": [{"documents": None}, {"documents": None}]}))
    with pytest.raises(TrainingStopped, match="Resume a streamed run on 2 processes"):
        check_same_run_geometry(json.loads((ckpt / "trainer_state.json").read_text()), ckpt,
                                MLMConfig(seed=1, per_device_train_batch_size=8, gradient_accumulation_steps=2), 1)


def test_stream_state_is_plain_json_and_none_starts_over(tmp_path, wordpiece):
    docs = datasets.Dataset.from_dict({"text": [_doc(0, i) for i in range(12)]}).to_iterable_dataset()
    stream = TextStream(docs, wordpiece, 12, False, False)
    blocks = [b["input_ids"].tolist() for b in stream]
    it = iter(stream)
    next(it)
    next(it)
    state = stream.state_dict()
    assert json.loads(json.dumps(state)) == state
    stream.load_state_dict(None)
    assert [b["input_ids"].tolist() for b in stream] == blocks
    stream.load_state_dict(state)
    assert [b["input_ids"].tolist() for b in stream] == blocks[2:]
