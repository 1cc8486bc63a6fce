"""Tokenize documents and pack them into fixed-length blocks, batch by batch through `datasets.map`
(memory-mapped Arrow in and out, `num_proc` workers), so memory stays flat however large the corpus.

Block semantics: every document is followed by a separator; the resulting token stream is cut into
bodies of `block_size - 2` tokens, each wrapped as [CLS] body [SEP]; the remainder is one shorter
final block. Nothing is dropped at map-batch or worker boundaries, and the blocks do not depend on
`num_proc` or the batch size: they are the blocks of the whole stream, computed in two passes:

1. read only the documents' lengths (Arrow list offsets) and record where every `batch_size`-th
   document starts in the stream (int64; a corpus may hold far more than 2^31 tokens);
2. each map batch of documents [a, b) emits the blocks that START inside its part of the stream,
   reading the few following documents a block may run into (at most one block's worth).

Word ids (for whole-word and span masking) are numbered per block: 0, 1, ... in order of the words'
first tokens, -1 at [CLS], [SEP] and separators. The masking code only compares neighbouring ids, so
this gives the same masks as any other numbering that keeps words apart, in 2 bytes per token.
Lists use 64-bit offsets (`large_list`) throughout.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import sys
from typing import Iterable, Optional

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hfssl.data.text.progress import report

BATCH_SIZE = 1000  # documents per map batch


# ----------------------------------------------------------------------------------- types and encoding

def id_dtype(tokenizer) -> np.dtype:
    """uint16 when every token id fits (BERT, RoBERTa, ModernBERT vocabularies), else int32."""
    largest = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=0) + 1)
    return np.dtype(np.uint16) if largest <= 1 << 16 else np.dtype(np.int32)


def word_dtype(block_size: int) -> np.dtype:
    return np.dtype(np.int16) if block_size < 1 << 15 else np.dtype(np.int32)


def _features(ids: np.dtype, words: Optional[np.dtype]) -> datasets.Features:
    columns = {"input_ids": datasets.LargeList(datasets.Value(ids.name))}
    if words is not None:
        columns["word_ids"] = datasets.LargeList(datasets.Value(words.name))
    return datasets.Features(columns)


def encode(tokenizer, texts: list[str], with_word_ids: bool, max_length: Optional[int] = None):
    """(ids per document, word ids per document or None). Without `max_length`: no special tokens (for
    packing). With it (line by line): truncated and wrapped in the tokenizer's special tokens.
    Word ids are the tokenizer's word index per token, -1 where it has none."""
    if not texts:  # transformers fails on an empty batch
        return [], [] if with_word_ids else None
    line_by_line = max_length is not None
    enc = tokenizer(texts, add_special_tokens=line_by_line, truncation=line_by_line, max_length=max_length,
                    return_attention_mask=False, return_token_type_ids=False)
    words = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))] if with_word_ids else None
    return enc["input_ids"], words


def content_tokens(tokenizer, max_length: Optional[int]) -> int:
    """Tokens a document must exceed to hold any text: the special tokens added line by line, else 0."""
    return tokenizer.num_special_tokens_to_add(pair=False) if max_length is not None else 0


def _large_list(rows: list[list[int]], dtype: np.dtype) -> pa.LargeListArray:
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(offsets[-1]))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


# ----------------------------------------------------------------------------------- tokenization

def tokenize(docs: datasets.Dataset, tokenizer, with_word_ids: bool, max_length: Optional[int] = None,
             num_proc: Optional[int] = None, cache_file: Optional[str] = None, progress: Optional[str] = None) -> datasets.Dataset:
    """One row per document that has text: `input_ids` (and `word_ids`), as large lists.

    Blank documents and documents that tokenize to nothing are dropped. `cache_file`: where the map
    writes its Arrow file(s) (None: in memory). `progress`: a `progress.MapProgress` folder."""
    ids = id_dtype(tokenizer)
    return docs.with_format("arrow").map(
        _tokenize_batch, batched=True, batch_size=BATCH_SIZE, num_proc=num_proc, remove_columns=docs.column_names,
        features=_features(ids, np.dtype(np.int32) if with_word_ids else None), cache_file_name=cache_file,
        new_fingerprint=_fingerprint(cache_file), desc="Tokenizing",
        fn_kwargs={"tokenizer": tokenizer, "with_word_ids": with_word_ids, "max_length": max_length, "ids": ids,
                   "release": bool(docs.cache_files), "progress": progress},
    ).with_format(None)


def _tokenize_batch(batch: pa.Table, tokenizer, with_word_ids, max_length, ids, release, progress) -> pa.Table:
    column = batch.column("text")
    texts = [t for t in column.to_pylist() if t and not t.isspace()]
    if release:
        release_pages(column)
    tokens, words = encode(tokenizer, texts, with_word_ids, max_length)
    floor = content_tokens(tokenizer, max_length)
    keep = [i for i, row in enumerate(tokens) if len(row) > floor]
    if len(keep) < len(tokens):
        tokens = [tokens[i] for i in keep]
        words = [words[i] for i in keep] if words is not None else None
    out = {"input_ids": _large_list(tokens, ids)}
    if words is not None:
        out["word_ids"] = _large_list(words, np.dtype(np.int32))
    report(progress, batch.num_rows, sum(map(len, tokens)))
    return pa.table(out)


# ----------------------------------------------------------------------------------- offset arithmetic (int64)

def chunk_starts(lengths: Iterable[np.ndarray], chunk: int) -> tuple[np.ndarray, int]:
    """Where every `chunk`-th document starts in the packed stream (its tokens plus one separator
    per document), and the stream's total length.

    lengths: the documents' token counts, in order, in pieces of any size. Returns (starts, total):
    starts[j] is the stream position of document j*chunk, as int64 (no 2^31 limit)."""
    starts: list[np.ndarray] = []
    total = 0
    seen = 0  # documents before the current piece
    for piece in lengths:
        with_sep = np.cumsum(np.asarray(piece, dtype=np.int64) + 1)  # stream position after each document
        first = -(-seen // chunk) * chunk  # first multiple of chunk inside this piece
        docs = np.arange(first, seen + len(piece), chunk, dtype=np.int64)
        before = np.concatenate([[0], with_sep[:-1]]) if len(piece) else with_sep
        starts.append(total + before[docs - seen])
        total += int(with_sep[-1]) if len(piece) else 0
        seen += len(piece)
    return np.concatenate(starts) if starts else np.zeros(1, dtype=np.int64), total


def blocks_starting_in(start: int, end: int, total: int, body: int) -> tuple[int, int, int]:
    """The blocks whose first body token lies in stream positions [start, end): (first block k0,
    number of blocks n, stream position where the last of them ends). Python ints: exact at any size."""
    k0 = -(-start // body)
    n = max(-(-end // body) - k0, 0)
    return k0, n, min((k0 + n) * body, total) if n else start


# ----------------------------------------------------------------------------------- packing

def pack_blocks(tokenized: datasets.Dataset, block_size: int, cls_id: int, sep_id: int, with_word_ids: bool,
                num_proc: Optional[int] = None, cache_file: Optional[str] = None, progress: Optional[str] = None,
                batch_size: int = BATCH_SIZE) -> datasets.Dataset:
    """Blocks of `block_size` tokens from tokenized documents (the module docstring gives the semantics).
    Same output for any `num_proc` and `batch_size`. `cache_file`/`progress` as in `tokenize`."""
    body = block_size - 2
    view = tokenized.with_format("arrow")  # slices of it are Arrow tables, zero-copy when memory-mapped
    release = bool(tokenized.cache_files)
    starts, total = chunk_starts(_lengths(view, batch_size, release), batch_size)
    ids = np.dtype(tokenized.features["input_ids"].feature.dtype)
    words = word_dtype(block_size) if with_word_ids else None
    return view.map(
        _pack_batch, batched=True, batch_size=batch_size, with_indices=True, num_proc=num_proc,
        remove_columns=tokenized.column_names, features=_features(ids, words), cache_file_name=cache_file,
        new_fingerprint=_fingerprint(cache_file), desc="Packing",
        fn_kwargs={"source": view, "starts": starts, "chunk": batch_size, "total": total, "body": body,
                   "cls_id": cls_id, "sep_id": sep_id, "ids": ids, "words": words,
                   "release": release, "progress": progress},
    ).with_format(None)


def _lengths(view: datasets.Dataset, batch_size: int, release: bool) -> Iterable[np.ndarray]:
    """The documents' token counts, batch by batch (reads only the list offsets)."""
    for i in range(0, len(view), batch_size):
        column = view[i : i + batch_size].column("input_ids")
        yield pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if release:
            release_pages(column)


def _pack_batch(batch: pa.Table, indices: list[int], source, starts, chunk, total, body, cls_id, sep_id, ids, words,
                release, progress) -> pa.Table:
    a, b = indices[0], indices[-1] + 1
    base = (a // chunk) * chunk
    start = int(starts[a // chunk]) + _stream_length(_rows(source, base, a))  # stream position of document a
    end = start + _stream_length(batch)
    k0, n, stop = blocks_starting_in(start, end, total, body)
    parts, have, nxt, step = [batch], end, b, 16
    while have < stop:  # the last block runs into the next documents: read just enough of them
        more = _rows(source, nxt, nxt + step)
        parts.append(more)
        have += _stream_length(more)
        nxt, step = nxt + step, step * 2
    lo, hi = k0 * body - start, stop - start
    out = {"input_ids": cut_blocks(_joined(parts, "input_ids", sep_id, ids)[lo:hi], body, cls_id, sep_id)}
    if words is not None:
        word_rows = cut_blocks(_joined(parts, "word_ids", -1, np.dtype(np.int32))[lo:hi], body, -1, -1)
        out["word_ids"] = number_words(word_rows).cast(pa.large_list(pa.from_numpy_dtype(words)))
    if release:
        release_pages(batch.column("input_ids"))
        if words is not None:
            release_pages(batch.column("word_ids"))
    report(progress, batch.num_rows, hi - lo + 2 * n)
    return pa.table(out)


def _rows(view: datasets.Dataset, i: int, j: int) -> pa.Table:
    """Rows i..j-1 of an Arrow-formatted dataset (zero-copy when memory-mapped without an indices mapping)."""
    return view[i:j]


def _stream_length(table: pa.Table) -> int:
    """Tokens these documents take in the stream: their tokens plus one separator each."""
    return int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0) + table.num_rows


def _joined(tables: list[pa.Table], column: str, sep: int, dtype: np.dtype) -> np.ndarray:
    """The documents of `tables`, in order, each followed by `sep`, as one 1-D array."""
    pieces = []
    for table in tables:
        lists = table.column(column).combine_chunks()
        offsets = lists.offsets.to_numpy()
        flat = lists.flatten().to_numpy(zero_copy_only=False)
        out = np.full(len(flat) + len(lists), sep, dtype=dtype)
        is_token = np.ones(len(out), dtype=bool)
        is_token[offsets[1:] - offsets[0] + np.arange(len(lists))] = False  # separator after each document
        out[is_token] = flat
        pieces.append(out)
    return np.concatenate(pieces)


def cut_blocks(segment: np.ndarray, body: int, cls_value: int, sep_value: int) -> pa.LargeListArray:
    """1-D stream segment -> rows of [cls] + `body` tokens + [sep] (the last row may be shorter)."""
    n_full = len(segment) // body
    rest = len(segment) - n_full * body
    rows = segment[: n_full * body].reshape(n_full, body)
    values = np.concatenate([np.full((n_full, 1), cls_value, segment.dtype), rows,
                             np.full((n_full, 1), sep_value, segment.dtype)], axis=1).reshape(-1)
    offsets = np.arange(n_full + 1, dtype=np.int64) * (body + 2)
    if rest:
        tail = np.concatenate([[cls_value], segment[n_full * body:], [sep_value]]).astype(segment.dtype)
        values = np.concatenate([values, tail])
        offsets = np.append(offsets, len(values))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


def number_words(rows: pa.LargeListArray) -> pa.LargeListArray:
    """Per-block word numbers: 0, 1, ... at each word's tokens in order of their first token, -1 where
    the input is -1. A word is a run of equal ids >= 0 (rows start and end with -1)."""
    offsets = rows.offsets.to_numpy()
    offsets = offsets - offsets[0]
    w = rows.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    previous = np.empty_like(w)
    previous[:1] = -1
    previous[1:] = w[:-1]
    starts = (w >= 0) & (w != previous)
    count = np.cumsum(starts)
    before_row = np.concatenate([[0], count])[offsets[:-1]]  # words started before each row
    number = count - np.repeat(before_row, np.diff(offsets)) - 1
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.where(w >= 0, number, -1)))


def _fingerprint(cache_file: Optional[str]) -> str:
    """datasets' fingerprint for a map we key ourselves (`hfssl.data.text.cache`): from the cache path,
    or random in memory. Hashing the tokenizer instead would be slow and is not stable across runs."""
    import hashlib

    if cache_file is None:
        return datasets.fingerprint.generate_random_fingerprint()
    return hashlib.sha256(cache_file.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------- memory

_MADV_PAGEOUT = 21  # Linux >= 5.4; older kernels answer EINVAL and nothing happens
_libc = None


def release_pages(column) -> None:
    """Drop this process's resident pages of an Arrow column (text, or lists of numbers) that was
    read from a memory-mapped file and will not be read again here. Without it every page a map
    reads stays in the process's resident set until the map ends, so its peak memory would grow
    with the corpus. Only the bytes of the column's own rows are released (a slice shares buffers
    with its neighbours). Memory that is not file-backed cannot be paged out without swap, so a
    mistaken call costs nothing."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        for address, size in _row_bytes(chunk):
            start = address & ~(mmap.PAGESIZE - 1)
            _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(address + size - start), _MADV_PAGEOUT)


def _row_bytes(array: pa.Array) -> list[tuple[int, int]]:
    """(address, size) of the offsets and the values of an array's rows, for (large) lists of
    fixed-width numbers and (large) strings; nothing for other types."""
    t = array.type
    if len(array) == 0 or not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
        return []
    wide = pa.types.is_large_list(t) or pa.types.is_large_string(t)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if wide else np.int32)[array.offset : array.offset + len(array) + 1]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        values, width = buffers[3], t.value_type.bit_width // 8  # buffers: validity, offsets, child validity, child values
    else:
        values, width = buffers[2], 1
    first, last = int(offsets[0]) * width, int(offsets[-1]) * width
    return [(offsets.ctypes.data, offsets.nbytes), (values.address + first, last - first)] if last > first else [(offsets.ctypes.data, offsets.nbytes)]
