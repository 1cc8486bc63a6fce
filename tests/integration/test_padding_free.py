"""Padding-free line-by-line pretraining and fine-tuning through the real CLIs: the log reports the padding
fraction, packing keeps it small, and it is the default for BERT (RoBERTa's position ids are tested in
tests/unit/test_packing.py)."""

import json

from conftest import ROOT, TINY_MLM, read_log, run_cli

ARGS = [*TINY_MLM, "--line_by_line", "true", "--max_steps", "4", "--logging_steps", "2", "--eval_steps", "0", "--save_steps", "0",
        "--tokenizer_name", ROOT / "tests/fixtures/text/tokenizer", "--max_eval_batches", "1"]


def test_line_by_line_mlm_logs_the_padding_fraction_and_packing_lowers_it(tmp_path):
    padding = {}
    for mode in ("true", "false"):
        out = tmp_path / mode
        run_cli("run_pretrain.py", [*ARGS, "--padding_free", mode, "--output_dir", out], env={"OMP_NUM_THREADS": "1"})
        rows = [r for r in read_log(out) if "loss" in r]
        assert len(rows) == 4 and all(0 <= r["padding_fraction"] < 1 for r in rows)
        padding[mode] = sum(r["padding_fraction"] for r in rows) / len(rows)
    # The corpus' lines vary from a few tokens to 64. With 8 examples per batch the last packed row is part
    # empty (about 11% here); at 256 examples per batch it is 0.9% (docs/performance.md).
    assert padding["true"] < 0.2 and padding["true"] < padding["false"] / 3, padding


def test_text_classification_fine_tunes_padding_free_by_default(tiny_mlm, tmp_path):
    out = tmp_path / "ft"
    data = ROOT / "tests/fixtures/text/classification"
    proc = run_cli("run_finetune.py", [ROOT / "recipes/finetune/text-classification-tiny-cpu.yaml", "--model_name_or_path", tiny_mlm,
                                       "--train_file", data / "train.csv", "--validation_file", data / "validation.csv",
                                       "--test_file", data / "test.csv", "--output_dir", out, "--max_steps", "4", "--eval_steps", "0",
                                       "--save_steps", "0", "--logging_steps", "2"], env={"OMP_NUM_THREADS": "1"})
    assert "Padding-free batches" in proc.stderr + proc.stdout
    rows = [r for r in read_log(out) if "loss" in r and "padding_fraction" in r]
    assert len(rows) == 4 and max(r["padding_fraction"] for r in rows) < 0.2
    assert json.loads((out / "test_results.json").read_text())
