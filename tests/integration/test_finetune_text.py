"""Text chain: tiny MLM pretraining -> text classification from it and from random init (the payoff
report, through the real CLI) -> results files, pipeline with label names, evaluation-only mode,
and clear errors for bad input."""

import csv
import json

import pytest
from safetensors.torch import load_file

from hfssl.finetune import payoff as payoff_mod

from conftest import FIXTURES, ROOT, run_cli

TOPICS = FIXTURES / "text" / "classification"
RECIPE = ROOT / "recipes" / "finetune" / "text-classification-tiny-cpu.yaml"
NAMES = {"files", "network", "concurrency", "numbers"}
FAST = ["--max_steps", "4", "--learning_rate", "2e-3", "--per_device_train_batch_size", "16", "--logging_steps", "2"]
# The payoff fixture's run folders: one seed (42), one learning rate per side (2e-3, and 1e-3 for random init).
RUNS = {"pretrained-1": "pretrained-1/seed42-lr0.002", "scratch-1": "scratch-1/seed42-lr0.001",
        "pretrained-0.5": "pretrained-0.5/seed42-lr0.002", "scratch-0.5": "scratch-0.5/seed42-lr0.001"}


@pytest.fixture(scope="module")
def payoff(tiny_mlm, tmp_path_factory):
    """Pretrained vs. random init at label budgets 0.5 and 1.0, one seed: four fine-tuning runs, one command."""
    out = tmp_path_factory.mktemp("payoff") / "out"
    proc = run_cli("run_finetune.py", [RECIPE, "--model_name_or_path", tiny_mlm, "--output_dir", out, *FAST,
                                       "--compare_with_scratch", "true", "--label_fractions", "0.5,1.0", "--seeds", "1",
                                       "--scratch_learning_rate", "1e-3"])
    assert "| label budget |" in proc.stdout
    return out


def test_pretrained_and_scratch_both_write_results(payoff):
    for run in RUNS.values():
        ev = json.loads((payoff / run / "eval_results.json").read_text())
        assert set(ev) >= {"eval_loss", "eval_accuracy", "eval_f1", "eval_samples"}, run
        assert ev["eval_samples"] == 40 and 0 <= ev["eval_accuracy"] <= 1 and 0 <= ev["eval_f1"] <= 1
        assert 0.5 < ev["eval_loss"] < 3.0  # about ln(4) = 1.39 for 4 labels after a few steps
        test = json.loads((payoff / run / "test_results.json").read_text())
        assert test["test_samples"] == 40 and "test_accuracy" in test
        rows = [json.loads(line) for line in (payoff / run / "eval_predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 40 and {r["label"] for r in rows} == NAMES and {r["prediction"] for r in rows} <= NAMES
        assert sum(r["prediction"] == r["label"] for r in rows) / 40 == pytest.approx(ev["eval_accuracy"])
        assert (payoff / run / "eval_confusion_matrix.png").stat().st_size > 1000


def test_pretrained_run_starts_from_the_mlm_and_scratch_does_not(payoff, tiny_mlm):
    key = "bert.embeddings.word_embeddings.weight"
    mlm = load_file(tiny_mlm / "model.safetensors")[key]
    pre = load_file(payoff / RUNS["pretrained-1"] / "model.safetensors")[key]
    scratch = load_file(payoff / RUNS["scratch-1"] / "model.safetensors")[key]
    assert (pre - mlm).abs().mean() < 0.2 * (scratch - mlm).abs().mean()
    assert json.loads((payoff / RUNS["scratch-1"] / "config.json").read_text())["id2label"]["0"] == "concurrency"


def test_payoff_report(payoff):
    report = json.loads((payoff / "payoff.json").read_text())
    assert report["metric"] == "test_accuracy" and report["higher_is_better"] and report["seeds"] == [42]
    assert report["learning_rate_grids"] == {"pretrained": [2e-3], "scratch": [1e-3]}
    table = report["table"]
    assert [row["label_fraction"] for row in table] == [0.5, 1.0]
    assert [row["train_samples"] for row in table] == [80, 160]  # stratified budget of the 160 examples
    for row in table:
        test = {init: json.loads((payoff / RUNS[f"{init}-{row['label_fraction']:g}"] / "test_results.json").read_text())
                for init in ("pretrained", "scratch")}
        assert row["pretrained"]["values"] == [pytest.approx(test["pretrained"]["test_accuracy"])]
        assert row["pretrained"]["n"] == 1 and row["pretrained"]["sd"] is None
        assert row["gain"]["mean"] == pytest.approx(test["pretrained"]["test_accuracy"] - test["scratch"]["test_accuracy"])
        assert row["gain"]["n"] == 1 and row["gain"]["ci"] is None  # one seed: no interval
    md = (payoff / "payoff.md").read_text()
    assert "| 0.5 | 80 |" in md and "| 1 | 160 |" in md and "| n/a | 0.002 / 0.001 | 1 (42) |" in md
    assert (payoff / "payoff.png").stat().st_size > 5000


def test_payoff_with_seeds_and_a_learning_rate_grid(tiny_mlm, tmp_path):
    """2 seeds x a 2-point grid per side at one label budget: 8 runs; the report's cells are the runs it names."""
    out = tmp_path / "grid"
    run_cli("run_finetune.py", [RECIPE, "--model_name_or_path", tiny_mlm, "--output_dir", out, *FAST, "--max_steps", "2",
                                "--compare_with_scratch", "true", "--seeds", "2", "--learning_rates", "1e-3,3e-3",
                                "--scratch_learning_rates", "1e-3,3e-3"])
    report = json.loads((out / "payoff.json").read_text())
    runs = report["runs"]
    assert len(runs) == 8 and report["seeds"] == [42, 43]
    assert {(r["init"], r["seed"], r["learning_rate"]) for r in runs} == {
        (i, s, lr) for i in ("pretrained", "scratch") for s in (42, 43) for lr in (1e-3, 3e-3)}
    (row,) = report["table"]
    per_seed = {}
    for init in ("pretrained", "scratch"):
        side = row[init]
        mine = [r for r in runs if r["init"] == init]
        val = {lr: sum(r["eval_accuracy"] for r in mine if r["learning_rate"] == lr) / 2 for lr in (1e-3, 3e-3)}
        assert [g["validation_mean"] for g in side["learning_rate_grid"]] == pytest.approx([val[1e-3], val[3e-3]])
        assert val[side["learning_rate"]] == max(val.values())  # chosen on validation
        chosen = sorted((r for r in mine if r["learning_rate"] == side["learning_rate"]), key=lambda r: r["seed"])
        for r in chosen:  # the reported numbers are the chosen runs' own test results
            assert json.loads((out / payoff_mod.run_dir_name(init, 1.0, r["seed"], r["learning_rate"]) / "test_results.json").read_text())[
                "test_accuracy"] == pytest.approx(r["test_accuracy"])
        per_seed[init] = [r["test_accuracy"] for r in chosen]
        assert side["values"] == pytest.approx(per_seed[init]) and side["n"] == 2
        assert side["mean"] == pytest.approx(sum(per_seed[init]) / 2)
        assert side["sd"] == pytest.approx(abs(per_seed[init][0] - per_seed[init][1]) / 2 ** 0.5)
    diffs = [p - s for p, s in zip(per_seed["pretrained"], per_seed["scratch"])]
    gain = row["gain"]
    assert gain["differences"] == pytest.approx(diffs) and gain["n"] == 2
    half = 12.7062 * abs(diffs[0] - diffs[1]) / 2 ** 0.5 / 2 ** 0.5  # t(0.975, 1) * sd / sqrt(n)
    assert gain["ci"] == pytest.approx([gain["mean"] - half, gain["mean"] + half], abs=1e-4)
    md = (out / "payoff.md").read_text()
    assert "| 1 | 160 |" in md and "| 2 (42, 43) |" in md and "95% CI of gain" in md
    assert md.count("| pretrained |") == 2 and md.count("| scratch |") == 2  # the grid's validation table

    # Interrupted or extended later: --resume_from_checkpoint latest takes the finished runs from payoff_runs.jsonl
    # and trains only the new ones (here a third seed).
    before = {(r["init"], r["seed"], r["learning_rate"]): r for r in runs}
    stamp = (out / payoff_mod.run_dir_name("pretrained", 1.0, 42, 1e-3) / "model.safetensors").stat().st_mtime_ns
    run_cli("run_finetune.py", [RECIPE, "--model_name_or_path", tiny_mlm, "--output_dir", out, *FAST, "--max_steps", "2",
                                "--compare_with_scratch", "true", "--seeds", "3", "--learning_rates", "1e-3,3e-3",
                                "--scratch_learning_rates", "1e-3,3e-3", "--resume_from_checkpoint", "latest"])
    again = json.loads((out / "payoff.json").read_text())["runs"]
    assert len(again) == 12 and {r["seed"] for r in again} == {42, 43, 44}
    for r in again:
        if r["seed"] != 44:
            b = before[(r["init"], r["seed"], r["learning_rate"])]
            assert r == b, {k: (r.get(k), b.get(k)) for k in set(r) | set(b) if r.get(k) != b.get(k)}
    assert (out / payoff_mod.run_dir_name("pretrained", 1.0, 42, 1e-3) / "model.safetensors").stat().st_mtime_ns == stamp
    assert (out / payoff_mod.run_dir_name("scratch", 1.0, 44, 3e-3) / "test_results.json").is_file()


def test_model_card_and_pipeline_print_label_names(payoff):
    from transformers import pipeline

    card = (payoff / RUNS["pretrained-1"] / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "model-index" in card and "type: accuracy" in card
    clf = pipeline("text-classification", model=str(payoff / RUNS["pretrained-1"]))
    out = clf(["Copy the directory tree to the archive.", "Return the median of the data."])
    assert len(out) == 2 and all(o["label"] in NAMES and 0 < o["score"] <= 1 for o in out)


def test_evaluation_only_reproduces_the_training_run_metrics(payoff, tmp_path, capsys):
    from hfssl.finetune.run import main

    out = tmp_path / "eval-only"
    code = main([str(RECIPE), "--model_name_or_path", str(payoff / RUNS["pretrained-1"]), "--do_train", "false", "--train_file", "none",
                 "--validation_file", str(TOPICS / "validation.csv"), "--test_file", str(TOPICS / "test.csv"), "--output_dir", str(out)])
    assert code == 0, capsys.readouterr().err[-2000:]
    again = json.loads((out / "eval_results.json").read_text())
    before = json.loads((payoff / RUNS["pretrained-1"] / "eval_results.json").read_text())
    assert again["eval_accuracy"] == pytest.approx(before["eval_accuracy"])
    assert again["eval_loss"] == pytest.approx(before["eval_loss"], rel=1e-4)
    assert (out / "test_results.json").is_file() and not (out / "model.safetensors").exists()


def test_sentence_pairs_multi_label(tiny_mlm, tmp_path, capsys):
    from hfssl.finetune.run import main

    rows = [("Copy the file.", "Remove the directory.", "files"), ("Open a socket.", "Send the request.", "network;files"),
            ("Start a thread.", "Wait for the lock.", "concurrency"), ("Return the mean.", "Compute the sum.", "numbers;concurrency")] * 4
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("first", "second", "tags"), *rows])
    out = tmp_path / "pairs"
    code = main([str(RECIPE), "--model_name_or_path", "none", "--config_name", str(tiny_mlm), "--train_file", str(path), "--validation_file", "none",
                 "--test_file", "none", "--text_column_name", "first", "--text_pair_column_name", "second",
                 "--label_column_name", "tags", "--multi_label", "true", "--max_steps", "2", "--output_dir", str(out)])
    assert code == 0, capsys.readouterr().err[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["id2label"].values()) == ["concurrency", "files", "network", "numbers"]
    ev = json.loads((out / "eval_results.json").read_text())
    assert ev["eval_samples"] >= 4 and "eval_f1" in ev  # held out from train (10%, stratified)
    pred = json.loads((out / "eval_predictions.jsonl").read_text().splitlines()[0])
    assert isinstance(pred["prediction"], list) and len(pred["scores"]) == 4


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("column", "label_column_name 'topic' is not a column of"),
    ("unseen", "label(s) never seen in training: 'weather'"),
    ("nulls", "column 'text' has 1 null/empty value(s) (data rows 3)"),
])
def test_bad_input_fails_before_training_with_a_clear_message(tiny_mlm, tmp_path, capsys, case, message):
    from hfssl.finetune.run import main

    good = [("Copy the file to the folder.", "files"), ("Open the connection.", "network")] * 4
    train = _write(tmp_path / "train.csv", ("text", "label"), good)
    val = _write(tmp_path / "val.csv", ("text", "label"), good[:2])
    args = ["--label_column_name", "label"]
    if case == "column":
        args = ["--label_column_name", "topic"]
    elif case == "unseen":
        val = _write(tmp_path / "val.csv", ("text", "label"), [*good[:2], ("Rain tomorrow.", "weather")])
    elif case == "nulls":
        train = _write(tmp_path / "train.csv", ("text", "label"), [*good[:2], ("", "files"), *good[2:]])
    out = tmp_path / "out"
    code = main([str(RECIPE), "--model_name_or_path", str(tiny_mlm), "--train_file", train, "--validation_file", val,
                 "--test_file", "none", "--output_dir", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err[-2000:]
    if case == "column":
        assert "available columns: text, label" in err
    assert not (out / "model.safetensors").exists() and not (out / "training_log.jsonl").exists()


def test_text_probe_reports_layer_weights(tiny_mlm, tmp_path, capsys):
    from hfssl.finetune.run import main

    out = tmp_path / "probe"
    code = main([str(RECIPE), "--model_name_or_path", str(tiny_mlm), "--probe", "true", "--probe_hidden_size", "16",
                 "--train_file", str(TOPICS / "train.csv"), "--validation_file", str(TOPICS / "validation.csv"), "--test_file", "none",
                 "--max_steps", "3", "--learning_rate", "1e-2", "--output_dir", str(out)])
    assert code == 0, capsys.readouterr().err[-2000:]
    weights = json.loads((out / "eval_results.json").read_text())["probe"]["layer_weights"]
    assert len(weights) == json.loads((tiny_mlm / "config.json").read_text())["num_hidden_layers"] + 1
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and max(weights) - min(weights) > 1e-4
    from safetensors.torch import load_file

    state = load_file(out / "probe.safetensors")
    assert set(state) == {"layer_logits", "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"}  # upstream not copied


def _classlabel_hub(folder, test_labels):
    """A local Hub-style dataset of the topic fixtures with a ClassLabel label column; the test split's labels are
    `test_labels` (a function of the row index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = {s: list(csv.DictReader(open(TOPICS / f"{s}.csv"))) for s in ("train", "validation", "test")}
    names = sorted({r["label"] for r in splits["train"]})
    meta = {"info": {"features": {"text": {"dtype": "string", "_type": "Value"}, "label": {"names": names, "_type": "ClassLabel"}}}}
    (folder / "data").mkdir(parents=True)
    for split, rows in splits.items():
        labels = [test_labels(i) for i in range(len(rows))] if split == "test" else [names.index(r["label"]) for r in rows]
        table = pa.table({"text": [r["text"] for r in rows], "label": pa.array(labels, pa.int64())})
        pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}), folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder, len(splits["test"])


def test_a_test_split_labeled_minus_one_is_unlabeled_not_the_last_class(payoff, tmp_path, capsys):
    """GLUE-style test splits hold -1 in a ClassLabel column: predictions only, no metrics (names[-1] scored every
    example as the last class). -1 in some rows only is an error naming the split."""
    from hfssl.finetune.run import main

    model = str(payoff / RUNS["pretrained-1"])
    hub, n_test = _classlabel_hub(tmp_path / "glue-like", lambda i: -1)
    out = tmp_path / "eval"
    assert main([str(RECIPE), "--model_name_or_path", model, "--do_train", "false", "--train_file", "none",
                 "--dataset_name", str(hub), "--output_dir", str(out)]) == 0, capsys.readouterr().err[-2000:]
    test = json.loads((out / "test_results.json").read_text())
    assert "test_accuracy" not in test and test["test_samples"] == n_test
    assert "eval_accuracy" in json.loads((out / "eval_results.json").read_text())  # the labeled validation split is scored
    mixed, n = _classlabel_hub(tmp_path / "mixed", lambda i: -1 if i % 2 else 0)
    assert main([str(RECIPE), "--model_name_or_path", model, "--do_train", "false", "--train_file", "none",
                 "--dataset_name", str(mixed), "--output_dir", str(tmp_path / "mixed-out")]) == 2
    assert f"{n // 2} of {n} 'label' values in the test split are negative" in capsys.readouterr().err
