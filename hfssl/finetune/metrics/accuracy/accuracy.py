"""Accuracy (exact match for multi-label) as a local `evaluate` module: works offline."""

import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        value = datasets.Sequence(datasets.Value("int32")) if self.config_name == "multilabel" else datasets.Value("int32")
        return evaluate.MetricInfo(
            description="Fraction of examples whose prediction equals the reference (all labels for multi-label).",
            citation="", inputs_description="predictions, references: class ids (or 0/1 lists with config 'multilabel').",
            features=datasets.Features({"predictions": value, "references": value}))

    def _compute(self, predictions, references):
        n = len(references)
        hits = sum(list(p) == list(r) if isinstance(r, (list, tuple)) else p == r for p, r in zip(predictions, references))
        return {"accuracy": hits / n if n else 0.0}
