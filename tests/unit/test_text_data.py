"""Tests for hfssl.data.text: packing, tokenizer training, loading files, the built-in corpus."""

from __future__ import annotations

import json
import sysconfig

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hfssl.objectives.mlm.config import MLMConfig
from hfssl.data.text import corpus as textdata
from hfssl.errors import DataError
from hfssl.data.text.corpus import load_text_datasets
from hfssl.data.text.pack import pack_blocks, pack_stream, tokenize
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


def _stream(docs: list[list[int]]) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += [*d, SEP]
    return out


def _word_stream(words: list[list[int]]) -> list[int]:
    out, shift = [], 0
    for w in words:
        out += [x + shift for x in w] + [-1]
        shift += (max(w) + 1) if w else 0
    return out


def _check_blocks(blocks: list[list[int]], block_size: int, expected_stream: list[int], cls=CLS, sep=SEP) -> None:
    assert blocks, "no blocks"
    for i, b in enumerate(blocks):
        assert b[0] == cls and b[-1] == sep, f"block {i} is not [CLS] ... [SEP]"
        if i < len(blocks) - 1:
            assert len(b) == block_size, f"block {i} has {len(b)} tokens, expected {block_size}"
        else:
            assert 3 <= len(b) <= block_size
    body = [t for b in blocks for t in b[1:-1]]
    assert body == expected_stream


@pytest.mark.parametrize("block_size", [8, 16, 13])
def test_pack_blocks_keeps_every_token_in_cls_sep_blocks(block_size):
    lengths = [3, 5, 0, 17, 2, 9, 4, 30, 1]
    docs, words = _synthetic(lengths)
    ds = datasets.Dataset.from_dict({"input_ids": docs, "word_ids": words})
    packed = pack_blocks(ds, block_size, CLS, SEP, with_word_ids=True)
    _check_blocks(packed["input_ids"], block_size, _stream(docs))
    wblocks = packed["word_ids"]
    assert [len(w) for w in wblocks] == [len(b) for b in packed["input_ids"]]
    assert all(w[0] == -1 and w[-1] == -1 for w in wblocks)
    assert [x for w in wblocks for x in w[1:-1]] == _word_stream(words)


def test_pack_blocks_with_exact_multiple_has_only_full_blocks():
    docs, _ = _synthetic([5, 7, 10])  # 22 tokens + 3 separators = 25 = 5 bodies of 5
    packed = pack_blocks(datasets.Dataset.from_dict({"input_ids": docs}), 7, CLS, SEP, with_word_ids=False)
    assert [len(b) for b in packed["input_ids"]] == [7] * 5
    assert packed.column_names == ["input_ids"]
    _check_blocks(packed["input_ids"], 7, _stream(docs))


def _tokenized_in_chunks(tok, texts: list[str]) -> datasets.Dataset:
    """Tokenized documents whose Arrow table has several chunks: a batched map writing small record
    batches, concatenated with a second tokenized part."""
    def encode(batch):
        enc = tok(batch["text"], add_special_tokens=False)
        return {"input_ids": enc["input_ids"],
                "word_ids": [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(batch["text"]))]}

    half = len(texts) // 2
    first = datasets.Dataset.from_dict({"text": texts[:half]}).map(
        encode, batched=True, batch_size=3, writer_batch_size=3, remove_columns=["text"])
    second = tokenize(datasets.Dataset.from_dict({"text": texts[half:]}), tok, with_word_ids=True)
    return datasets.concatenate_datasets([first, second])


def test_pack_blocks_on_multi_chunk_tokenized_dataset_drops_nothing(wordpiece):
    texts = [f"{s} Number {i} of the corpus." for i, s in enumerate(SENTENCES * 4)]
    toks = _tokenized_in_chunks(wordpiece, texts)
    assert toks.data.column("input_ids").num_chunks > 1  # the case under test
    cls, sep = wordpiece.cls_token_id, wordpiece.sep_token_id
    packed = pack_blocks(toks, 32, cls, sep, with_word_ids=True)
    docs = [wordpiece(t, add_special_tokens=False)["input_ids"] for t in texts]
    _check_blocks(packed["input_ids"], 32, _stream_sep(docs, sep), cls, sep)
    words = [[w for w in wordpiece(t, add_special_tokens=False).word_ids()] for t in texts]
    wstream = [x for w in packed["word_ids"] for x in w[1:-1]]
    assert wstream == _word_stream(words)
    # Offsets keep word ids unique: each id occupies one contiguous stretch, and no two documents share one.
    seen_at: dict[int, int] = {}
    for pos, w in enumerate(wstream):
        if w >= 0:
            assert w not in seen_at or seen_at[w] == pos - 1, f"word id {w} reappears after a gap"
            seen_at[w] = pos
    doc_ids = _doc_index(docs)
    owners: dict[int, set] = {}
    for w, d in zip(wstream, doc_ids):
        if w >= 0:
            owners.setdefault(w, set()).add(d)
    assert all(len(o) == 1 for o in owners.values())
    assert len(owners) == sum(max(w) + 1 for w in words if w)


def _stream_sep(docs, sep):
    out = []
    for d in docs:
        out += [*d, sep]
    return out


def _doc_index(docs):
    out = []
    for i, d in enumerate(docs):
        out += [i] * len(d) + [-1]
    return out


def test_pack_blocks_respects_selection_and_shuffle():
    # A Dataset after select/shuffle/filter shows other rows than its underlying Arrow table.
    docs, words = _synthetic([3, 5, 7, 2, 9, 4])
    ds = datasets.Dataset.from_dict({"input_ids": docs, "word_ids": words})
    for view in (ds.select([4, 1, 3]), ds.shuffle(seed=0), ds.filter(lambda e: len(e["input_ids"]) > 3)):
        shown = list(view["input_ids"])
        packed = pack_blocks(view, 8, CLS, SEP, with_word_ids=True)
        _check_blocks(packed["input_ids"], 8, _stream(shown))
        assert [x for w in packed["word_ids"] for x in w[1:-1]] == _word_stream(list(view["word_ids"]))


@pytest.mark.parametrize("with_word_ids", [True, False])
@pytest.mark.parametrize("block_size", [8, 11, 64])
def test_pack_stream_matches_pack_blocks(with_word_ids, block_size):
    docs, words = _synthetic([3, 5, 0, 17, 2, 9, 4, 30, 1, 6, 6, 6])
    ds = datasets.Dataset.from_dict({"input_ids": docs, "word_ids": words})
    packed = pack_blocks(ds, block_size, CLS, SEP, with_word_ids)
    streamed = list(pack_stream(iter(ds), block_size, CLS, SEP, with_word_ids))
    assert [b["input_ids"] for b in streamed] == packed["input_ids"]
    if with_word_ids:
        assert [b["word_ids"] for b in streamed] == packed["word_ids"]
    else:
        assert all("word_ids" not in b for b in streamed)


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


def test_train_tokenizer_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unigram"):
        train_tokenizer(SENTENCES, "unigram", 300)


# ------------------------------------------------------------------------------- loading files

def _cfg(path, **kw) -> MLMConfig:
    kw.setdefault("validation_split_percentage", 0)
    return MLMConfig(train_file=str(path), **kw)


DOCS = [f"Document number {i}: {s}" for i, s in enumerate(SENTENCES * 3)]


def test_load_txt_drops_blank_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS[:5]) + "\n\n   \n" + "\n".join(DOCS[5:]) + "\n")
    raw = load_text_datasets(_cfg(path))
    assert list(raw) == ["train"]
    assert raw["train"].column_names == ["text"]
    assert raw["train"]["text"] == DOCS


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


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".jsonl"])
def test_streaming_load_gives_only_non_blank_text(tmp_path, suffix):
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
    assert list(raw["train"]) == [{"text": d} for d in docs]
    if suffix == ".csv":
        with pytest.raises(DataError, match="id, body"):
            load_text_datasets(_cfg(path, streaming=True, max_steps=5, text_column_name="content"))


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


def test_all_blank_file_names_the_split(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n\n\t\n  \n")
    with pytest.raises(DataError, match=r"\btrain\b"):
        load_text_datasets(_cfg(blank))
    good = tmp_path / "good.txt"
    good.write_text("\n".join(DOCS) + "\n")
    with pytest.raises(DataError, match=r"\bvalidation\b"):
        load_text_datasets(_cfg(good, validation_file=str(blank)))


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
