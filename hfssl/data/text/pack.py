"""Tokenize documents and pack them into fixed-length blocks, in memory or as a stream.

Packing concatenates whole documents (separated by the tokenizer's separator token) into blocks of
exactly `max_seq_length` tokens, [CLS] ... [SEP]; the remainder is kept as one shorter final block
instead of being dropped at every map batch.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import datasets
import numpy as np
import pyarrow as pa
import torch

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


class PackedStream(torch.utils.data.IterableDataset):
    """Streaming packing: blocks built on the fly from a tokenized stream (no length)."""

    def __init__(self, tokenized, block_size, cls_id, sep_id, with_words):
        self.tokenized, self.args = tokenized, (block_size, cls_id, sep_id, with_words)

    def __iter__(self):
        return pack_stream(iter(self.tokenized), *self.args)
