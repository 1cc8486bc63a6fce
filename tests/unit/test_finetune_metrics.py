"""The local `evaluate` metric modules: offline, and equal to hand-derived values / jiwer."""

import numpy as np
import pytest

from hfssl.finetune import metrics


def test_classification_metrics_hand_values():
    # refs 0 0 1 1 2 2, preds 0 1 1 1 2 0
    preds, refs = np.array([0, 1, 1, 1, 2, 0]), np.array([0, 0, 1, 1, 2, 2])
    m = metrics.classification_metrics(preds, refs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per-label F1: label0 P=1/2 R=1/2 -> 0.5; label1 P=2/3 R=1 -> 0.8; label2 P=1 R=1/2 -> 2/3
    assert m["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["f1_labels"] == ["a", "b", "c"]
    assert "matthews_correlation" not in m


def test_macro_f1_averages_the_labels_present_and_names_them():
    m = metrics.classification_metrics(np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1]), ["a", "b", "c"])
    # label0 P=1/2 R=1 -> 2/3; label1 never predicted -> 0; label2 absent from both: not averaged
    assert m["f1"] == pytest.approx((2 / 3) / 2)
    assert m["f1_labels"] == ["a", "b"]


@pytest.mark.parametrize("present, total", [(2, 3), (4, 10)])
def test_perfect_predictions_on_an_eval_split_without_some_classes_score_one(present, total):
    refs = np.repeat(np.arange(present), 5)  # the split holds only the first `present` classes
    names = [f"label{i}" for i in range(total)]
    m = metrics.classification_metrics(refs, refs, names)
    assert m["accuracy"] == 1.0 and m["f1"] == 1.0  # was present / total with absent labels counted as 0
    assert m["f1_labels"] == names[:present]


def test_f1_equals_scikit_learn_definition_on_random_labels():
    # scikit-learn's f1_score(average="macro"): labels = sorted(set(y_true) | set(y_pred)).
    rng = np.random.default_rng(0)
    for _ in range(20):
        refs, preds = rng.integers(0, 6, 30), rng.integers(0, 6, 30)
        refs[refs == 5] = 0  # label 5 only ever predicted, 4 maybe neither
        preds[preds == 4] = 1
        labels = sorted(set(refs) | set(preds))
        per = []
        for k in labels:
            tp = np.sum((preds == k) & (refs == k))
            fp, fn = np.sum((preds == k) & (refs != k)), np.sum((preds != k) & (refs == k))
            per.append(2 * tp / (2 * tp + fp + fn))
        m = metrics.classification_metrics(preds, refs, [str(i) for i in range(8)])
        assert m["f1"] == pytest.approx(np.mean(per)) and m["f1_labels"] == [str(k) for k in labels]


def test_binary_adds_matthews_correlation():
    preds, refs = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 0, 1, 1])
    m = metrics.classification_metrics(preds, refs, ["no", "yes"])
    tp, tn, fp, fn = 2, 2, 1, 1
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["matthews_correlation"] == pytest.approx(mcc)
    perfect = metrics.classification_metrics(refs, refs, ["no", "yes"])
    assert perfect["matthews_correlation"] == pytest.approx(1.0) and perfect["accuracy"] == 1.0


def test_multi_label_exact_match_and_per_label_f1():
    refs = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    preds = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]])
    m = metrics.classification_metrics(preds, refs, ["a", "b", "c"], multi_label=True)
    assert m["accuracy"] == pytest.approx(1 / 3)
    # label0: tp2 -> 1; label1: tp1 fn1 -> 2/3; label2: tp1 fp1 -> 2/3
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # Multi-label, as scikit-learn: every column is averaged, one without positives anywhere counts 0.
    m = metrics.classification_metrics(np.pad(preds, ((0, 0), (0, 1))), np.pad(refs, ((0, 0), (0, 1))), ["a", "b", "c", "d"],
                                       multi_label=True)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 4) and m["f1_labels"] == ["a", "b", "c", "d"]


def test_wer_cer_match_jiwer():
    import jiwer  # the test extra installs it
    refs = ["three one four", "two two", "nine zero one five"]
    preds = ["three one for", "two", "nine zero one five six"]
    m = metrics.asr_metrics(preds, refs)
    assert m["wer"] == pytest.approx(jiwer.wer(refs, preds))
    assert m["cer"] == pytest.approx(jiwer.cer(refs, preds))
    assert metrics.asr_metrics(refs, refs) == {"wer": 0.0, "cer": 0.0}


def test_confusion_matrix_rows_are_references():
    cm = metrics.confusion_matrix([0, 1, 1, 2], [0, 0, 1, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_metrics_load_offline_from_local_modules():
    # conftest sets HF_HUB_OFFLINE=1 before anything imports huggingface_hub: a Hub fetch would fail here.
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
    for name in metrics.NAMES:
        module = metrics.load(name)
        assert module.name == name
    with pytest.raises(ValueError, match="hfssl ships"):
        metrics.load("bleu")
