"""End-to-end MLM pretraining through the real CLI on a user's text file."""

import json
import shutil

import pytest
import yaml
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from conftest import CORPUS, TINY_MLM, read_log, run_cli, train_losses
from hfssl import hardware


def test_tiny_recipe_on_own_text_file(tiny_mlm):
    losses = list(train_losses(tiny_mlm).values())
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 0.5, losses  # loss falls clearly
    results = json.loads((tiny_mlm / "train_results.json").read_text())
    assert results["steps"] == 60
    assert 1.0 < results["eval_perplexity"] < 1000  # vocab is 1000: better than uniform
    evals = [r for r in read_log(tiny_mlm) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [30, 60]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "hfssl_config.yaml", "training_curves.png"):
        assert (tiny_mlm / name).is_file(), name


def test_output_loads_in_plain_transformers(tiny_mlm):
    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm)
    tok = AutoTokenizer.from_pretrained(tiny_mlm)
    assert model.config.vocab_size == len(tok)  # model sized to the tokenizer trained on the corpus
    fill = pipeline("fill-mask", model=str(tiny_mlm))
    preds = fill(f"Return the {tok.mask_token} of the file.", top_k=3)
    assert len(preds) == 3 and all(p["token_str"] for p in preds)
    assert abs(sum(p["score"] for p in fill(f"the {tok.mask_token}", top_k=len(tok))) - 1) < 1e-3
    card = (tiny_mlm / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "Tokens seen" in card and "eval_perplexity" in card


def test_continued_pretraining_from_local_checkpoint(tiny_mlm, tmp_path):
    out = tmp_path / "continued"
    proc = run_cli("run_pretrain.py", [*TINY_MLM, "--model_name_or_path", tiny_mlm, "--config_overrides", "", "--output_dir", out,
                                       "--max_steps", "10", "--save_steps", "0", "--eval_steps", "0", "--mixed_precision", "auto"])
    first = train_losses(out)[1]
    scratch_first = train_losses(tiny_mlm)[1]
    assert first < scratch_first - 0.5  # starts from the pretrained weights, not from scratch
    bf16, why = hardware.native_bf16()  # auto: bf16 only where this machine multiplies it natively; logged, saved concrete
    assert f"mixed_precision auto -> {'bf16' if bf16 else 'no'}: {why}." in proc.stderr
    assert yaml.safe_load((out / "hfssl_config.yaml").read_text())["mixed_precision"] == ("bf16" if bf16 else "no")
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(tiny_mlm).get_vocab()


def test_refuses_to_overwrite_an_earlier_run(tiny_mlm):
    before = (tiny_mlm / "model.safetensors").read_bytes()
    proc = run_cli("run_pretrain.py", [*TINY_MLM, "--output_dir", tiny_mlm, "--max_steps", "2"], check=False)
    assert proc.returncode == 2
    assert "already holds files" in proc.stderr and "--overwrite_output_dir" in proc.stderr
    assert (tiny_mlm / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--train_file", "missing.txt"], "train_file: file 'missing.txt' does not exist"),
    (["--mlm_probabilty", "0.2"], "Did you mean 'mlm_probability'"),
    (["--mixed_precision", "fp8"], "choose one of: no, fp16, bf16"),
    (["--model_type", "nosuchmodel"], "model_type 'nosuchmodel' is unknown"),
    (["--text_column_name", "body"], "text_column_name 'body' is not a column"),
])
def test_bad_input_fails_before_training(tmp_path, args, message):
    proc = run_cli("run_pretrain.py", [*TINY_MLM, "--output_dir", tmp_path / "o", "--max_steps", "2", *args], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert not (tmp_path / "o" / "training_log.jsonl").exists()


def test_empty_corpus_is_rejected(tmp_path):
    empty = tmp_path / "blank.txt"
    empty.write_text("\n   \n\n")
    proc = run_cli("run_pretrain.py", [*TINY_MLM, "--train_file", empty, "--output_dir", tmp_path / "o", "--max_steps", "2"], check=False)
    assert proc.returncode == 2
    assert "no non-blank text" in proc.stderr


def test_push_to_hub_uploads_the_model_folder(tiny_mlm):
    from unittest import mock

    from huggingface_hub import RepoUrl

    from hfssl.hub import push_to_hub

    with mock.patch("huggingface_hub.HfApi.create_repo", return_value=RepoUrl("https://huggingface.co/me/tiny")) as create, \
         mock.patch("huggingface_hub.HfApi.upload_folder", return_value="commit-url") as upload:
        assert push_to_hub(str(tiny_mlm), "me/tiny") == "commit-url"
    create.assert_called_once()
    files = upload.call_args.kwargs["allow_patterns"]
    for needed in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert needed in files
    assert not any(f.startswith(("checkpoint-", "tokenizer/", ".tmp")) for f in files), files
    assert upload.call_args.kwargs["repo_id"] == "me/tiny"


def test_streaming_corpus(tmp_path):
    # A short stream (50 documents in 2 shards, 4 updates per pass) so that 12 updates read it three times.
    lines = CORPUS.read_text().splitlines(keepends=True)[:50]
    for s in range(2):
        (tmp_path / f"short-{s}.txt").write_text("".join(lines[s * 25 : (s + 1) * 25]))
    args = [*TINY_MLM, "--train_file", tmp_path / "short-*.txt", "--tokenizer_name", CORPUS.parent / "tokenizer", "--streaming", "true",
            "--validation_file", CORPUS, "--max_steps", "12", "--save_steps", "6", "--eval_steps", "0"]
    out = tmp_path / "stream"
    run_cli("run_pretrain.py", [*args, "--output_dir", out])
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, 13))
    epochs = [r["epoch"] for r in read_log(out) if "loss" in r]
    assert epochs == [0] * 4 + [1] * 4 + [2] * 4  # the stream was read from its start again
    assert json.loads((out / "train_results.json").read_text())["eval_loss"] > 0
    # Resuming a stream from step 6 (inside a later pass) seeks to the saved shard and position and continues exactly.
    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(out / "checkpoint-6", again / "checkpoint-6")
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["epoch"] >= 1
    position = state["stream"][0]["documents"]["examples_iterable"]
    proc = run_cli("run_pretrain.py", [*args, "--output_dir", again, "--resume_from_checkpoint", "latest"])
    assert (f"Resuming the stream at shard {position['shard_idx']} of this process's shards, "
            f"document {position['shard_example_idx']} of it") in proc.stderr
    assert train_losses(again) == {k: v for k, v in losses.items() if k > 6}


def test_compile_auto_falls_back_to_eager_when_the_compiler_fails(tmp_path):
    """torch_compile auto promises "compiled where kernels can be built": a compiler that is on the PATH but
    fails leaves the run in eager mode with torch's warning (an explicit true keeps torch's error)."""
    broken = tmp_path / "broken-g++"
    broken.write_text("#!/bin/sh\necho broken >&2\nexit 1\n")
    broken.chmod(0o755)
    env = {"CXX": str(broken), "OMP_NUM_THREADS": "1"}
    args = [*TINY_MLM, "--max_steps", "3", "--eval_steps", "0", "--save_steps", "0"]
    proc = run_cli("run_pretrain.py", [*args, "--output_dir", tmp_path / "auto", "--torch_compile", "auto"], env=env)
    assert f"torch_compile auto -> true: CPU kernels built with {broken}." in proc.stderr
    assert "InvalidCxxCompiler" in proc.stderr
    assert sorted(train_losses(tmp_path / "auto")) == [1, 2, 3]
