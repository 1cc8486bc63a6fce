"""Labeled data for fine-tuning: load tables (CSV/TSV/JSON/JSONL/parquet or a Hub dataset), check
columns and labels before any training, hold out a validation split, take label budgets.

Knows nothing about models or training. Every problem raises `DataError` with a message that
names the file/column and says what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import datasets
import numpy as np

from hfssl.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def load_tables(cfg) -> dict[str, datasets.Dataset]:
    """The splits named by cfg (train_file/validation_file/test_file, or dataset_name), as Datasets."""
    if cfg.dataset_name:
        names = [n.strip() for n in cfg.dataset_split_names.split(",")]
        try:
            raw = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config_name)
        except Exception as e:
            raise DataError(f"Could not load dataset '{cfg.dataset_name}': {type(e).__name__}: {e}") from e
        out = {split: raw[name] for split, name in zip(SPLITS, names) if name in raw}
        if cfg.do_train and "train" not in out:
            raise DataError(f"Dataset '{cfg.dataset_name}' has no split '{names[0]}' (found: {', '.join(raw)}). Set dataset_split_names.")
        return out
    out = {}
    for split in SPLITS:
        path = getattr(cfg, f"{split}_file")
        if path is not None:
            out[split] = read_table(path)
    return out


def read_table(path: str) -> datasets.Dataset:
    """One table file as a Dataset (the format follows the extension)."""
    ext = Path(path).suffix.lower()
    builder = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(ext)
    if builder is None:
        raise DataError(f"{path}: unsupported table format '{ext}' (use .csv, .tsv, .json, .jsonl or .parquet).")
    kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
    try:
        ds = datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **kwargs)
    except Exception as e:  # datasets' parse errors do not name the file
        raise DataError(f"Could not read {path}: {type(e).__name__}: {e}") from e
    if len(ds) == 0:
        raise DataError(f"{path} has no rows.")
    return ds


def require_column(ds: datasets.Dataset, column: Optional[str], key: str, source: str) -> None:
    """Raise DataError when `column` (the value of config key `key`) is not in `ds`, listing the columns."""
    if column is not None and column not in ds.column_names:
        raise DataError(f"{key} '{column}' is not a column of {source}; available columns: {', '.join(ds.column_names)}.")


def pick_text_column(ds: datasets.Dataset, requested: Optional[str], source: str) -> str:
    if requested is not None:
        require_column(ds, requested, "text_column_name", source)
        return requested
    for name in ("text", "sentence", "sentence1", "content"):
        if name in ds.column_names:
            return name
    strings = [n for n, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if strings:
        return strings[0]
    raise DataError(f"{source} has no text column; set text_column_name to one of: {', '.join(ds.column_names)}.")


def check_no_nulls(ds: datasets.Dataset, column: str, source: str, allow_empty: bool = False) -> None:
    """Null (missing) or blank values in a text column are an error naming the rows."""
    values = ds[column]
    bad = [i for i, v in enumerate(values) if v is None or (not allow_empty and isinstance(v, str) and not v.strip())]
    if bad:
        kind = "null/empty"
        rows = ", ".join(str(i + 1) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise DataError(f"{source}: column '{column}' has {len(bad)} {kind} value(s) (data rows {rows}). "
                        f"Fill or drop them before fine-tuning.")


# ----------------------------------------------------------------------------------- labels

@dataclass
class LabelSpace:
    """Label names in id order, and whether an example may carry several of them."""

    names: list[str]
    multi_label: bool = False

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def encode(self, value: Any, separator: str = ";") -> Any:
        """A raw label value -> class id (single-label) or (L,) float multi-hot list (multi-label)."""
        ids = self.label2id
        if self.multi_label:
            hot = [0.0] * len(self.names)
            for v in split_labels(value, separator):
                hot[ids[v]] = 1.0
            return hot
        return ids[label_key(value)]


def label_key(value: Any) -> str:
    """Labels are compared as strings, so 1, '1' and 1.0 from different file formats agree."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def split_labels(value: Any, separator: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [label_key(v) for v in value]
    return [s.strip() for s in str(value).split(separator) if s.strip()]


def build_label_space(train: datasets.Dataset, column: str, multi_label: Optional[bool], separator: str, source: str) -> LabelSpace:
    """Label names from the training split: a ClassLabel's names, else the sorted distinct values."""
    feature = train.features[column]
    values = train[column]
    if any(v is None for v in values):
        n = sum(v is None for v in values)
        raise DataError(f"{source}: label column '{column}' has {n} empty value(s); every training example needs a label.")
    if multi_label is None:
        multi_label = isinstance(feature, datasets.Sequence) or isinstance(feature, list) or (bool(values) and isinstance(values[0], list))
    if multi_label:
        names = sorted({v for value in values for v in split_labels(value, separator)})
        return LabelSpace(names, True)
    if isinstance(feature, datasets.ClassLabel):
        return LabelSpace(list(feature.names), False)
    distinct = {label_key(v) for v in values}
    numeric = all(k.lstrip("-").isdigit() for k in distinct)
    names = sorted(distinct, key=int) if numeric else sorted(distinct)
    if len(names) < 2:
        raise DataError(f"{source}: label column '{column}' has a single value ({names[0]!r}); classification needs at least 2 labels.")
    return LabelSpace(names, False)


def check_labels_known(ds: datasets.Dataset, column: str, space: LabelSpace, separator: str, split: str, source: str,
                       model: Optional[str] = None) -> None:
    """Labels of an evaluation split that the model cannot predict are an error, listed. `model`: the fine-tuned
    classifier being evaluated (do_train false), whose labels these are; None: the labels come from training data."""
    if column not in ds.column_names:
        raise DataError(f"label_column_name '{column}' is not a column of the {split} split ({source}); "
                        f"available columns: {', '.join(ds.column_names)}.")
    feature = ds.features[column]
    values = ds[column]
    if isinstance(feature, datasets.ClassLabel):
        values = [feature.names[v] for v in values]
    known = set(space.names)
    seen = set()
    for v in values:
        if v is None:
            raise DataError(f"{source}: the {split} split has examples without a label in '{column}'.")
        seen.update(split_labels(v, separator) if space.multi_label else [label_key(v)])
    unseen = sorted(seen - known)
    if unseen and model is not None:
        raise DataError(f"The {split} split ({source}) has label(s) that the classifier {model} does not predict: "
                        f"{', '.join(map(repr, unseen))}. Its labels: {', '.join(space.names)} (config.json id2label). "
                        f"Map the split's labels to these names (they are compared as written, case included) or remove those rows.")
    if unseen:
        raise DataError(f"The {split} split ({source}) has label(s) never seen in training: {', '.join(map(repr, unseen))}. "
                        f"Known labels: {', '.join(space.names)}. Add training examples for them or remove these rows.")


def drop_unlabeled_marks(ds: datasets.Dataset, column: str, split: str, source: str) -> datasets.Dataset:
    """A ClassLabel column whose values are all negative marks an unlabeled split (GLUE's test splits hold -1):
    the column is dropped, so the split gets predictions only; indexing the names with -1 would score every
    example as the last class. Negative values elsewhere (some rows only, or a train or validation split) are an error."""
    if column not in ds.column_names or not isinstance(ds.features[column], datasets.ClassLabel):
        return ds
    values = np.asarray(ds[column])
    missing = int((values < 0).sum())
    if missing == 0:
        return ds
    if missing == len(values) and split == "test":
        logger.info("%s (%s): every '%s' value is %d (no label): predictions only, no metrics.", source, split, column, values[0])
        return ds.remove_columns(column)
    raise DataError(f"{source}: {missing} of {len(values)} '{column}' values in the {split} split are negative (no label, as "
                    f"in GLUE's test splits); only a test split may be unlabeled, and then in every row. Remove those rows "
                    f"or name other splits with dataset_split_names.")


def class_label_names(ds: datasets.Dataset, column: str) -> Optional[list[str]]:
    feature = ds.features.get(column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


# ----------------------------------------------------------------------------------- splits & budgets

def stratified_indices(keys: Sequence[str], fraction: float, seed: int, at_least_one: bool = True) -> tuple[list[int], list[int]]:
    """Split indices into (chosen, rest) so each key (label) contributes about `fraction` of its rows.

    Deterministic for (keys, fraction, seed). Each label keeps at least one row on the chosen side
    (if `at_least_one`) and, when it has two or more, at least one on the other.
    """
    rng = np.random.default_rng(seed)
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    chosen, rest = [], []
    for k in sorted(by_key):
        idx = np.array(by_key[k])
        rng.shuffle(idx)
        n = int(round(fraction * len(idx)))
        if at_least_one:
            n = max(n, 1)
        if len(idx) >= 2:
            n = min(n, len(idx) - 1) if fraction < 1 else n
        chosen += idx[:n].tolist()
        rest += idx[n:].tolist()
    return sorted(chosen), sorted(rest)


# Classes with fewer training examples than this get a warning when validation is carved from train.
FEW_EXAMPLES = 5


def hold_out_validation(train: datasets.Dataset, keys: Sequence[str], percentage: float, seed: int, source: str):
    """Carve a stratified validation split from train: about `percentage` of each class, at least one
    example of every class with two or more, and never a class's last training example (a class
    with a single example stays in training and is missing from validation)."""
    if len(train) < 4:
        raise DataError(f"{source} has {len(train)} training examples: too few to hold out a validation split. Give validation_file.")
    # Choosing the TRAINING side with at_least_one keeps one training example per class.
    keep, val = stratified_indices(keys, 1 - percentage / 100, seed)
    if not val:  # every label has one row, which stays in training: an empty validation split crashed the final evaluation
        raise DataError(f"{source}: no validation examples could be held out: each of its {len(train)} training examples has a "
                        f"label of its own, and a label's only example stays in training. Give validation_file, or add "
                        f"examples (at least two per label).")
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    few = sorted((n, k) for k, n in counts.items() if n < FEW_EXAMPLES)
    if few:
        logger.warning("%d label(s) have fewer than %d examples before the validation split: %s. Their validation scores rest on "
                       "one or two examples (a single example stays in training, so that label is not validated); add examples "
                       "or give validation_file.", len(few), FEW_EXAMPLES, ", ".join(f"{k!r} ({n})" for n, k in few[:20]))
    logger.info("No validation set given: holding out %d of %d training examples (%.0f%%, stratified).", len(val), len(train), percentage)
    return train.select(keep), train.select(val)


def label_budget(train: datasets.Dataset, keys: Sequence[str], fraction: float, max_samples: Optional[int], seed: int) -> datasets.Dataset:
    """A stratified subset of the training set: `fraction` of it, then at most `max_samples` rows."""
    if fraction < 1:
        chosen, _ = stratified_indices(keys, fraction, seed + 1)
        train = train.select(chosen)
        keys = [keys[i] for i in chosen]
    if max_samples is not None and max_samples < len(train):
        chosen, _ = stratified_indices(keys, max_samples / len(train), seed + 2)
        train = train.select(chosen[:max_samples])
    return train
