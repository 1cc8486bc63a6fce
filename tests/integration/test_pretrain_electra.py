"""ELECTRA through the real CLI: both loss terms logged and falling, exact resume, 2 processes = 1
process with accumulation 2 (two loss terms, each divided by its own global count), outputs that load
in plain transformers (discriminator: AutoModel / AutoModelForSequenceClassification; generator:
pipeline("fill-mask")), the discriminator fine-tuned by run_finetune.py, and gradient-disentangled embedding
sharing (exact resume, merged table saved)."""

import json
import math
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import EXACT, FIXTURES, ROOT, read_log, run_cli, train_losses

# The paper's ELECTRA-Small recipe (transformers' ElectraForMaskedLM / ElectraForPreTraining, post-LN) scaled down.
TINY = [str(ROOT / "recipes" / "electra" / "electra-small.yaml"), "--mixed_precision", "no", "--train_file", str(FIXTURES / "text" / "corpus.txt"),
        "--tokenizer_name", str(FIXTURES / "text" / "tokenizer"),
        "--config_overrides", "hidden_size=64,embedding_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128,"
                              "max_position_embeddings=64",
        "--max_seq_length", "64", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--max_steps", "12", "--save_steps", "6", "--eval_steps", "0", "--logging_steps", "2", "--learning_rate", "2e-3",
        "--warmup_steps", "2", "--validation_split_percentage", "10", "--max_eval_batches", "2"]


@pytest.fixture(scope="module")
def electra(tmp_path_factory):
    out = tmp_path_factory.mktemp("electra") / "out"
    run_cli("run_pretrain.py", [*TINY, "--output_dir", out], env={"OMP_NUM_THREADS": "1"})
    return out


def test_both_terms_are_logged_and_the_run_learns(electra):
    rows = [r for r in read_log(electra) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 13))
    first, last = rows[0], rows[-1]
    assert first["loss"] == pytest.approx(first["loss_generator"] + first["loss_discriminator"])
    # lambda = 50 x BCE per real token: about 50 * ln 2 at the start.
    assert 20 < first["loss_discriminator"] < 50
    assert first["num_discriminator_targets"] > 4 * first["num_generator_targets"]  # all real tokens vs ~15%
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3])
    for key in ("generator_accuracy", "discriminator_accuracy", "replaced_fraction"):
        assert 0 <= last[key] <= 1
    # ~15% masked, nearly all replaced by an untrained generator: answering "original" everywhere scores ~85%
    assert 0.75 < last["discriminator_baseline_accuracy"] < 0.95
    # lambda 50 x binary entropy of each micro-batch's replaced share, averaged: at most that of the pooled share
    share = 1 - last["discriminator_baseline_accuracy"]
    pooled = 50 * -(share * math.log(share) + (1 - share) * math.log(1 - share))
    assert 0.9 * pooled < last["discriminator_baseline_loss"] <= pooled * (1 + 1e-6)
    final = json.loads((electra / "train_results.json").read_text())
    assert {"eval_loss", "eval_loss_generator", "eval_loss_discriminator", "eval_discriminator_accuracy"} <= set(final)


def test_resume_reproduces_the_uninterrupted_run(electra, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(electra, out)
    for name in ("model.safetensors", "train_results.json"):
        (out / name).unlink()
    shutil.rmtree(out / "checkpoint-12")
    run_cli("run_pretrain.py", [*TINY, "--output_dir", out, "--resume_from_checkpoint", "latest"], env={"OMP_NUM_THREADS": "1"})
    assert train_losses(out) == train_losses(electra)  # bitwise, including the generator's samples
    a, b = load_file(out / "model.safetensors"), load_file(electra / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_match_one_process_with_accumulation(electra, tmp_path):
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29523"]
    run_cli("run_pretrain.py", [*TINY, "--output_dir", out, "--gradient_accumulation_steps", "1", "--save_steps", "0"],
            launcher=torchrun, env={"OMP_NUM_THREADS": "1"})
    one = {r["step"]: r for r in read_log(electra) if "loss" in r}
    two = {r["step"]: r for r in read_log(out) if "loss" in r}
    assert sorted(one) == sorted(two)
    for step in one:
        for key in ("loss", "loss_generator", "loss_discriminator"):
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-4, abs=1e-5), (step, key)
        assert two[step]["num_discriminator_targets"] == one[step]["num_discriminator_targets"]


def test_outputs_load_in_transformers(electra):
    from transformers import AutoModel, AutoModelForSequenceClassification, ElectraForPreTraining, pipeline

    assert type(ElectraForPreTraining.from_pretrained(electra)).__name__ == "ElectraForPreTraining"
    assert type(AutoModel.from_pretrained(electra)).__name__ == "ElectraModel"
    clf = AutoModelForSequenceClassification.from_pretrained(electra, num_labels=3)
    assert clf.config.num_labels == 3
    fill = pipeline("fill-mask", model=str(electra / "generator"))
    out = fill(f"return the {fill.tokenizer.mask_token} of the list.")
    assert len(out) == 5 and all(0 <= o["score"] <= 1 for o in out)
    # The generator was trained with the discriminator's embeddings: saved copies are equal.
    g, d = load_file(electra / "generator" / "model.safetensors"), load_file(electra / "model.safetensors")
    assert torch.equal(g["electra.embeddings.word_embeddings.weight"], d["electra.embeddings.word_embeddings.weight"])
    card = (electra / "README.md").read_text()
    assert "ELECTRA" in card and "generator/" in card


def _fine_tune(model, out) -> dict:
    """4 updates of the tiny text-classification recipe on the topic fixtures; the eval results."""
    topics = FIXTURES / "text" / "classification"
    run_cli("run_finetune.py", [ROOT / "recipes" / "finetune" / "text-classification-tiny-cpu.yaml", "--model_name_or_path", model,
                                "--output_dir", out, "--max_steps", "4", "--train_file", topics / "train.csv",
                                "--validation_file", topics / "validation.csv", "--test_file", topics / "test.csv"],
            env={"OMP_NUM_THREADS": "1"})
    return json.loads((out / "eval_results.json").read_text())


def test_the_discriminator_fine_tunes(electra, tmp_path):
    out = tmp_path / "cls"
    results = _fine_tune(electra, out)
    assert results["eval_samples"] == 40 and 0 <= results["eval_accuracy"] <= 1
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ElectraForSequenceClassification"]


def test_the_pre_ln_layout_trains_saves_and_fine_tunes(tmp_path):
    """model_type modernbert: ModernBertForTokenClassification (one label) + a shallower ModernBertForMaskedLM, with
    the paper's tied embeddings (the recipe's gdes: the next test)."""
    from transformers import AutoModel, AutoModelForSequenceClassification, ModernBertForTokenClassification, pipeline

    out = tmp_path / "pre-ln"
    recipe = ROOT / "recipes" / "electra" / "tiny-cpu.yaml"
    run_cli("run_pretrain.py", [recipe, *EXACT, "--embedding_sharing", "tied", "--train_file", FIXTURES / "text" / "corpus.txt",
                                "--tokenizer_name", FIXTURES / "text" / "tokenizer",
                                "--config_overrides", "hidden_size=64,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128,"
                                                      "max_position_embeddings=64,local_attention=64",
                                "--max_seq_length", "64", "--per_device_train_batch_size", "4", "--max_steps", "8", "--save_steps", "0",
                                "--eval_steps", "0", "--logging_steps", "2", "--warmup_steps", "2", "--validation_split_percentage", "10",
                                "--max_eval_batches", "2", "--output_dir", out], env={"OMP_NUM_THREADS": "1"})
    rows = [r for r in read_log(out) if "loss" in r]
    assert len(rows) == 8 and rows[0]["loss"] == pytest.approx(rows[0]["loss_generator"] + rows[0]["loss_discriminator"])
    # The top folder holds the encoder; the replaced-token head is beside it, so fine-tuning starts fresh heads.
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ModernBertModel"]
    assert type(AutoModel.from_pretrained(out)).__name__ == "ModernBertModel"
    head = load_file(out / "replaced_token_head.safetensors")
    assert sorted(head) == ["classifier.bias", "classifier.weight", "head.dense.weight", "head.norm.weight"]
    assert head["classifier.weight"].shape == (1, 64)
    disc = ModernBertForTokenClassification.from_pretrained(out, num_labels=1)
    disc.load_state_dict(head, strict=False)
    assert disc.config.num_hidden_layers == 2
    assert AutoModelForSequenceClassification.from_pretrained(out, num_labels=3).config.num_labels == 3
    fill = pipeline("fill-mask", model=str(out / "generator"))
    assert fill.model.config.num_hidden_layers == 1  # generator_layers 0.25 of 2 layers, at least 1
    assert len(fill(f"return the {fill.tokenizer.mask_token} of the list.")) == 5
    g, d = load_file(out / "generator" / "model.safetensors"), load_file(out / "model.safetensors")
    assert torch.equal(g["model.embeddings.tok_embeddings.weight"], d["embeddings.tok_embeddings.weight"])  # encoder: no prefix
    cls = tmp_path / "cls"
    assert 0 <= _fine_tune(out, cls)["eval_accuracy"] <= 1
    assert json.loads((cls / "config.json").read_text())["architectures"] == ["ModernBertForSequenceClassification"]
    # Continuing from the saved folder puts the head back (one update at a negligible learning rate: saved again unchanged).
    more = tmp_path / "more"
    run_cli("run_pretrain.py", [recipe, *EXACT, "--embedding_sharing", "tied", "--train_file", FIXTURES / "text" / "corpus.txt",
                                "--model_name_or_path", out,
                                "--max_seq_length", "64", "--per_device_train_batch_size", "4", "--max_steps", "1", "--save_steps", "0",
                                "--eval_steps", "0", "--learning_rate", "1e-12", "--warmup_steps", "0", "--validation_split_percentage", "10",
                                "--max_eval_batches", "2", "--output_dir", more], env={"OMP_NUM_THREADS": "1"})
    again = load_file(more / "replaced_token_head.safetensors")
    assert all(torch.allclose(again[k], head[k], atol=1e-6) for k in head)


def test_gradient_disentangled_sharing_resumes_exactly_and_saves_the_merged_table(tmp_path):
    """embedding_sharing gdes (pre-LN layout), with the corrective LM term: exact resume with the discriminator's
    delta and corrective head in the checkpoint; the saved discriminator holds E_G + delta and loads as a plain
    ModernBertModel; the generator keeps E_G; the corrective head is saved beside them."""
    from transformers import AutoModel

    recipe = ROOT / "recipes" / "electra" / "tiny-cpu.yaml"
    args = [recipe, *EXACT, "--embedding_sharing", "gdes", "--corrective_weight", "1.0", "--train_file", FIXTURES / "text" / "corpus.txt", "--tokenizer_name", FIXTURES / "text" / "tokenizer",
            "--config_overrides", "hidden_size=64,num_hidden_layers=2,num_attention_heads=2,intermediate_size=128,"
                                  "max_position_embeddings=64,local_attention=64",
            "--max_seq_length", "64", "--per_device_train_batch_size", "4", "--max_steps", "8",
            "--save_steps", "4", "--eval_steps", "0", "--logging_steps", "1", "--warmup_steps", "2", "--learning_rate", "3e-3",
            "--validation_split_percentage", "10", "--max_eval_batches", "2"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_cli("run_pretrain.py", [*args, "--output_dir", full], env={"OMP_NUM_THREADS": "1"})
    shutil.copytree(full, resumed)
    for name in ("model.safetensors", "train_results.json"):
        (resumed / name).unlink()
    shutil.rmtree(resumed / "checkpoint-8")
    run_cli("run_pretrain.py", [*args, "--output_dir", resumed, "--resume_from_checkpoint", "latest"], env={"OMP_NUM_THREADS": "1"})
    assert train_losses(resumed) == train_losses(full)  # bitwise

    state = load_file(full / "checkpoint-8" / "model.safetensors")
    delta = state["discriminator.model.embeddings.tok_embeddings.delta"]
    e_g = load_file(full / "generator" / "model.safetensors")["model.embeddings.tok_embeddings.weight"]
    assert delta.abs().max() > 0  # the discriminator's loss trained its own part
    saved = load_file(full / "model.safetensors")
    assert "embeddings.tok_embeddings.delta" not in saved
    assert torch.equal(saved["embeddings.tok_embeddings.weight"], e_g + delta)
    assert torch.equal(load_file(resumed / "model.safetensors")["embeddings.tok_embeddings.weight"], e_g + delta)
    encoder = AutoModel.from_pretrained(full)
    assert type(encoder).__name__ == "ModernBertModel" and torch.equal(encoder.get_input_embeddings().weight, e_g + delta)
    assert "gradient-disentangled" in (full / "README.md").read_text()
    # The corrective term: a third loss term, logged, its head saved beside the encoder as trained.
    rows = [json.loads(line) for line in (full / "training_log.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss_corrective" in r]
    assert len(train) == 8 and all(r["loss"] == pytest.approx(r["loss_generator"] + r["loss_discriminator"] + r["loss_corrective"])
                                   for r in train)
    head = load_file(full / "corrective_head.safetensors")
    assert set(head) == {"dense.weight", "dense.bias", "norm.weight", "norm.bias", "bias"}
    assert all(torch.equal(head[k], state[f"corrective_head.{k}"]) for k in head)
    assert "corrective LM x 1.0" in (full / "README.md").read_text()
