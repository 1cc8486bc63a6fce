"""attn_implementation: each kernel gives eager's loss on the same batch (sdpa on the CPU, and on a CUDA GPU in
bf16; flash_attention_2 where a CUDA GPU and flash-attn exist), the default is the fastest available one, and
bad requests fail at load. Imports nothing that needs `datasets` or `soundfile` at module level, so the kernel
tests run on a GPU machine that lacks them."""

import logging

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2ForPreTraining

from conftest import CORPUS, ROOT
from hfssl import attention
from hfssl.collators import MLMCollator
from hfssl.collators.speech import AudioPretrainingCollator
from hfssl.config import load_config as load_any
from hfssl.errors import ConfigError
from hfssl.finetune.config import FinetuneConfig
from hfssl.objectives import load_config
from hfssl.objectives.mlm.loss import SparseMaskedLM
from hfssl.objectives.wav2vec2.model import Wav2Vec2Pretraining

CUDA = torch.cuda.is_available()
FLASH = CUDA and attention.flash_attention_installed()
IMPLEMENTATIONS = [
    "sdpa",
    pytest.param("sdpa-cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run on the GPU machine)")),
    pytest.param("flash_attention_2", marks=pytest.mark.skipif(
        not FLASH, reason="flash_attention_2 needs a CUDA GPU and the flash-attn package (run on the GPU machine)"))]
UNLABELED = ROOT / "tests" / "fixtures" / "speech" / "unlabeled"


def _device_and_precision(case):
    """(kernel, device, autocast, tolerance): on CUDA both the kernel and eager run under bf16 autocast, at bf16 tolerance."""
    if case in ("flash_attention_2", "sdpa-cuda"):
        return case.removesuffix("-cuda"), torch.device("cuda"), torch.autocast("cuda", dtype=torch.bfloat16), 2e-2
    return case, torch.device("cpu"), torch.autocast("cpu", enabled=False), 1e-5


def _mlm_loss(model_type, implementation, device, autocast):
    config = AutoConfig.for_model(model_type, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                  vocab_size=200, max_position_embeddings=72, pad_token_id=1)
    torch.manual_seed(0)
    mlm = AutoModelForMaskedLM.from_config(config).to(device).eval()
    attention.use_attn_implementation(mlm, implementation, "bf16" if device.type == "cuda" else "no")
    g = torch.Generator().manual_seed(0)
    examples = [{"input_ids": [2] + torch.randint(5, 200, (n,), generator=g).tolist() + [3]} for n in (60, 13, 35, 7)]
    collator = MLMCollator(1, 4, torch.tensor([0, 1, 2, 3, 4]), torch.arange(5, 200), mlm_probability=0.3)
    batch = {k: v.to(device) for k, v in collator(examples, seed=0).items() if isinstance(v, torch.Tensor)}
    with torch.no_grad(), autocast:
        return SparseMaskedLM(mlm)(**batch)["loss_sum"].item()


def _speech_batch(device, layer_norm):
    kernel, stride = (10, 3, 3), (5, 2, 2)
    collator = AudioPretrainingCollator(kernel, stride, max_samples=4000, do_normalize=True, return_attention_mask=layer_norm,
                                        mask_prob=0.65, mask_length=5, min_masks=2, num_negatives=10)
    rng = np.random.default_rng(0)
    batch = collator([{"input_values": rng.standard_normal(n).astype(np.float32)} for n in (4000, 2500, 3100)], seed=0)
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}, kernel, stride


def _wav2vec2_loss(implementation, device, autocast):
    config = Wav2Vec2Config(conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                            num_codevector_groups=2, num_codevectors_per_group=16, codevector_dim=32, proj_codevector_dim=32,
                            num_negatives=10, feat_extract_norm="layer", do_stable_layer_norm=True)
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(config)
    attention.use_attn_implementation(model, implementation, "bf16" if device.type == "cuda" else "no")
    batch, _, _ = _speech_batch(device, layer_norm=True)
    keys = ("input_values", "mask_time_indices", "sampled_negative_indices", "attention_mask")
    with torch.no_grad(), autocast:
        return Wav2Vec2Pretraining(model).to(device).eval()(**{k: batch[k] for k in keys})["loss_sum"].item()


def _hubert_hidden_sum(implementation, device, autocast):
    config = HubertConfig(conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                          feat_extract_norm="layer", do_stable_layer_norm=True)
    torch.manual_seed(0)
    model = HubertModel(config)
    attention.use_attn_implementation(model, implementation, "bf16" if device.type == "cuda" else "no")
    batch, _, _ = _speech_batch(device, layer_norm=True)
    with torch.no_grad(), autocast:
        hidden = model.to(device).eval()(batch["input_values"], attention_mask=batch["attention_mask"],
                                         mask_time_indices=batch["mask_time_indices"]).last_hidden_state
    return hidden.float().abs().sum().item()


@pytest.mark.parametrize("case", IMPLEMENTATIONS)
@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_text_kernel_gives_eagers_loss(model_type, case):
    implementation, device, autocast, tolerance = _device_and_precision(case)
    expected = _mlm_loss(model_type, "eager", device, autocast)
    assert _mlm_loss(model_type, implementation, device, autocast) == pytest.approx(expected, rel=tolerance)


@pytest.mark.parametrize("case", IMPLEMENTATIONS)
def test_wav2vec2_kernel_gives_eagers_loss(case):
    implementation, device, autocast, tolerance = _device_and_precision(case)
    expected = _wav2vec2_loss("eager", device, autocast)
    assert _wav2vec2_loss(implementation, device, autocast) == pytest.approx(expected, rel=tolerance)


@pytest.mark.parametrize("case", IMPLEMENTATIONS)
def test_hubert_kernel_gives_eagers_hidden_states(case):
    implementation, device, autocast, tolerance = _device_and_precision(case)
    expected = _hubert_hidden_sum("eager", device, autocast)
    assert _hubert_hidden_sum(implementation, device, autocast) == pytest.approx(expected, rel=tolerance)


def test_default_is_the_fastest_available_and_logged(caplog):
    model = AutoModelForMaskedLM.from_config(AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                                  intermediate_size=64, vocab_size=100))
    with caplog.at_level(logging.INFO, logger="hfssl.attention"):
        chosen = attention.use_attn_implementation(model, None, "bf16")
    expected = "flash_attention_2" if FLASH else "sdpa"
    assert chosen == expected == model.config._attn_implementation
    assert f"Attention of the model (BertForMaskedLM): {expected} (fastest available" in caplog.text
    assert attention.use_attn_implementation(model, "eager", "no") == "eager"


def test_objective_builds_its_model_with_the_requested_kernel(tmp_path):
    pytest.importorskip("datasets", reason="the MLM objective reads its corpus with datasets")
    from hfssl.objectives.mlm.objective import MLMObjective

    cfg = load_config([str(ROOT / "recipes/mlm/tiny-cpu.yaml"), "--train_file", str(CORPUS), "--output_dir", str(tmp_path),
                       "--model_type", "bert",
                       "--tokenizer_name", str(ROOT / "tests/fixtures/text/tokenizer"), "--max_seq_length", "32",
                       "--config_overrides", "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
                       "--attn_implementation", "eager", "--line_by_line", "true"])
    objective = MLMObjective(cfg)
    assert objective.model.mlm.config._attn_implementation == "eager"
    assert objective.collator.packing is not None  # line_by_line BERT: padding-free by default


@pytest.mark.skipif(FLASH, reason="flash_attention_2 is usable on this machine")
def test_flash_attention_request_fails_at_load_where_it_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="attn_implementation flash_attention_2"):
        load_config(["--objective", "mlm", "--attn_implementation", "flash_attention_2", "--mixed_precision", "bf16"])
    with pytest.raises(ConfigError, match="attn_implementation flash_attention_2"):
        load_config(["--objective", "wav2vec2", "--train_dir", str(UNLABELED), "--attn_implementation", "flash_attention_2"])
    with pytest.raises(ConfigError, match="attn_implementation flash_attention_2"):
        load_any(["--config_name", "x", "--attn_implementation", "flash_attention_2"], {"finetune": FinetuneConfig}, "finetune")
    with pytest.raises(ConfigError, match="attn_implementation: 'flash' is not allowed"):
        load_config(["--objective", "mlm", "--attn_implementation", "flash"])


def test_padding_free_needs_line_by_line():
    with pytest.raises(ConfigError, match="padding_free packs line_by_line examples"):
        load_config(["--objective", "mlm", "--padding_free", "true"])
