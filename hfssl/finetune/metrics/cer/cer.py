"""Character error rate as a local `evaluate` module: works offline, no extra dependency.

(substitutions + deletions + insertions) / reference characters, summed over the corpus (as jiwer does),
from a Levenshtein alignment.
"""

import datasets
import evaluate


def edit_distance(a, b):
    """Levenshtein distance between two sequences (unit costs)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class CER(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Character error rate.", citation="", inputs_description="predictions, references: strings.",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        errors = total = 0
        for prediction, reference in zip(predictions, references):
            ref = list(reference)
            errors += edit_distance(list(prediction), ref)
            total += len(ref)
        return {"cer": errors / total if total else 0.0}
