"""Tests for hfssl.data.text: packing, tokenizer training, loading files, the built-in corpus."""

from __future__ import annotations

import json
import re
import sysconfig

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hfssl.objectives.mlm.config import MLMConfig
from hfssl.data.text import corpus as textdata
from hfssl.errors import DataError
from hfssl.data.text.corpus import load_text_datasets
from hfssl.data.text.pack import pack_blocks, tokenize
from hfssl.data.text.tokenizer import train_tokenizer

CLS, SEP = 2, 3

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs, said the quartermaster.",
    "Unbelievably, the foxes were quicker than the dogs!",
    "How vexingly quick daft zebras jump over sleeping lions.",
    "The five boxing wizards jump quickly; the dogs did not.",
    "Sphinx of black quartz, judge my vow before the evening ends.",
]


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path, monkeypatch):
    # load_dataset and filter write Arrow caches: keep them inside the test's folder.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def wordpiece():
    return train_tokenizer(SENTENCES * 10, "wordpiece", 300)


# ------------------------------------------------------------------------------- packing

def _synthetic(lengths: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """Documents of distinct ids (no special tokens) and their word ids, 1-2 tokens per word."""
    docs, words = [], []
    nxt = 10
    for n in lengths:
        docs.append(list(range(nxt, nxt + n)))
        nxt += n
        words.append([i // 2 for i in range(n)])  # two tokens per word, ids restart per document
    return docs, words


def _stream(docs: list[list[int]], sep: int = SEP) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += [*d, sep]
    return out


def _word_stream(words: list[list[int]]) -> list[int]:
    """Document-local word ids, -1 at each document's separator."""
    return [x for w in words for x in [*w, -1]]


def _numbered(row: list[int]) -> list[int]:
    """A block's word ids as hfssl stores them: 0, 1, ... per run of equal ids >= 0, -1 elsewhere."""
    out, n, prev = [], -1, -1
    for w in row:
        if w >= 0 and w != prev:
            n += 1
        out.append(n if w >= 0 else -1)
        prev = w
    return out


def _check_blocks(blocks, block_size: int, expected_stream: list[int], cls=CLS, sep=SEP) -> None:
    blocks = [list(map(int, b)) for b in blocks]
    assert blocks, "no blocks"
    for i, b in enumerate(blocks):
        assert b[0] == cls and b[-1] == sep, f"block {i} is not [CLS] ... [SEP]"
        if i < len(blocks) - 1:
            assert len(b) == block_size, f"block {i} has {len(b)} tokens, expected {block_size}"
        else:
            assert 3 <= len(b) <= block_size
    body = [t for b in blocks for t in b[1:-1]]
    assert body == expected_stream


def _check_words(packed, expected_word_stream: list[int]) -> None:
    """Word ids per block = the expected document-local ids cut like the blocks, numbered per block."""
    rows = [list(map(int, w)) for w in packed["word_ids"]]
    assert [len(w) for w in rows] == [len(b) for b in packed["input_ids"]]
    cut, i = [], 0
    for w in rows:
        cut.append([-1, *expected_word_stream[i : i + len(w) - 2], -1])
        i += len(w) - 2
    assert i == len(expected_word_stream)
    assert rows == [_numbered(c) for c in cut]


@pytest.mark.parametrize("block_size", [8, 16, 13])
def test_pack_blocks_keeps_every_token_in_cls_sep_blocks(block_size):
    lengths = [3, 5, 0, 17, 2, 9, 4, 30, 1]
    docs, words = _synthetic(lengths)
    ds = datasets.Dataset.from_dict({"input_ids": docs, "word_ids": words})
    packed = pack_blocks(ds, block_size, CLS, SEP, with_word_ids=True, batch_size=2)
    _check_blocks(packed["input_ids"], block_size, _stream(docs))
    _check_words(packed, _word_stream(words))


def test_pack_blocks_with_exact_multiple_has_only_full_blocks():
    docs, _ = _synthetic([5, 7, 10])  # 22 tokens + 3 separators = 25 = 5 bodies of 5
    packed = pack_blocks(datasets.Dataset.from_dict({"input_ids": docs}), 7, CLS, SEP, with_word_ids=False)
    assert [len(b) for b in packed["input_ids"]] == [7] * 5
    assert packed.column_names == ["input_ids"]
    _check_blocks(packed["input_ids"], 7, _stream(docs))


def _reference_pack_blocks(tokenized, block_size, cls_id, sep_id, with_word_ids):
    """hfssl's packing before it went through datasets.map: the whole corpus in numpy at once, word ids
    offset per document to stay unique in the corpus. The oracle for the batch-wise packing."""
    table = tokenized.with_format("arrow")[:]
    ids = table.column("input_ids").combine_chunks()
    offsets = ids.offsets.to_numpy()
    lengths = np.diff(offsets)
    flat = ids.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    n_docs = len(lengths)
    total = len(flat) + n_docs
    doc_of_token = np.repeat(np.arange(n_docs), lengths)
    stream = np.empty(total, dtype=np.int64)
    stream[np.arange(len(flat)) + doc_of_token] = flat
    stream[offsets[1:] + np.arange(n_docs)] = sep_id
    out = {"input_ids": _reference_blocks(stream, block_size, cls_id, sep_id)}
    if with_word_ids:
        wids = table.column("word_ids").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        words_per_doc = np.zeros(n_docs, dtype=np.int64)
        has = lengths > 0
        words_per_doc[has] = wids[offsets[1:][has] - 1] + 1
        shift = np.concatenate([[0], np.cumsum(words_per_doc)[:-1]])
        wstream = np.full(total, -1, dtype=np.int64)
        wstream[np.arange(len(flat)) + doc_of_token] = np.where(wids >= 0, wids + shift[doc_of_token], -1)
        out["word_ids"] = _reference_blocks(wstream, block_size, -1, -1)
    return out


def _reference_blocks(stream, block_size, cls_value, sep_value):
    body = block_size - 2
    rows = [[cls_value, *stream[i : i + body].tolist(), sep_value] for i in range(0, len(stream), body)]
    return rows


@pytest.mark.parametrize("num_proc, batch_size", [(None, 1), (None, 7), (None, 1000), (2, 3)])
def test_pack_blocks_equals_the_whole_corpus_packing_for_any_batching(num_proc, batch_size):
    """Batch-wise packing (any map batch size, any number of workers) gives today's blocks of the whole
    corpus: the same input ids, and word ids that differ only in numbering (per block instead of per
    corpus), which gives the same whole-word and span masks."""
    from hfssl.collators import MLMCollator

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, 60)
    lengths[rng.random(60) < 0.15] = 0
    docs = [rng.integers(5, 500, n).tolist() for n in lengths]
    words = [np.sort(rng.integers(0, max(n // 2, 1), n)).tolist() for n in lengths]
    ds = datasets.Dataset.from_dict({"input_ids": docs, "word_ids": words})
    for block_size in (8, 29, 128):
        ref = _reference_pack_blocks(ds, block_size, CLS, SEP, True)
        packed = pack_blocks(ds, block_size, CLS, SEP, True, num_proc=num_proc, batch_size=batch_size)
        assert [list(map(int, b)) for b in packed["input_ids"]] == ref["input_ids"]
        assert [list(map(int, w)) for w in packed["word_ids"]] == [_numbered(w) for w in ref["word_ids"]]
    rows = packed.with_format("numpy")
    for strategy in ("whole_word", "span"):
        collator = MLMCollator(0, 1, torch.tensor([0, 1, CLS, SEP]), torch.arange(5, 500), mlm_probability=0.3, mask_strategy=strategy)
        ours = collator([rows[i] for i in range(len(rows))], seed=3)
        theirs = collator([{"input_ids": np.array(i), "word_ids": np.array(w)} for i, w in zip(ref["input_ids"], ref["word_ids"])], seed=3)
        assert torch.equal(ours["labels"], theirs["labels"]) and torch.equal(ours["input_ids"], theirs["input_ids"])


def test_packing_offsets_are_64_bit_past_2_to_the_31_tokens():
    """A corpus of more than 2^31 tokens: the stream positions where map batches start and the blocks
    each batch emits are exact (int64 / Python ints, no wrap-around), and packed rows use large_list
    (int64 offsets). Only the lengths are built, never the tokens."""
    from hfssl.data.text.pack import blocks_starting_in, chunk_starts

    lengths = np.full(5, 1_000_000_000, dtype=np.int64)  # 5e9 tokens in 5 documents
    lengths[2] = 7
    starts, total = chunk_starts([lengths[:3], lengths[3:]], chunk=2)
    assert total == 4_000_000_007 + 5 > 2**31
    # documents 0, 2, 4 start after (1e9 + 1) * 2 and then 7 + 1 and 1e9 + 1 more tokens and separators
    assert starts.dtype == np.int64 and starts.tolist() == [0, 2_000_000_002, 3_000_000_011]
    body = 510
    k0, n, stop = blocks_starting_in(3_000_000_011, total, total, body)  # the last batch: document 4
    assert k0 * body >= 3_000_000_011 > (k0 - 1) * body
    assert stop == total and n == -(-total // body) - k0  # its last block is the corpus's partial one
    packed = pack_blocks(datasets.Dataset.from_dict({"input_ids": [[5, 6, 7]], "word_ids": [[0, 0, 1]]}), 8, CLS, SEP, True)
    assert all(pa.types.is_large_list(t) for t in packed.data.schema.types)  # int64 offsets: past 2^31 tokens


def _tokenized_in_chunks(tok, texts: list[str]) -> datasets.Dataset:
    """Tokenized documents whose Arrow table has several chunks: a batched map writing small record
    batches, concatenated with a second tokenized part."""
    def encode(batch):
        enc = tok(batch["text"], add_special_tokens=False)
        return {"input_ids": enc["input_ids"],
                "word_ids": [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(batch["text"]))]}

    half = len(texts) // 2
    first = datasets.Dataset.from_dict({"text": texts[:half]}).map(
        encode, batched=True, batch_size=3, writer_batch_size=3, remove_columns=["text"],
        features=datasets.Features({"input_ids": datasets.LargeList(datasets.Value("uint16")),
                                    "word_ids": datasets.LargeList(datasets.Value("int32"))}))
    second = tokenize(datasets.Dataset.from_dict({"text": texts[half:]}), tok, with_word_ids=True)
    return datasets.concatenate_datasets([first, second])


def test_pack_blocks_on_multi_chunk_tokenized_dataset_drops_nothing(wordpiece):
    texts = [f"{s} Number {i} of the corpus." for i, s in enumerate(SENTENCES * 4)]
    toks = _tokenized_in_chunks(wordpiece, texts)
    assert toks.data.column("input_ids").num_chunks > 1  # the case under test
    cls, sep = wordpiece.cls_token_id, wordpiece.sep_token_id
    packed = pack_blocks(toks, 32, cls, sep, with_word_ids=True, batch_size=5)
    docs = [wordpiece(t, add_special_tokens=False)["input_ids"] for t in texts]
    _check_blocks(packed["input_ids"], 32, _stream(docs, sep), cls, sep)
    words = [wordpiece(t, add_special_tokens=False).word_ids() for t in texts]
    _check_words(packed, _word_stream(words))
    # Within a block every word id is one contiguous stretch of one document.
    for row in packed["word_ids"]:
        row = list(map(int, row))
        for w in set(row) - {-1}:
            at = [i for i, x in enumerate(row) if x == w]
            assert at == list(range(at[0], at[-1] + 1))


def test_pack_blocks_respects_selection_and_shuffle():
    # A Dataset after select/shuffle/filter shows other rows than its underlying Arrow table.
    docs, words = _synthetic([3, 5, 7, 2, 9, 4])
    ds = datasets.Dataset.from_dict({"input_ids": docs, "word_ids": words})
    for view in (ds.select([4, 1, 3]), ds.shuffle(seed=0), ds.filter(lambda e: len(e["input_ids"]) > 3)):
        packed = pack_blocks(view, 8, CLS, SEP, with_word_ids=True, batch_size=2)
        _check_blocks(packed["input_ids"], 8, _stream(list(view["input_ids"])))
        _check_words(packed, _word_stream(list(view["word_ids"])))


@pytest.mark.parametrize("line_by_line", [False, True])
@pytest.mark.parametrize("block_size", [8, 11, 64])
def test_text_stream_matches_map_style_preparation(wordpiece, line_by_line, block_size):
    """The streamed path tokenizes and packs as it reads; it gives the map-style path's examples."""
    from hfssl.data.text.stream import TextStream

    texts = [f"{s} Number {i}." if i % 5 else "   " for i, s in enumerate(SENTENCES * 3)]
    docs = datasets.Dataset.from_dict({"text": texts})
    max_length = block_size if line_by_line else None
    toks = tokenize(docs, wordpiece, True, max_length)
    expected = toks if line_by_line else pack_blocks(toks, block_size, wordpiece.cls_token_id, wordpiece.sep_token_id, True)
    for read_ahead in (1, 4, 64):
        streamed = list(TextStream(docs.to_iterable_dataset(), wordpiece, block_size, line_by_line, True, read_ahead))
        assert [b["input_ids"].tolist() for b in streamed] == [list(map(int, r)) for r in expected["input_ids"]]
        assert [b["word_ids"].tolist() for b in streamed] == [list(map(int, r)) for r in expected["word_ids"]]


# ------------------------------------------------------------------------------- tokenizer

@pytest.mark.parametrize("kind, vocab_size, specials", [
    ("wordpiece", 300, {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}),
    ("bpe", 400, {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}),
])
def test_train_tokenizer_round_trip(tmp_path, kind, vocab_size, specials):
    from transformers import AutoTokenizer

    tok = train_tokenizer(SENTENCES * 10, kind, vocab_size)
    assert tok.is_fast
    for role, token in specials.items():
        assert getattr(tok, f"{role}_token") == token
        assert getattr(tok, f"{role}_token_id") is not None
        assert tok.convert_tokens_to_ids(token) == getattr(tok, f"{role}_token_id")
    assert tok.mask_token_id in tok.all_special_ids
    assert len(tok) <= vocab_size
    assert len(set(tok.all_special_ids)) == 5

    text = "The quick dogs jump over the sleeping zebras."
    enc = tok(text)
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"][-1] == tok.sep_token_id
    words = enc.word_ids()
    assert words[0] is None and words[-1] is None
    assert [w for w in words[1:-1]] == sorted(w for w in words[1:-1])  # non-decreasing word ids
    assert max(w for w in words if w is not None) == len(text.split()) + text.count(".") - 1
    if kind == "bpe":  # byte-level: lossless
        assert tok.decode(enc["input_ids"], skip_special_tokens=True) == text
        assert tok.unk_token_id not in tok("Ünïcödé 🙂")["input_ids"]
    else:
        assert tok.decode(enc["input_ids"], skip_special_tokens=True).replace(" .", ".") == text.lower()

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.is_fast
    for t in [text, *SENTENCES, "unseen wordz appear here"]:
        assert loaded(t)["input_ids"] == tok(t)["input_ids"]
        assert loaded(t).word_ids() == tok(t).word_ids()
    assert loaded.mask_token == tok.mask_token and loaded.pad_token_id == tok.pad_token_id
    assert loaded.cls_token_id == tok.cls_token_id and loaded.sep_token_id == tok.sep_token_id
    assert sorted(loaded.all_special_ids) == sorted(tok.all_special_ids)
    assert len(loaded) == len(tok)


def test_wordpiece_ids_do_not_depend_on_hash_order():
    """The trainer numbers "##" pieces in hash-map order; hfssl renumbers them, so a vocabulary gets the same ids
    in every training: the specials first, then the rest sorted."""
    tok = train_tokenizer(SENTENCES * 10, "wordpiece", 300)
    vocab = tok.get_vocab()
    ordered = sorted(vocab, key=vocab.get)
    assert ordered[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert ordered[5:] == sorted(ordered[5:]) and any(t.startswith("##") for t in ordered)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    # the renumbered model still splits words into the trained pieces
    assert tok.convert_ids_to_tokens(tok("sleeping")["input_ids"])[1:-1] == tok.tokenize("sleeping")


def test_train_tokenizer_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unigram"):
        train_tokenizer(SENTENCES, "unigram", 300)


# ------------------------------------------------------------------------------- loading files

def _cfg(path, **kw) -> MLMConfig:
    kw.setdefault("validation_split_percentage", 0)
    return MLMConfig(train_file=str(path), **kw)


DOCS = [f"Document number {i}: {s}" for i, s in enumerate(SENTENCES * 3)]


def test_load_txt_keeps_lines_and_preparation_drops_blank_ones(tmp_path, wordpiece):
    from hfssl.data.text.prepare import prepare_text_splits

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS[:5]) + "\n\n   \n" + "\n".join(DOCS[5:]) + "\n")
    cfg = _cfg(path, line_by_line=True, max_seq_length=64)
    raw = load_text_datasets(cfg)
    assert list(raw) == ["train"]
    assert raw["train"].column_names == ["text"]
    assert raw["train"]["text"] == DOCS[:5] + ["", "   "] + DOCS[5:]
    prepared = prepare_text_splits(cfg, wordpiece, raw)
    assert [list(r) for r in prepared.train["input_ids"]] == [wordpiece(d)["input_ids"] for d in DOCS]
    assert prepared.summary.startswith(f"train: {len(DOCS)} documents")


def test_load_csv_with_text_column_name(tmp_path):
    import csv

    path = tmp_path / "corpus.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "body", "label"])
        for i, d in enumerate(DOCS):
            w.writerow([i, d, "x"])
    raw = load_text_datasets(_cfg(path, text_column_name="body"))
    assert raw["train"].column_names == ["text"]
    assert raw["train"]["text"] == DOCS


def test_streamed_txt_splits_lines_as_the_loaded_file_does(tmp_path):
    """Only line ends separate .txt documents, streamed or loaded: form feeds, U+2028 and the like stay inside a line
    (the streaming reader used str.splitlines, which split there too: 5 documents against the loaded file's 2)."""
    path = tmp_path / "corpus.txt"
    path.write_text("first doc\x0csame doc\r\nsecond doc \u2028 still second\x85 and still\n", encoding="utf-8")
    loaded = load_text_datasets(_cfg(path))["train"]["text"]
    streamed = [ex["text"] for ex in load_text_datasets(_cfg(path, streaming=True, max_steps=5))["train"]]
    assert streamed == loaded == ["first doc\x0csame doc", "second doc \u2028 still second\x85 and still"]


@pytest.mark.parametrize("streaming", [False, True])
def test_text_column_name_beside_another_column_called_text(tmp_path, streaming):
    """--text_column_name body with a 'text' column too: trains on body (renaming body onto the existing 'text'
    column was a raw ValueError)."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"title {i}", "body": d}) + "\n" for i, d in enumerate(DOCS)))
    raw = load_text_datasets(_cfg(path, text_column_name="body", **({"streaming": True, "max_steps": 5} if streaming else {})))
    assert [ex["text"] for ex in raw["train"]] == DOCS


def test_load_jsonl_and_validation_file(tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS)))
    val.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS[:3])))
    raw = load_text_datasets(_cfg(train, validation_file=str(val)))
    assert sorted(raw) == ["train", "validation"]
    assert raw["train"]["text"] == DOCS and raw["validation"]["text"] == DOCS[:3]
    assert raw["validation"].column_names == ["text"]


def test_load_parquet_picks_the_only_string_column_and_holds_out_validation(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"content": DOCS, "n": list(range(len(DOCS)))}), path)
    raw = load_text_datasets(_cfg(path, validation_split_percentage=20, seed=3))
    n_val = int(len(DOCS) * 0.2)
    assert len(raw["validation"]) == n_val and len(raw["train"]) == len(DOCS) - n_val
    assert sorted(list(raw["train"]["text"]) + list(raw["validation"]["text"])) == sorted(DOCS)
    again = load_text_datasets(_cfg(path, validation_split_percentage=20, seed=3))
    assert again["validation"]["text"] == raw["validation"]["text"]  # seeded split


def test_max_train_samples_keeps_the_first_documents(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS) + "\n")
    raw = load_text_datasets(_cfg(path, max_train_samples=4))
    assert raw["train"]["text"] == DOCS[:4]


@pytest.mark.parametrize("key, value, said", [("tokenizer_train_samples", -1, "must be >= 0 (0 = every document), got -1"),
                                              ("max_train_samples", 0, "must be >= 1 (leave it unset for every document), got 0")])
def test_document_counts_below_their_range_are_refused_at_load(tmp_path, key, value, said):
    """tokenizer_train_samples -1 failed in itertools.islice when the tokenizer was trained; max_train_samples 0 said
    '<file> has 0 documents: too few to hold out 5.0%' without naming the setting."""
    from hfssl.errors import ConfigError

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS) + "\n")
    with pytest.raises(ConfigError, match=rf"^{key} {re.escape(said)}"):
        _cfg(path, **{key: value})


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".jsonl"])
def test_streaming_load_gives_the_text_column(tmp_path, suffix):
    path = tmp_path / f"corpus{suffix}"
    docs = [d.replace(",", "") for d in DOCS[:6]]
    column = "text"
    if suffix == ".txt":
        path.write_text("\n".join(docs[:3]) + "\n   \n" + "\n".join(docs[3:]) + "\n")
    elif suffix == ".csv":  # features of a streamed CSV are unknown until it is read
        column = "body"
        path.write_text("id,body\n" + "".join(f"{i},{d}\n" for i, d in enumerate(docs[:3])) + "9,\n"
                        + "".join(f"{i},{d}\n" for i, d in enumerate(docs[3:])))
    else:
        path.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)))
    cfg = _cfg(path, streaming=True, max_steps=5, text_column_name=column if column != "text" else None)
    raw = load_text_datasets(cfg)
    assert isinstance(raw["train"], datasets.IterableDataset)
    assert [ex["text"] for ex in raw["train"] if ex["text"].strip()] == docs  # blank ones are dropped at tokenization
    if suffix == ".csv":
        with pytest.raises(DataError, match="id, body"):
            load_text_datasets(_cfg(path, streaming=True, max_steps=5, text_column_name="content"))


@pytest.mark.parametrize("streaming", [False, True])
def test_jsonl_record_without_the_text_column_is_never_dropped_silently(tmp_path, streaming, caplog):
    """Loaded (not streamed), datasets filled the missing 'text' of line 8 with null and it was dropped as blank without
    a word: now counted in a warning (null and missing look alike there); the stream refuses it naming the line.
    Explicit nulls and blank strings stay blank documents, in both."""
    rows = [{"text": d} for d in DOCS[:10]]
    rows[3], rows[5] = {"text": None}, {"text": "  "}
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = {"streaming": True, "max_steps": 5} if streaming else {}
    assert [ex["text"] or "" for ex in load_text_datasets(_cfg(good, **kw))["train"]][3:6] == ["", DOCS[4], "  "]
    rows[7] = {"body": DOCS[7]}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if streaming:
        with pytest.raises(DataError, match=r"bad\.jsonl, line 8: no column 'text' \(this record has: body\)"):
            list(load_text_datasets(_cfg(bad, **kw))["train"])
    else:
        load_text_datasets(_cfg(bad, **kw))
        assert "train split: 2 of 10 records have no 'text' (the key is missing or null; the first is record 4)" in caplog.text


def test_missing_text_column_lists_available_columns(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("title,summary\n" + "".join(f"t{i},{d.replace(',', '')}\n" for i, d in enumerate(DOCS)))
    with pytest.raises(DataError) as err:
        load_text_datasets(_cfg(path, text_column_name="body"))
    msg = str(err.value)
    assert "'body'" in msg and "title" in msg and "summary" in msg
    # Two string columns and none called 'text': ambiguous, also lists them.
    with pytest.raises(DataError) as err:
        load_text_datasets(_cfg(path))
    assert "text_column_name" in str(err.value) and "title" in str(err.value) and "summary" in str(err.value)


def test_a_trained_vocabulary_far_below_vocab_size_is_warned_about(tmp_path, caplog):
    """A small corpus gave 106 tokens for vocab_size 30000 with nothing said."""
    from hfssl.data.text.tokenizer import load_or_train_tokenizer

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS) + "\n")
    cfg = _cfg(path, output_dir=str(tmp_path / "o"), vocab_size=30000)
    tok = load_or_train_tokenizer(cfg, load_text_datasets(cfg)["train"])
    assert f"The trained tokenizer has {len(tok)} tokens, far fewer than vocab_size 30000" in caplog.text
    caplog.clear()
    load_or_train_tokenizer(_cfg(path, output_dir=str(tmp_path / "o2"), vocab_size=len(tok)), load_text_datasets(cfg)["train"])
    assert "far fewer" not in caplog.text


@pytest.mark.parametrize("streaming", [False, True])
def test_all_blank_file_names_the_split(tmp_path, wordpiece, streaming):
    """All documents blank (or tokenizing to nothing): an error before training naming the split, for a
    trained tokenizer (nothing to train on) and a given one (nothing to pack)."""
    from hfssl.data.text.prepare import prepare_text_splits
    from hfssl.data.text.tokenizer import load_or_train_tokenizer

    blank = tmp_path / "blank.txt"
    blank.write_text("   \n\n\t\n  \n")
    kw = {"streaming": True, "max_steps": 5} if streaming else {}
    with pytest.raises(DataError, match="no non-blank text"):
        load_or_train_tokenizer(_cfg(blank, output_dir=str(tmp_path / "o"), **kw), load_text_datasets(_cfg(blank, **kw))["train"])
    nothing = tmp_path / "nothing.txt"
    nothing.write_text("\u200b\n\u200b \x01\n")  # not blank, but BERT's normalizer removes every character
    with pytest.raises(DataError, match=r"\btrain\b.*blank or tokenize"):
        prepared = prepare_text_splits(_cfg(nothing, **kw), wordpiece, load_text_datasets(_cfg(nothing, **kw)))
        list(prepared.train)  # a stream finds out as it is read
    good = tmp_path / "good.txt"
    good.write_text("\n".join(DOCS) + "\n")
    # Named by the validation file (it said "The validation split of good.txt", the train file).
    with pytest.raises(DataError, match=rf"The validation (split|stream) of {re.escape(str(blank))} has no text"):
        prepare_text_splits(_cfg(good, validation_file=str(blank), **kw), wordpiece,
                            load_text_datasets(_cfg(good, validation_file=str(blank), **kw)))


# ------------------------------------------------------------------------------- built-in corpus

def test_builtin_corpus_is_a_large_english_corpus():
    docs = textdata.builtin_corpus()
    assert len(docs) > 1000
    assert all(isinstance(d, str) and len(d) >= 40 and d == " ".join(d.split()) for d in docs)
    english = sum(f" {w} " in f" {d.lower()} " for d in docs for w in ("the",)) / len(docs)
    assert english > 0.5, f"only {english:.0%} of documents contain 'the'"
    ascii_share = sum(c.isascii() for d in docs[:2000] for c in d) / sum(len(d) for d in docs[:2000])
    assert ascii_share > 0.98
    assert not any(d.startswith(">>>") for d in docs)


def test_debian_builtin_corpus_reads_the_shipped_file(tmp_path, monkeypatch):
    """builtin_corpus debian-descriptions = --train_file <the shipped corpus>; an explicit train_file wins; a checkout
    without the file fails at load, naming it and what to pass instead."""
    from hfssl.errors import ConfigError
    from hfssl.objectives import load_config

    from conftest import ROOT
    recipe = [str(ROOT / "recipes/mlm/tiny-cpu.yaml"), "--output_dir", str(tmp_path / "o")]
    shipped = textdata.BUILTIN_FILES["debian-descriptions"]
    assert load_config([*recipe, "--builtin_corpus", "debian-descriptions"]).train_file == str(shipped)
    assert load_config(recipe).train_file == str(shipped)  # README command 1's recipe reads it by default
    assert shipped.is_file() and shipped.stat().st_size > 1_000_000
    own = tmp_path / "own.txt"
    own.write_text("my own corpus line\n")
    assert load_config([*recipe, "--builtin_corpus", "debian-descriptions", "--train_file", str(own)]).train_file == str(own)
    assert load_config([*recipe, "--builtin_corpus", "python-docstrings"]).train_file is None
    monkeypatch.setitem(textdata.BUILTIN_FILES, "debian-descriptions", tmp_path / "gone.txt.gz")
    with pytest.raises(ConfigError, match=r"gone\.txt\.gz.*--train_file.*python-docstrings"):
        load_config([*recipe, "--builtin_corpus", "debian-descriptions"])


def test_builtin_corpus_is_deterministic(tmp_path, monkeypatch):
    """Same files -> same documents in the same order, whatever order the files were created in;
    tests and site-packages are left out."""
    sources = {
        "zeta.py": '"""Zeta module docstring that is long enough to be kept as prose."""\n'
                   'def f():\n    """Function docstring, also comfortably longer than forty characters.\n\n'
                   '    >>> f()  # a doctest paragraph, skipped\n\n    Short.\n    """\n',
        "alpha.py": 'class A:\n    """Class docstring of alpha that easily passes the length filter."""\n',
        "pkg/mid.py": '"""A nested package module whose docstring is a sentence of prose."""\n',
        "test/test_x.py": '"""Test module docstring that would be long enough but is excluded."""\n',
        "site-packages/lib.py": '"""Third-party docstring that is long enough but must be left out."""\n',
    }
    results = []
    for order, name in ((sorted(sources), "a"), (sorted(sources, reverse=True), "b")):
        root = tmp_path / name
        for rel in order:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(sources[rel])
        monkeypatch.setattr(sysconfig, "get_paths", lambda root=root: {"stdlib": str(root)})
        results.append(textdata.builtin_corpus())
    assert results[0] == results[1]
    assert results[0] == [
        "Class docstring of alpha that easily passes the length filter.",
        "A nested package module whose docstring is a sentence of prose.",
        "Zeta module docstring that is long enough to be kept as prose.",
        "Function docstring, also comfortably longer than forty characters.",
    ]
