"""Downstream metrics through `evaluate`, offline.

`evaluate.load("accuracy")` downloads a script from the Hub; the modules here ship with hfssl and
load by path (`evaluate.load(<this folder>/accuracy)`), so they work with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent
NAMES = ("accuracy", "f1", "matthews_correlation", "wer", "cer")


@lru_cache(maxsize=None)
def load(name: str, config_name: str | None = None):
    """The local `evaluate` module `name` (one of NAMES)."""
    import evaluate

    if name not in NAMES:
        raise ValueError(f"Unknown metric '{name}'; hfssl ships: {', '.join(NAMES)}.")
    return evaluate.load(str(METRICS_DIR / name), config_name)


def classification_metrics(predictions: np.ndarray, references: np.ndarray, names: Sequence[str], multi_label: bool = False) -> dict:
    """accuracy and macro-F1 (`f1_labels`: the label names it averages, see the f1 module); plus
    matthews_correlation for binary single-label tasks.

    predictions/references: (N,) class ids, or (N, L) 0/1 for multi-label; names: the L label names.
    """
    config = "multilabel" if multi_label else None
    preds, refs = np.asarray(predictions).astype(int).tolist(), np.asarray(references).astype(int).tolist()
    f1 = load("f1", config).compute(predictions=preds, references=refs, num_labels=len(names), average="macro")
    out = {**load("accuracy", config).compute(predictions=preds, references=refs), "f1": f1["f1"]}
    if len(names) == 2 and not multi_label:
        out.update(load("matthews_correlation").compute(predictions=preds, references=refs))
    return {**{k: float(v) for k, v in out.items()}, "f1_labels": [names[i] for i in f1["f1_labels"]]}


def asr_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER."""
    preds, refs = list(predictions), list(references)
    out = {**load("wer").compute(predictions=preds, references=refs), **load("cer").compute(predictions=preds, references=refs)}
    return {k: float(v) for k, v in out.items()}


def confusion_matrix(predictions: np.ndarray, references: np.ndarray, num_labels: int) -> np.ndarray:
    """(L, L) int counts, rows = reference label, columns = predicted label."""
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (np.asarray(references, dtype=int), np.asarray(predictions, dtype=int)), 1)
    return cm


def plot_confusion_matrix(cm: np.ndarray, names: Sequence[str], path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = min(2.0 + 0.6 * n, 14)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    if n <= 30:
        top = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > top / 2 else "black", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
