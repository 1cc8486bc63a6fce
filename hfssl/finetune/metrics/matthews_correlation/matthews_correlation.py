"""Matthews correlation coefficient (binary and multiclass, Gorodkin's R_K) as a local `evaluate` module."""

import datasets
import evaluate
import numpy as np


class MatthewsCorrelation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Matthews correlation coefficient: 0 for chance, 1 for perfect predictions.", citation="",
            inputs_description="predictions, references: class ids.",
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}))

    def _compute(self, predictions, references):
        p, r = np.asarray(predictions), np.asarray(references)
        k = int(max(p.max(initial=0), r.max(initial=0)) + 1)
        c = np.zeros((k, k), dtype=float)  # confusion: rows = reference, columns = prediction
        np.add.at(c, (r, p), 1)
        t, pk, n, correct = c.sum(1), c.sum(0), c.sum(), np.trace(c)
        denom = np.sqrt((n * n - pk @ pk) * (n * n - t @ t))
        return {"matthews_correlation": float((correct * n - t @ pk) / denom) if denom > 0 else 0.0}
