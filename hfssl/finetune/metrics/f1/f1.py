"""F1 (macro by default) as a local `evaluate` module: works offline.

average='macro' is the unweighted mean over labels of 2PR/(P+R), as scikit-learn's f1_score (and
`evaluate`'s "f1") computes it: for single-label ids, over the labels that occur in the references
or the predictions (a label absent from both is not averaged, so an evaluation split without some
classes is not understated); for multi-label (config 'multilabel', each label column its own binary
problem), over every column, a column with no positives in either counting as F1 = 0. The result
names the labels averaged: {"f1": ..., "f1_labels": [label ids]}.
"""

import datasets
import evaluate
import numpy as np


class F1(evaluate.Metric):
    def _info(self):
        value = datasets.Sequence(datasets.Value("int32")) if self.config_name == "multilabel" else datasets.Value("int32")
        return evaluate.MetricInfo(
            description="F1 score averaged over labels.", citation="",
            inputs_description="predictions, references: class ids (or 0/1 lists); num_labels: label count (default: max id + 1); average: macro or micro.",
            features=datasets.Features({"predictions": value, "references": value}))

    def _compute(self, predictions, references, num_labels=None, average="macro"):
        p, r = np.asarray(predictions), np.asarray(references)
        if p.ndim == 1:
            k = int(num_labels or (max(p.max(initial=0), r.max(initial=0)) + 1))
            labels = np.union1d(p, r).astype(int)  # present in references or predictions
            p = np.eye(k, dtype=bool)[p]
            r = np.eye(k, dtype=bool)[r]
        else:
            labels = np.arange(p.shape[1])
        p, r = p[:, labels].astype(bool), r[:, labels].astype(bool)
        tp = (p & r).sum(0).astype(float)  # (L,) per averaged label
        fp = (p & ~r).sum(0).astype(float)
        fn = (~p & r).sum(0).astype(float)
        if average == "micro":
            tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
        denom = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=float), where=denom > 0)
        return {"f1": float(np.mean(f1)) if f1.size else 0.0, "f1_labels": labels.tolist()}
