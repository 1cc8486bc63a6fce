"""Text data preparation for the text objectives, callable on its own: corpus splits + tokenizer ->
model-ready examples (packed blocks or one document per example; map-style or streamed)."""

from __future__ import annotations

import itertools
import logging
from typing import Optional

import datasets

from hfssl.data.text.pack import PackedStream, document_stats, pack_blocks, tokenize
from hfssl.distributed import cache_builder_first
from hfssl.errors import ConfigError

logger = logging.getLogger(__name__)

STREAMED_VALIDATION_ROWS = 2000  # a streamed validation split is cut to its first rows


def prepare_text_splits(cfg, tokenizer, raw, max_positions: Optional[int] = None, accelerator=None):
    """(train, validation or None) examples with `input_ids` (and `word_ids` for word-level masking).

    raw: the splits of `hfssl.data.text.corpus.load_text_datasets`. max_positions: the model's usable
    positions; a longer max_seq_length is a ConfigError. Streaming: the train split is split over the
    processes (`split_dataset_by_node`) and packed on the fly; validation keeps its first rows.
    Map-style: tokenized first by one process per datasets cache (`cache_builder_first`), the others read it.
    """
    with_words = cfg.mask_strategy != "token"
    if max_positions is not None and cfg.max_seq_length > max_positions:
        raise ConfigError(f"max_seq_length {cfg.max_seq_length} exceeds the model's {max_positions} positions.")
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    max_length = cfg.max_seq_length if cfg.line_by_line else None
    splits = {}
    for split, ds in raw.items():
        if cfg.streaming:
            if accelerator is not None and accelerator.num_processes > 1 and split == "train":
                from datasets.distributed import split_dataset_by_node

                ds = split_dataset_by_node(ds, accelerator.process_index, accelerator.num_processes)
            toks = tokenize(ds, tokenizer, with_words, max_length=max_length)
            splits[split] = toks if cfg.line_by_line else PackedStream(toks, cfg.max_seq_length, cls_id, sep_id, with_words)
            continue
        # Tokenized once per datasets cache: once in all when every node sees it, else once per node.
        with cache_builder_first(accelerator, datasets.config.HF_DATASETS_CACHE):
            toks = tokenize(ds, tokenizer, with_words, cfg.preprocessing_num_workers, max_length=max_length)
        if not cfg.line_by_line:
            toks = pack_blocks(toks, cfg.max_seq_length, cls_id, sep_id, with_words)
        if len(toks) == 0:
            raise ConfigError(f"The {split} split is empty after tokenization.")
        splits[split] = toks.with_format("numpy")
    if cfg.streaming and "validation" in splits:
        rows = list(itertools.islice(iter(splits["validation"]), STREAMED_VALIDATION_ROWS))  # reads only what it keeps
        splits["validation"] = datasets.Dataset.from_list(rows).with_format("numpy")
    if not cfg.streaming and (accelerator is None or accelerator.is_main_process):
        stats = document_stats(splits["train"])
        logger.info("Training data: %d blocks, %d tokens", stats["rows"], stats["tokens"])
    return splits["train"], splits.get("validation")
