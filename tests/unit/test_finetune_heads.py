"""Fine-tuning starts task heads fresh when the checkpoint's head belongs to another task.

ModernBERT names its masked-LM head, its token-classification head and its sequence-classification
head all `head`, so `from_pretrained` would load a pretraining head into a classifier by name."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, ModernBertConfig, ModernBertForMaskedLM,
                          ModernBertForSequenceClassification)

from hfssl.finetune.tasks import load_or_init


def _cfg(reuse=False):
    return SimpleNamespace(attn_implementation=None, mixed_precision="no", reuse_pretraining_head=reuse)


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory):
    config = ModernBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=32, local_attention=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                              cls_token_id=1, sep_token_id=2)
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(config)
    with torch.no_grad():
        model.head.norm.weight.mul_(3.0)  # a "trained" head: not what a fresh init gives
    folder = tmp_path_factory.mktemp("mlm")
    model.save_pretrained(folder)
    return folder


def _classifier(folder, reuse):
    config = AutoConfig.from_pretrained(folder, num_labels=4)
    return load_or_init(AutoModelForSequenceClassification, _cfg(reuse), config, True, str(folder))


def test_a_masked_lm_head_is_not_loaded_into_the_classifier(mlm_folder):
    saved = load_file(mlm_folder / "model.safetensors")
    clf = _classifier(mlm_folder, reuse=False)
    assert torch.equal(clf.model.layers[1].attn.Wqkv.weight, saved["model.layers.1.attn.Wqkv.weight"])  # encoder loaded
    assert torch.equal(clf.head.norm.weight, torch.ones(32))  # fresh LayerNorm, not the saved 3.0s
    assert not torch.equal(clf.head.dense.weight, saved["head.dense.weight"])
    kept = _classifier(mlm_folder, reuse=True)
    assert torch.equal(kept.head.norm.weight, saved["head.norm.weight"])
    assert torch.equal(kept.head.dense.weight, saved["head.dense.weight"])


def test_a_classifier_checkpoint_keeps_its_head_and_an_encoder_is_untouched(mlm_folder, tmp_path):
    clf = _classifier(mlm_folder, reuse=True)
    clf.save_pretrained(tmp_path / "clf")
    again = _classifier(tmp_path / "clf", reuse=False)  # same task class: its head is what fine-tuning continues
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), again.state_dict().values()))
    encoder = load_or_init(AutoModel, _cfg(), AutoConfig.from_pretrained(mlm_folder), True, str(mlm_folder))
    saved = load_file(mlm_folder / "model.safetensors")
    assert type(encoder).__name__ == "ModernBertModel"
    assert torch.equal(encoder.embeddings.tok_embeddings.weight, saved["model.embeddings.tok_embeddings.weight"])
    assert isinstance(clf, ModernBertForSequenceClassification)
