"""Text data preparation for the text objectives, callable on its own: corpus splits + tokenizer ->
model-ready examples (packed blocks or one document per example; map-style or streamed).

Map-style: tokenized, then packed, through `datasets.map` into memory-mapped Arrow (`pack`), each
step cached and reused by later runs (`cache`); one summary line per split goes to the log and the
model card. Streamed: `stream.TextStream`, tokenized and packed as training reads it, resumable.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import datasets

from hfssl.data.text import cache
from hfssl.data.text.pack import pack_blocks, tokenize
from hfssl.data.text.progress import MapProgress
from hfssl.data.text.stream import TextStream
from hfssl.distributed import shared_by_all
from hfssl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

STREAMED_VALIDATION_ROWS = 2000  # a streamed validation split is cut to its first rows
LARGE_CORPUS = 1_000_000  # documents: above this, preparing in one process deserves a hint


@dataclass
class TextSplits:
    """What `prepare_text_splits` returns: examples with `input_ids` (and `word_ids`), and one line
    describing the training data (documents, tokens, blocks, padding, time) for logs and model cards."""

    train: Any  # datasets.Dataset (numpy format), or a TextStream
    validation: Optional[datasets.Dataset]
    summary: str


def prepare_text_splits(cfg, tokenizer, raw, max_positions: Optional[int] = None, accelerator=None) -> TextSplits:
    """Examples for training and validation from the splits of `hfssl.data.text.corpus.load_text_datasets`.

    max_positions: the model's usable positions; a longer max_seq_length is a ConfigError. Streaming:
    each process reads its own part of the train stream (`split_dataset_by_node`); validation keeps the
    first rows of its stream, reading no document beyond them. Map-style: one process prepares (or reuses)
    the cache, once in all on a shared filesystem, else once per machine; the others wait for it and read it.
    Raises DataError when a split has no document with text.
    """
    if max_positions is not None and cfg.max_seq_length > max_positions:
        raise ConfigError(f"max_seq_length {cfg.max_seq_length} exceeds the model's {max_positions} positions.")
    if cfg.streaming:
        return _streamed(cfg, tokenizer, raw, accelerator)
    # One process builds each cache: the main process when every node sees the datasets cache (a shared
    # filesystem), else each node's first process; the others wait for the files and read them.
    if accelerator is None:
        builds_here = True
    elif shared_by_all(accelerator, datasets.config.HF_DATASETS_CACHE):
        builds_here = accelerator.is_main_process
    else:
        builds_here = accelerator.is_local_main_process
    out, lines = {}, []
    for split, docs in raw.items():
        out[split], line, folder = _prepared(cfg, tokenizer, split, docs, builds_here)
        lines.append(line)
        logger.info("%s%s", line, f"; cache {folder}" if folder else "")
    return TextSplits(out["train"], out.get("validation"), lines[0])


def _prepared(cfg, tokenizer, split: str, docs: datasets.Dataset, builds_here: bool) -> tuple[datasets.Dataset, str, Optional[Path]]:
    with_words = cfg.mask_strategy != "token"
    max_length = cfg.max_seq_length if cfg.line_by_line else None
    key = _key(cfg, split, docs)
    if key is not None:
        key.update(tokenizer=cache.tokenizer_hash(tokenizer), word_ids=with_words, max_length=max_length)

    def build_tokenized(cache_file):
        if len(docs) > LARGE_CORPUS and not cfg.preprocessing_num_workers:
            logger.warning("Tokenizing %d documents in one process: set --preprocessing_num_workers to the number of CPU "
                           "cores to tokenize and pack in parallel.", len(docs))
        started = time.perf_counter()
        with MapProgress(f"Tokenizing {split}", len(docs), enabled=builds_here) as progress:
            toks = tokenize(docs, tokenizer, with_words, max_length, cfg.preprocessing_num_workers, cache_file, progress)
        return toks, {"documents": len(docs), "kept": len(toks), "tokens": _tokens(toks), "seconds": time.perf_counter() - started}

    step = cache.cached_step("tokenized", key, build_tokenized, builds_here)
    tokenized, stats = step.dataset, dict(step.stats)
    if stats["kept"] == 0:
        raise DataError(f"The {split} split of {_source(cfg, split)} has no text: all {stats['documents']} documents are blank or "
                        f"tokenize to nothing (no non-blank text in column '{cfg.text_column_name or 'text'}'). Check the "
                        f"files, text_column_name and the tokenizer.")
    steps = [("tokenized", step)]
    if cfg.line_by_line:
        examples = tokenized
        stats.update(rows=len(examples), positions=len(examples) * cfg.max_seq_length)
    else:
        cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id

        def build_blocks(cache_file):
            started = time.perf_counter()
            with MapProgress(f"Packing {split}", len(tokenized), enabled=builds_here) as progress:
                blocks = pack_blocks(tokenized, cfg.max_seq_length, cls_id, sep_id, with_words, cfg.preprocessing_num_workers,
                                     cache_file, progress)
            return blocks, {"rows": len(blocks), "tokens": _tokens(blocks), "seconds": time.perf_counter() - started}

        packed = cache.cached_step("blocks", None if key is None else {**key, "block_size": cfg.max_seq_length}, build_blocks, builds_here)
        steps.append(("packed", packed))
        examples = packed.dataset
        stats.update(rows=packed.stats["rows"], positions=packed.stats["rows"] * cfg.max_seq_length,
                     block_tokens=packed.stats["tokens"], pack_seconds=packed.stats["seconds"])
    return examples.with_format("numpy"), _summary(split, cfg, stats, steps), steps[-1][1].folder


def _key(cfg, split: str, docs: datasets.Dataset) -> Optional[dict]:
    """What the split's documents depend on, or None when they are in memory (nothing to cache)."""
    if cfg.train_file:
        from hfssl.data.files import TEXT_FILE_EXTENSIONS, resolve_data_files

        paths = [f for k in ("train_file", "validation_file") for f in resolve_data_files(k, getattr(cfg, k), TEXT_FILE_EXTENSIONS)]
    elif docs.cache_files:
        paths = [f["filename"] for f in docs.cache_files]
    else:
        return None
    carved = cfg.validation_file is None and cfg.validation_split_percentage > 0
    return {"files": cache.files_signature(paths), "dataset": [cfg.dataset_name, cfg.dataset_config_name], "split": split,
            "documents": len(docs), "text_column": cfg.text_column_name, "max_train_samples": cfg.max_train_samples,
            "held_out": [cfg.validation_split_percentage, cfg.seed] if carved else None}


def _tokens(ds: datasets.Dataset) -> int:
    import pyarrow.compute as pc

    return sum(int(pc.sum(pc.list_value_length(chunk)).as_py() or 0) for chunk in ds.data.column("input_ids").chunks)


def _summary(split: str, cfg, stats: dict, steps: list) -> str:
    shape = "examples (line by line, up to" if cfg.line_by_line else "blocks of"
    tokens = stats.get("block_tokens", stats["tokens"])
    padding = 1 - tokens / max(stats["positions"], 1)
    how = ", ".join(f"{name} {'reused from cache' if s.reused else 'built'} ({s.stats['seconds']:.1f} s"
                    f"{' when built' if s.reused else ''})" for name, s in steps)
    return (f"{split}: {stats['kept']:,} documents, {tokens:,} tokens, {stats['rows']:,} {shape} {cfg.max_seq_length}"
            f"{')' if cfg.line_by_line else ''}, padding {padding:.2%}; {how}")


def _source(cfg, split: str = "train") -> str:
    if split == "validation" and cfg.validation_file:  # its own file, not the train file's name
        return cfg.validation_file
    return cfg.dataset_name or cfg.train_file or "the built-in corpus"


# ----------------------------------------------------------------------------------- streamed

def _streamed(cfg, tokenizer, raw, accelerator) -> TextSplits:
    with_words = cfg.mask_strategy != "token"
    train = raw["train"]
    world = accelerator.num_processes if accelerator is not None else 1
    if world > 1:
        from datasets.distributed import split_dataset_by_node

        if train.num_shards % world:
            logger.warning("The train stream has %d shard(s) for %d processes: every process reads all of them and keeps "
                           "every %d-th document. With a multiple of %d shards each process reads only its own.",
                           train.num_shards, world, world, world)
        train = split_dataset_by_node(train, accelerator.process_index, world)
    stream = TextStream(train, tokenizer, cfg.max_seq_length, cfg.line_by_line, with_words,
                        name=f"The train stream of {_source(cfg)}" + (f" (process {accelerator.process_index})" if world > 1 else ""))
    validation = None
    line = f"train: streamed from {train.num_shards} shard(s){' per process' if world > 1 else ''}, tokenized and packed as read"
    if "validation" in raw:
        started = time.perf_counter()
        val_stream = TextStream(raw["validation"], tokenizer, cfg.max_seq_length, cfg.line_by_line, with_words, read_ahead=1,
                                name=f"The validation stream of {_source(cfg, 'validation')}")
        rows = [{k: v.tolist() for k, v in ex.items()} for ex in itertools.islice(iter(val_stream), STREAMED_VALIDATION_ROWS)]
        validation = datasets.Dataset.from_list(rows).with_format("numpy")
        logger.info("validation: the first %d examples of its stream (%.1f s)", len(rows), time.perf_counter() - started)
    logger.info("%s", line)
    return TextSplits(stream, validation, line)
