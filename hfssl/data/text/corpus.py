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

from hfssl.data.files import TEXT_FILE_EXTENSIONS, data_format, resolve_data_files
from hfssl.errors import DataError

logger = logging.getLogger(__name__)

BUILTIN_CORPUS = "python-docstrings"


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
