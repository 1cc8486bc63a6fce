"""A streamed corpus -> model-ready examples, tokenized on the fly and resumable from where it stopped.

`TextStream` reads documents from a `datasets` stream of {'text'}, drops blank ones and those that
tokenize to nothing, and yields packed blocks (the same blocks as `pack.pack_blocks` on the same
documents) or one truncated example per document (line by line).

Its `state_dict()` after any example says where the next one comes from, as plain JSON: the
document stream's own state (`datasets.IterableDataset.state_dict()`: shard and position in it) at
the start of the document being cut into blocks, the tokens carried over from earlier documents
(fewer than one block) and how many tokens of the current document were already emitted. A resumed
stream therefore opens no earlier shard and tokenizes only the current document again.
"""

from __future__ import annotations

import collections
import logging
from typing import Iterator, Optional

import datasets
import numpy as np
import torch

from hfssl.errors import DataError
from hfssl.data.text.pack import content_tokens, cut_blocks, encode, id_dtype, number_words, word_dtype

logger = logging.getLogger(__name__)


class TextStream(torch.utils.data.IterableDataset):
    """Examples {'input_ids'[, 'word_ids']} (numpy arrays) from a stream of documents; no length.

    read_ahead: documents tokenized together (one call to the tokenizer, which parallelizes a batch).
    1 reads no document beyond the examples taken (for a validation set cut to its first rows)."""

    def __init__(self, documents: datasets.IterableDataset, tokenizer, block_size: int, line_by_line: bool,
                 with_word_ids: bool, read_ahead: int = 64, name: str = "The stream"):
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.documents, self.tokenizer = documents, tokenizer
        self.block_size, self.line_by_line, self.with_word_ids = block_size, line_by_line, with_word_ids
        self.cls_id, self.sep_id, self.read_ahead, self.name = cls_id, sep_id, read_ahead, name
        self.ids, self.words = id_dtype(tokenizer), word_dtype(block_size)
        self._start: Optional[dict] = None
        self._state: dict = _position(None)

    def set_epoch(self, epoch: int) -> None:
        self.documents.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Where the example after the last one yielded comes from (JSON-serializable)."""
        return self._state

    def load_state_dict(self, state: Optional[dict]) -> None:
        """Every later iteration starts at `state` (None: at the beginning of the stream)."""
        self._start = state

    def __iter__(self) -> Iterator[dict]:
        """Examples from the start position on. A pass from the beginning that finds no text raises
        DataError (checked here, as the stream is read, so that starting or resuming reads nothing extra)."""
        empty = True
        for example in self._examples():
            empty = False
            yield example
        if empty and self._start is None:
            raise DataError(f"{self.name} has no text: every document is blank or tokenizes to nothing. Check the files, "
                            f"text_column_name and the tokenizer.")

    def _examples(self) -> Iterator[dict]:
        start = self._start or _position(None)
        self._state = start
        if start["documents"] is not None:
            logger.info("Resuming the stream %s", _where(start["documents"]))
        self.documents.load_state_dict(start["documents"])
        tokenized = self._tokenized(start["documents"])
        if self.line_by_line:
            for ids, words, _, after in tokenized:
                self._state = _position(after)
                yield self._example(np.asarray(ids, dtype=self.ids), None if words is None else np.asarray(words, dtype=np.int32))
            return
        yield from self._packed(tokenized, start)

    def _packed(self, tokenized, start: dict) -> Iterator[dict]:
        body = self.block_size - 2
        carry_ids = np.asarray(start["carry_ids"], dtype=self.ids)
        carry_words = np.asarray(start["carry_words"], dtype=np.int32)
        skip = start["skip"]
        after = start["documents"]
        for ids, words, before, after in tokenized:
            buf_ids = np.concatenate([carry_ids, np.asarray(ids, dtype=self.ids), [self.sep_id]]).astype(self.ids)
            if self.with_word_ids:
                buf_words = np.concatenate([carry_words, np.asarray(words, dtype=np.int32), [-1]]).astype(np.int32)
            pos = skip
            carried = {"carry_ids": carry_ids.tolist(), "carry_words": carry_words.tolist()}
            while len(buf_ids) - pos >= body:
                block = slice(pos, pos + body)
                pos += body
                self._state = {"documents": before, **carried, "skip": pos}
                yield self._block(buf_ids[block], buf_words[block] if self.with_word_ids else None)
            carry_ids = buf_ids[pos:]
            carry_words = buf_words[pos:] if self.with_word_ids else carry_words
            skip = 0
        if len(carry_ids):  # the last partial block
            self._state = _position(after)
            yield self._block(carry_ids, carry_words if self.with_word_ids else None)

    def _tokenized(self, start_documents: Optional[dict]) -> Iterator[tuple[list, Optional[list], Optional[dict], dict]]:
        """(ids, words, stream state before the document, state after it) per document with text."""
        floor = content_tokens(self.tokenizer, self.block_size if self.line_by_line else None)
        max_length = self.block_size if self.line_by_line else None
        pending: collections.deque = collections.deque()
        before = start_documents
        for example in self.documents:
            if not isinstance(example["text"], (str, type(None))):
                raise DataError(f"{self.name}: a document's text is {type(example['text']).__name__} {str(example['text'])[:40]!r}, "
                                f"not a string. Set text_column_name to the column that holds the text.")
            pending.append((example["text"], before, self.documents.state_dict()))
            before = pending[-1][2]
            if len(pending) >= self.read_ahead:
                yield from self._encode(pending, floor, max_length)
        yield from self._encode(pending, floor, max_length)

    def _encode(self, pending: collections.deque, floor: int, max_length: Optional[int]):
        docs = [(text, before, after) for text, before, after in pending if text and not text.isspace()]  # None: blank
        pending.clear()
        if not docs:
            return
        ids, words = encode(self.tokenizer, [d[0] for d in docs], self.with_word_ids, max_length)
        for i, (_, before, after) in enumerate(docs):
            if len(ids[i]) > floor:
                yield ids[i], words[i] if words is not None else None, before, after

    def _block(self, body_ids: np.ndarray, body_words: Optional[np.ndarray]) -> dict:
        ids = cut_blocks(body_ids, len(body_ids), self.cls_id, self.sep_id).flatten().to_numpy(zero_copy_only=False)
        if body_words is None:
            return {"input_ids": ids}
        words = number_words(cut_blocks(body_words, len(body_words), -1, -1)).flatten().to_numpy(zero_copy_only=False)
        return {"input_ids": ids, "word_ids": words.astype(self.words)}

    def _example(self, ids: np.ndarray, words: Optional[np.ndarray]) -> dict:
        return {"input_ids": ids} if words is None else {"input_ids": ids, "word_ids": words}


def _position(documents: Optional[dict]) -> dict:
    """A stream position at a document boundary (nothing carried over)."""
    return {"documents": documents, "carry_ids": [], "carry_words": [], "skip": 0}


def _where(state: dict) -> str:
    """'at shard S, document D of it' from a `datasets` stream state (its innermost shard position)."""
    while isinstance(state, dict) and "shard_idx" not in state and isinstance(state.get("examples_iterable"), dict):
        state = state["examples_iterable"]
    if isinstance(state, dict) and "shard_idx" in state:
        return f"at shard {state['shard_idx']} of this process's shards, document {state['shard_example_idx']} of it"
    return "at its saved position"
