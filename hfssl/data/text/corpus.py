"""Load a text corpus with `datasets` (files, globs of shards, a Hub dataset, or the built-in corpus)
into train/validation splits with one `text` column."""

from __future__ import annotations

import ast
import logging
import sys
import sysconfig
from pathlib import Path
from typing import Optional

import datasets
import numpy as np

from hfssl.data.files import TEXT_FILE_EXTENSIONS, data_format, resolve_data_files
from hfssl.data.text import readers
from hfssl.errors import DataError

logger = logging.getLogger(__name__)

BUILTIN_CORPUS = "python-docstrings"
# Built-in corpora that are files of the source checkout (config `builtin_corpus`), read as `train_file`.
BUILTIN_FILES = {"debian-descriptions": Path(__file__).resolve().parents[3] / "benchmarks" / "payoff" / "data" / "corpus.txt.gz"}


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
    """Train/validation splits from cfg.train_file / cfg.dataset_name / the built-in corpus, with a single
    'text' column. Blank documents are kept here and dropped at tokenization (`hfssl.data.text.prepare`).

    Not streamed: the files become memory-mapped Arrow (datasets' cache); without a validation source,
    `validation_split_percentage` of the documents (a seeded sample) are held out and the rest keep
    their file order, so tokenization reads the corpus sequentially. Streamed local files are read
    by `readers.stream_files` (one resumable shard per file) after every shard's head was checked.
    Raises DataError naming the file and line/row for anything that cannot be read or is not text.
    """
    if cfg.dataset_name is None and cfg.train_file is None:
        docs = builtin_corpus()
        logger.warning(
            "No train_file or dataset_name given: using the built-in corpus of Python %s standard-library "
            "docstrings (%d documents).", sys.version.split()[0], len(docs))
        train = datasets.Dataset.from_dict({"text": docs})
        raw = {"train": train.to_iterable_dataset() if cfg.streaming else train}
        source = f"built-in {BUILTIN_CORPUS}"
    elif cfg.dataset_name is not None:
        raw = _load_named(cfg)
        source = cfg.dataset_name
    elif cfg.streaming:
        raw = _stream_local(cfg)
        source = cfg.train_file
    else:
        raw = _load_local(cfg)
        source = cfg.train_file

    if "train" not in raw:
        raise DataError(f"{source} has no 'train' split (found: {', '.join(raw)}).")
    # Streamed local files are read with their text column already chosen (`_stream_local`).
    column = "text" if cfg.streaming and cfg.train_file else pick_text_column(raw["train"], cfg.text_column_name, source)
    raw = {k: _only_text(v, column, source) for k, v in raw.items() if k in ("train", "validation")}
    for split, ds in raw.items():
        if not _holds_text(ds, "text"):
            raise DataError(f"Column '{column}' of the {split} split of {source} holds {ds.features['text']}, not text: set "
                            f"text_column_name to the column that holds the text.")
    if cfg.max_train_samples is not None:
        raw["train"] = raw["train"].take(cfg.max_train_samples) if cfg.streaming else raw["train"].select(range(min(cfg.max_train_samples, len(raw["train"]))))
    if cfg.streaming:
        if "validation" not in raw and cfg.validation_split_percentage > 0:
            logger.warning("Streaming: no validation split (validation_split_percentage applies to corpora that are not "
                           "streamed). Pass --validation_file to evaluate.")
        return datasets.IterableDatasetDict(raw)
    if "validation" not in raw and cfg.validation_split_percentage > 0:
        raw["train"], raw["validation"] = hold_out(raw["train"], cfg.validation_split_percentage, cfg.seed, source)
    return datasets.DatasetDict(raw)


def hold_out(train: datasets.Dataset, percentage: float, seed: int, source: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, validation): a seeded sample of `percentage`% of the documents (at least one) for
    validation; the rest in their original order, so that reading them stays sequential on disk."""
    n = len(train)
    n_val = max(1, int(n * percentage / 100))
    if n - n_val < 1:
        raise DataError(f"{source} has {n} documents: too few to hold out {percentage}% for validation. "
                        f"Add documents, lower validation_split_percentage, or pass --validation_file.")
    held = np.sort(np.random.default_rng(seed).choice(n, size=n_val, replace=False))
    keep = np.ones(n, dtype=bool)
    keep[held] = False
    return train.select(np.flatnonzero(keep)), train.select(held)


def _load_named(cfg) -> dict:
    try:
        return dict(datasets.load_dataset(cfg.dataset_name, cfg.dataset_config_name, streaming=cfg.streaming))
    except Exception as e:  # a wrong name, no network, unreadable files: all the user's to fix
        raise DataError(f"Could not load dataset_name '{cfg.dataset_name}'"
                        f"{f' ({cfg.dataset_config_name})' if cfg.dataset_config_name else ''}: {type(e).__name__}: {_cause(e)}") from None


def _local_files(cfg) -> dict[str, list[str]]:
    files = {"train": resolve_data_files("train_file", cfg.train_file, TEXT_FILE_EXTENSIONS)}
    if cfg.validation_file:
        files["validation"] = resolve_data_files("validation_file", cfg.validation_file, TEXT_FILE_EXTENSIONS)
    return files


def _load_local(cfg) -> dict:
    files = _local_files(cfg)
    ext = data_format(files["train"][0]).lstrip(".")  # datasets decompresses .gz/.bz2/.xz/.zst itself
    builder = {"txt": "text", "jsonl": "json"}.get(ext, ext)
    n_files = sum(len(fs) for fs in files.values())
    workers = cfg.preprocessing_num_workers if n_files > 1 else None  # datasets converts files in parallel
    try:
        raw = dict(datasets.load_dataset(builder, data_files=files, num_proc=workers))
    except Exception as e:  # datasets' parse errors name neither the file nor the line: find them
        readers.locate_problem([f for fs in files.values() for f in fs], cfg.text_column_name)
        raise DataError(f"Could not read {', '.join(f for fs in files.values() for f in fs)}: {type(e).__name__}: {_cause(e)}") from None
    column = pick_text_column(raw["train"], cfg.text_column_name, cfg.train_file)
    for split, ds in raw.items():
        if not _holds_text(ds, column):
            readers.locate_problem(files[split], column)  # names the first file and row holding a non-string
        nulls = ds.data.column(column).null_count if builder == "json" and column in ds.column_names else 0
        if nulls:
            # datasets reads a record without the column as null, like an explicit null (a blank document): they cannot
            # be told apart without reading the files again (minutes at corpus scale, on every run), so the count is
            # said aloud instead of dropped silently; the streamed reader names a missing column's file and line.
            import pyarrow.compute as pc

            first = pc.index(pc.is_null(ds.data.column(column)), True).as_py()
            logger.warning("%s split: %d of %d records have no '%s' (the key is missing or null; the first is record %d) "
                           "and are skipped as blank documents. If their text is under another key, set --text_column_name.",
                           split, nulls, len(ds), column, first + 1)
    return raw


def _stream_local(cfg) -> dict:
    files = _local_files(cfg)
    record = readers.first_record(files["train"][0])
    column = cfg.text_column_name or ("text" if "text" in record else None)
    if column is None:
        strings = [k for k, v in record.items() if isinstance(v, str)]
        if len(strings) != 1:
            raise DataError(f"{files['train'][0]} has no 'text' column; set text_column_name to one of: {', '.join(record)}.")
        column = strings[0]
    if record and column not in record:
        raise DataError(f"text_column_name '{column}' is not a column of {files['train'][0]}; available: {', '.join(record)}.")
    for split_files in files.values():
        readers.check_heads(split_files, column)
    logger.info("Streaming %s: %d shard(s)%s.", cfg.train_file, len(files["train"]),
                f", validation {len(files['validation'])} shard(s)" if "validation" in files else "")
    return {split: readers.stream_files(split_files, column) for split, split_files in files.items()}


def _holds_text(ds, column: str) -> bool:
    """False when the column's declared type is not a string (unknown types, as in some streams, pass)."""
    feature = (ds.features or {}).get(column)
    return feature is None or getattr(feature, "dtype", None) in ("string", "large_string")


def _cause(e: BaseException) -> str:
    """The innermost cause of a datasets error (its own message is often just 'An error occurred')."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {e}"


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


def _only_text(ds, column: str, source: str):
    if column not in (ds.column_names or [column]):
        raise DataError(f"{source}: a split lacks the text column '{column}' (it has: {', '.join(ds.column_names)}).")
    # Keep just the chosen column first: another column may already be called "text" (e.g. --text_column_name body).
    ds = ds.select_columns([column])
    return ds.rename_column(column, "text") if column != "text" else ds
