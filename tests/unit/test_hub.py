"""Tests for hfssl.hub: model card metadata, the upload file list, push_to_hub with HfApi mocked."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import yaml

from hfssl.objectives.mlm.config import MLMConfig
from hfssl.hub import files_to_upload, push_to_hub, write_model_card

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs.",
    "How vexingly quick daft zebras jump.",
] * 10

MODEL_FILES = ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A real output folder: tiny BertForMaskedLM + trained tokenizer + model card, plus the run's
    leftovers (checkpoints, a half-written checkpoint, temp files, tensorboard logs)."""
    from transformers import BertConfig, BertForMaskedLM

    from hfssl.data.text.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("run")
    tok = train_tokenizer(SENTENCES, "wordpiece", 200)
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    write_model_card(str(out), objective="Masked language modeling", pipeline_tag="fill-mask",
                     summary={"steps": 12, "eval_loss": 3.14159, "eval_accuracy": 0.25, "train_loss": 4.0},
                     details={"Corpus": "tiny"}, datasets=["wikitext"], config=MLMConfig(max_steps=12),
                     tags=["bert"])
    for rel in ("checkpoint-10/model.safetensors", "checkpoint-10/hfssl_checkpoint.json",
                "checkpoint-20/optimizer.bin", ".tmp-checkpoint-30/model.safetensors",
                "abandoned-checkpoint-40-20261205-120000/optimizer.bin",
                "config.json.tmp", "runs/events.out.tfevents.1", "runs/sub/events.out.tfevents.2",
                ".tmp-final/run/model.safetensors", ".hfssl.lock", "hfssl_run.json"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    return out


def _expected(model_dir: Path) -> list[str]:
    extra = [n for n in ("special_tokens_map.json",) if (model_dir / n).is_file()]
    return sorted(MODEL_FILES + extra)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_model_card_has_parsable_metadata(model_dir):
    text = (model_dir / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["pipeline_tag"] == "fill-mask"
    assert meta["library_name"] == "transformers"
    assert meta["datasets"] == ["wikitext"]
    assert meta["tags"] == ["hfssl", "bert"]
    assert "| eval_loss | 3.1416 |" in text and "| eval_accuracy | 0.2500 |" in text
    assert "train_loss" not in text  # only eval metrics are reported
    assert "Updates: 12." in text and "| Corpus | tiny |" in text
    recipe = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(recipe)["max_steps"] == 12


def test_model_card_links_nowhere_it_cannot_name(model_dir):
    assert "https://github.com/)" not in (model_dir / "README.md").read_text()


def test_model_card_minimal(tmp_path):
    path = write_model_card(str(tmp_path), objective="wav2vec 2.0", pipeline_tag="feature-extraction",
                            summary={}, details={})
    assert path == tmp_path / "README.md"
    meta = _front_matter(path.read_text())
    assert meta == {"library_name": "transformers", "pipeline_tag": "feature-extraction", "tags": ["hfssl"]}
    assert "Final evaluation" not in path.read_text()


def test_files_to_upload_excludes_checkpoints_and_temp_files(model_dir):
    files = files_to_upload(str(model_dir))
    assert files == _expected(model_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert name in files
    assert not any(f.startswith(("checkpoint-", "abandoned-checkpoint-", ".tmp-checkpoint-", "runs")) or f.endswith(".tmp")
                   for f in files)


def test_uploaded_files_load_back(model_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.vocab_size == len(tok) and tok.mask_token == "[MASK]"


def _repo_url(repo_id):
    """What HfApi.create_repo returns: a URL string that also carries the full repo id."""
    from huggingface_hub import RepoUrl

    return RepoUrl(f"https://huggingface.co/{repo_id}")


def test_push_to_hub_uploads_exactly_the_model_files(model_dir):
    with mock.patch("huggingface_hub.HfApi.create_repo", return_value=_repo_url("me/tiny")) as create, \
         mock.patch("huggingface_hub.HfApi.upload_folder", return_value="https://hf.co/me/tiny/commit/abc") as upload:
        result = push_to_hub(str(model_dir), repo_id="me/tiny", private=True)
    assert result == "https://hf.co/me/tiny/commit/abc"
    create.assert_called_once()
    assert create.call_args.args[0] == "me/tiny"
    assert create.call_args.kwargs["private"] is True and create.call_args.kwargs["exist_ok"] is True
    upload.assert_called_once()
    kwargs = upload.call_args.kwargs
    assert kwargs["repo_id"] == "me/tiny"
    assert Path(kwargs["folder_path"]) == model_dir
    assert sorted(kwargs["allow_patterns"]) == _expected(model_dir)


def test_push_to_hub_defaults_repo_to_folder_name(model_dir):
    """A bare name is created under the user's account; the upload must then name that account too (the Hub
    returns the full id from create_repo), or it targets a top-level repo that is not the user's."""
    created = _repo_url(f"someone/{model_dir.name}")
    with mock.patch("huggingface_hub.HfApi.create_repo", return_value=created) as create, \
            mock.patch("huggingface_hub.HfApi.upload_folder") as upload:
        push_to_hub(str(model_dir))
    assert create.call_args.args[0] == model_dir.name
    assert upload.call_args.kwargs["repo_id"] == f"someone/{model_dir.name}"


def test_push_to_hub_failures_are_found_before_training(tmp_path, monkeypatch, capsys):
    """A run that asks to push is checked for a valid repository id, a reachable Hub and a token before it trains:
    otherwise hours of training end in an upload error."""
    import huggingface_hub
    from huggingface_hub import constants

    from hfssl.errors import ConfigError
    from hfssl.hub import check_push_to_hub
    from hfssl.pretrain import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match=r"hub_model_id 'me/not valid' is not a valid repository id"):
        check_push_to_hub(str(tmp_path / "out"), "me/not valid")
    with pytest.raises(ConfigError, match=r"hub_model_id \(unset, so output_dir's folder name\) 'my run'"):
        check_push_to_hub(str(tmp_path / "my run"))
    with pytest.raises(ConfigError, match="run `hf auth login` or set HF_TOKEN"):
        check_push_to_hub(str(tmp_path / "out"), "me/tiny")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_xxx")
    assert check_push_to_hub(str(tmp_path / "out"), "me/tiny") == "me/tiny"
    assert check_push_to_hub(str(tmp_path / "my-run")) == "my-run"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        check_push_to_hub(str(tmp_path / "out"), "me/tiny")
    # through run_pretrain.py: exit 2 with the message, before the output folder exists
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    corpus = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "corpus.txt"
    out = tmp_path / "never-made"
    assert main(["--train_file", str(corpus), "--output_dir", str(out), "--push_to_hub", "true"]) == 2
    assert "hf auth login" in capsys.readouterr().err and not out.exists()
    from hfssl.finetune.run import main as finetune_main  # and through run_finetune.py

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "finetune" / "text-classification-tiny-cpu.yaml"
    (tmp_path / "no-model").mkdir()  # never read: the push check comes first
    assert finetune_main([str(recipe), "--model_name_or_path", str(tmp_path / "no-model"), "--output_dir", str(out),
                          "--push_to_hub", "true"]) == 2
    assert "hf auth login" in capsys.readouterr().err and not out.exists()
