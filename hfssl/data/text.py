"""Text data: load a corpus with `datasets`, train a tokenizer on it, tokenize and pack into blocks.

Knows nothing about training. Packing concatenates whole documents (separated by the tokenizer's
separator token) into blocks of exactly `max_seq_length` tokens, [CLS] ... [SEP]; the remainder is
kept as one shorter final block instead of being dropped at every map batch.
"""

from __future__ import annotations

import ast
import logging
import sys
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator, Optional

import datasets
import numpy as np

from hfssl.config import TEXT_FILE_EXTENSIONS, data_format, resolve_data_files
from hfssl.errors import DataError
import pyarrow as pa

logger = logging.getLogger(__name__)

BUILTIN_CORPUS = "python-docstrings"


# ----------------------------------------------------------------------------------- loading

def builtin_corpus() -> list[str]:
    """Real English text available offline on every machine: the docstrings of the running
    Python's standard library (modules, classes, functions), one paragraph per document.

    Deterministic for a given Python version; about 1.3 MB of text (10k paragraphs) on CPython 3.11.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).parts
        if rel[0] in ("site-packages", "test", "idlelib", "lib2to3", "tkinter", "turtledemo") or "tests" in rel:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    for para in doc.split("\n\n"):
                        text = " ".join(para.split())
                        # Keep prose: skip doctest lines, tables and one-word fragments.
                        if len(text) >= 40 and not text.startswith((">>>", "...", "--", "==")):
                            docs.append(text)
    return docs


def load_text_datasets(cfg) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Train/validation splits from cfg.train_file / cfg.dataset_name / the built-in corpus.

    Returns splits with a single 'text' column. Raises DataError for a missing column or an empty
    corpus (after dropping blank documents).
    """
    if cfg.dataset_name is None and cfg.train_file is None:
        docs = builtin_corpus()
        logger.warning(
            "No train_file or dataset_name given: using the built-in corpus of Python %s standard-library "
            "docstrings (%d documents).", sys.version.split()[0], len(docs))
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})})
        source = f"built-in {BUILTIN_CORPUS}"
    elif cfg.dataset_name is not None:
        raw = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config_name, streaming=cfg.streaming)
        source = cfg.dataset_name
    else:
        files = {"train": resolve_data_files("train_file", cfg.train_file, TEXT_FILE_EXTENSIONS)}
        if cfg.validation_file:
            files["validation"] = resolve_data_files("validation_file", cfg.validation_file, TEXT_FILE_EXTENSIONS)
        ext = data_format(files["train"][0]).lstrip(".")  # datasets decompresses .gz/.bz2/.xz/.zst itself
        builder = {"txt": "text", "jsonl": "json"}.get(ext, ext)
        try:
            raw = datasets.load_dataset(builder, data_files=files, streaming=cfg.streaming)
        except Exception as e:  # datasets' parse errors do not name the file
            raise DataError(f"Could not read {files}: {type(e).__name__}: {e}") from e
        source = cfg.train_file

    if "train" not in raw:
        raise DataError(f"{source} has no 'train' split (found: {', '.join(raw)}).")
    column = pick_text_column(raw["train"], cfg.text_column_name, source)
    raw = datasets.DatasetDict(raw) if not cfg.streaming else datasets.IterableDatasetDict(raw)
    raw = type(raw)({k: _only_text(v, column) for k, v in raw.items() if k in ("train", "validation")})
    if cfg.max_train_samples is not None:
        raw["train"] = raw["train"].take(cfg.max_train_samples) if cfg.streaming else raw["train"].select(range(min(cfg.max_train_samples, len(raw["train"]))))
    if not cfg.streaming:
        for split in raw:
            raw[split] = raw[split].filter(_non_blank, batched=True, num_proc=cfg.preprocessing_num_workers, desc=f"Dropping blank {split} documents")
            if len(raw[split]) == 0:
                raise DataError(f"The {split} split of {source} has no non-blank text in column '{column}'.")
        if "validation" not in raw and cfg.validation_split_percentage > 0:
            n_val = max(1, int(len(raw["train"]) * cfg.validation_split_percentage / 100))
            if len(raw["train"]) - n_val < 1:
                raise DataError(f"{source} has {len(raw['train'])} documents: too few to hold out {cfg.validation_split_percentage}% for validation.")
            split = raw["train"].train_test_split(test_size=n_val, seed=cfg.seed, shuffle=True)
            raw = datasets.DatasetDict({"train": split["train"], "validation": split["test"]})
    else:
        raw = datasets.IterableDatasetDict({k: v.filter(_non_blank, batched=True) for k, v in raw.items()})
    return raw


def pick_text_column(ds, requested: Optional[str], source: str) -> str:
    names, strings = _columns(ds)
    if requested is not None:
        if requested not in names:
            raise DataError(f"text_column_name '{requested}' is not a column of {source}; available: {', '.join(names)}.")
        return requested
    if "text" in names:
        return "text"
    if len(strings) == 1:
        return strings[0]
    raise DataError(f"{source} has no 'text' column; set text_column_name to one of: {', '.join(names)}.")


def _columns(ds) -> tuple[list[str], list[str]]:
    """All column names and the string ones. A streamed CSV/text file has no features until it is
    read, so those come from its first example."""
    if ds.features is not None:
        strings = [n for n, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        return list(ds.features), strings
    first = next(iter(ds), None) or {}
    return list(first), [n for n, v in first.items() if isinstance(v, str)]


def _only_text(ds, column: str):
    if column != "text":
        ds = ds.rename_column(column, "text")
    if ds.column_names is None:  # stream with unknown features: keep just the text when read
        return ds.select_columns(["text"])
    extra = [c for c in ds.column_names if c != "text"]
    return ds.remove_columns(extra) if extra else ds


def _non_blank(batch: dict) -> list[bool]:
    return [t is not None and bool(t.strip()) for t in batch["text"]]


# ----------------------------------------------------------------------------------- tokenizer

def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, lowercase: bool = True):
    """Train a fast tokenizer on the corpus: 'wordpiece' (BERT-style) or 'bpe' (byte-level, RoBERTa-style).

    Returns a `PreTrainedTokenizerFast` with the usual special tokens, ready for `save_pretrained`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2)
        tok.train_from_iterator(texts, trainer)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        tok.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    if kind == "bpe":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
        tok.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=512)
    raise ValueError(f"Unknown tokenizer kind '{kind}': use 'wordpiece' or 'bpe'.")


# ----------------------------------------------------------------------------------- tokenize + pack

def tokenize(ds, tokenizer, with_word_ids: bool, num_proc: Optional[int] = None, max_length: Optional[int] = None):
    """Add `input_ids` (no special tokens) and, if asked, `word_ids` (per-document word index).

    With `max_length` (line-by-line mode) each document is truncated and wrapped in special tokens.
    """
    line_by_line = max_length is not None

    def encode(batch):
        enc = tokenizer(
            batch["text"], add_special_tokens=line_by_line, truncation=line_by_line, max_length=max_length,
            return_attention_mask=False, return_token_type_ids=False)
        out = {"input_ids": enc["input_ids"]}
        if with_word_ids:
            out["word_ids"] = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(batch["text"]))]
        return out

    kwargs = {} if isinstance(ds, datasets.IterableDataset) else {"num_proc": num_proc, "desc": "Tokenizing"}
    return ds.map(encode, batched=True, remove_columns=["text"], **kwargs)


def pack_blocks(tokenized: datasets.Dataset, block_size: int, cls_id: int, sep_id: int, with_word_ids: bool) -> datasets.Dataset:
    """Concatenate every document (each followed by [SEP]) and cut the stream into blocks of
    `block_size` tokens: [CLS] + block_size-2 tokens + [SEP]. Vectorized over the whole Arrow
    column, so nothing is dropped at map-batch boundaries; the last partial block is kept.

    Word ids are offset per document so that they stay unique inside a block; separators get -1.
    """
    # `.data` is the underlying Arrow table, which ignores a select/shuffle/filter indices mapping;
    # slicing through the Dataset gives the rows it shows (zero-copy when there is no mapping).
    table = tokenized.with_format("arrow")[:]
    ids = table.column("input_ids").combine_chunks()  # ListArray, one row per document
    offsets = ids.offsets.to_numpy()
    lengths = np.diff(offsets)
    flat = ids.flatten().to_numpy(zero_copy_only=False).astype(np.int32)
    n_docs = len(lengths)
    # Insert a separator after each document: document i's tokens shift right by i.
    total = len(flat) + n_docs
    stream = np.empty(total, dtype=np.int32)
    doc_of_token = np.repeat(np.arange(n_docs), lengths)
    stream[np.arange(len(flat)) + doc_of_token] = flat
    sep_pos = offsets[1:] + np.arange(n_docs)
    stream[sep_pos] = sep_id
    columns = {"input_ids": _blocks(stream, block_size, cls_id, sep_id)}
    if with_word_ids:
        wids = table.column("word_ids").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        words_per_doc = np.zeros(n_docs, dtype=np.int64)
        has = lengths > 0
        if has.any():
            last = offsets[1:][has] - 1
            words_per_doc[has] = wids[last] + 1
        shift = np.concatenate([[0], np.cumsum(words_per_doc)[:-1]])
        wstream = np.full(total, -1, dtype=np.int64)
        wstream[np.arange(len(flat)) + doc_of_token] = np.where(wids >= 0, wids + shift[doc_of_token], -1)
        columns["word_ids"] = _blocks(wstream, block_size, -1, -1)
    return datasets.Dataset(pa.table(columns))


def _blocks(stream: np.ndarray, block_size: int, cls_value: int, sep_value: int) -> pa.ListArray:
    """1-D stream -> Arrow list column of [cls] + chunk + [sep] rows (last row may be shorter)."""
    body = block_size - 2
    n_full = len(stream) // body
    rest = len(stream) - n_full * body
    rows = stream[: n_full * body].reshape(n_full, body)
    full = np.concatenate([np.full((n_full, 1), cls_value, stream.dtype), rows, np.full((n_full, 1), sep_value, stream.dtype)], axis=1)
    values = full.reshape(-1)
    row_offsets = list(range(0, len(values) + 1, block_size))
    if rest:
        tail = np.concatenate([[cls_value], stream[n_full * body:], [sep_value]]).astype(stream.dtype)
        values = np.concatenate([values, tail])
        row_offsets.append(len(values))
    return pa.ListArray.from_arrays(pa.array(row_offsets, pa.int32()), pa.array(values))


def pack_stream(examples: Iterable[dict], block_size: int, cls_id: int, sep_id: int, with_word_ids: bool) -> Iterator[dict]:
    """Streaming counterpart of `pack_blocks`: same blocks, built incrementally (a carry-over buffer
    holds the tail of one document batch until the next arrives). The last partial block is kept."""
    body = block_size - 2
    buf_ids: list[int] = []
    buf_words: list[int] = []
    word_shift = 0
    for ex in examples:
        buf_ids.extend(ex["input_ids"])
        buf_ids.append(sep_id)
        if with_word_ids:
            w = ex["word_ids"]
            buf_words.extend(-1 if x < 0 else x + word_shift for x in w)
            buf_words.append(-1)
            word_shift += (max(w) + 1) if len(w) else 0
        while len(buf_ids) >= body:
            yield _stream_block(buf_ids[:body], buf_words[:body], cls_id, sep_id, with_word_ids)
            del buf_ids[:body]
            del buf_words[:body]
    if buf_ids:
        yield _stream_block(buf_ids, buf_words, cls_id, sep_id, with_word_ids)


def _stream_block(ids, words, cls_id, sep_id, with_word_ids):
    out = {"input_ids": [cls_id, *ids, sep_id]}
    if with_word_ids:
        out["word_ids"] = [-1, *words, -1]
    return out


def document_stats(ds: datasets.Dataset) -> dict:
    """Tokens and rows in a tokenized/packed dataset (for logs and the model card)."""
    lengths = pc_list_lengths(ds.data.column("input_ids"))
    return {"rows": len(ds), "tokens": int(lengths.sum())}


def pc_list_lengths(column) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.list_value_length(column).to_numpy(zero_copy_only=False)
