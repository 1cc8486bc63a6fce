"""Shared speech-objective pieces."""

import torch
from safetensors.torch import save_file

from hfssl.objectives.speech_base import matching_head


def test_a_saved_head_is_reused_only_for_the_same_targets(tmp_path):
    head = {"final_proj.weight": torch.arange(6.0).reshape(2, 3)}
    save_file(head, str(tmp_path / "head.safetensors"), metadata={"kmeans_sha1": "abc"})
    state = matching_head(str(tmp_path), "head.safetensors", "kmeans_sha1", "abc")
    torch.testing.assert_close(state["final_proj.weight"], head["final_proj.weight"])
    assert matching_head(str(tmp_path), "head.safetensors", "kmeans_sha1", "other") is None  # other clusters
    assert matching_head(str(tmp_path), "missing.safetensors", "kmeans_sha1", "abc") is None
    assert matching_head(None, "head.safetensors", "kmeans_sha1", "abc") is None  # from scratch


# ----------------------------------------------------------------------------------- bad input before training

import pytest  # noqa: E402
from pathlib import Path  # noqa: E402

from hfssl.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
UNLABELED = ROOT / "tests" / "fixtures" / "speech" / "unlabeled"


def _w2v2_cfg(tmp_path, *args):
    from hfssl.objectives import load_config

    return load_config([str(ROOT / "recipes" / "wav2vec2" / "tiny-cpu.yaml"), "--train_dir", str(UNLABELED),
                        "--output_dir", str(tmp_path), *args])


def test_a_crop_shorter_than_the_receptive_field_is_refused_before_training(tmp_path):
    # 0.01 s = 160 samples < the 400-sample receptive field: zero frames, a reshape traceback at the first batch.
    from hfssl.objectives.wav2vec2.objective import Wav2Vec2Objective

    with pytest.raises(ConfigError, match=r"max_duration_in_seconds 0\.01 crops audio to 160 samples.*400 samples.*"
                                          r"Set max_duration_in_seconds to at least 0\.025"):
        Wav2Vec2Objective(_w2v2_cfg(tmp_path, "--max_duration_in_seconds", "0.01"))


def test_crops_too_short_for_any_masked_span_are_refused_before_training(tmp_path):
    # 0.1 s crops give 4 frames < mask_time_length 10: no utterance is masked, and the run used to die after a few
    # updates with "no targets", naming neither max_duration_in_seconds nor the span length.
    from hfssl.objectives.wav2vec2.objective import Wav2Vec2Objective

    with pytest.raises(ConfigError) as e:
        Wav2Vec2Objective(_w2v2_cfg(tmp_path, "--max_duration_in_seconds", "0.1"))
    msg = str(e.value)
    assert "No utterance gets a masked span (43 of 43" in msg and "gives 4 frames" in msg
    assert "max_duration_in_seconds=0.1" in msg and "mask_time_length=10" in msg and "mask_time_prob=0.65" in msg
    assert "at least 0.205" in msg


@pytest.mark.parametrize("recipe", ["hubert/tiny-cpu-iter1.yaml", "data2vec/speech-tiny-cpu.yaml"])
def test_hubert_and_data2vec_refuse_crops_too_short_for_a_span_before_reading_audio(tmp_path, recipe):
    """Their crops' frame count follows from the conv geometry alone: 0.1 s is 4 frames at 20 ms, fewer than a
    10-frame span (the run used to skip updates until it stopped with "no targets"; HuBERT first fit its k-means)."""
    from hfssl.objectives import build_objective, load_config

    cfg = load_config([str(ROOT / "recipes" / recipe), "--train_dir", str(UNLABELED), "--output_dir", str(tmp_path / "o"),
                       "--max_duration_in_seconds", "0.1", "--mask_time_length", "10"])
    with pytest.raises(ConfigError, match=r"max_duration_in_seconds 0\.1 crops audio to 4 frames, fewer than mask_time_length "
                                          r"10: .* Set max_duration_in_seconds to at least 0\.20\d*,"):  # one window + 9 hops of 20 ms
        build_objective(cfg)
    assert not (tmp_path / "o" / "kmeans.pt").exists()


def test_an_unreadable_model_source_is_a_config_error_naming_its_key(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    from hfssl.objectives.speech_base import load_initial_weights, speech_model_config
    from hfssl.objectives.wav2vec2.config import Wav2Vec2PretrainConfig

    audio = tmp_path / "audio"  # a folder, but of audio: no config.json (was: ValueError: Unrecognized model)
    audio.mkdir()
    cfg = Wav2Vec2PretrainConfig(train_dir=str(UNLABELED), config_name=str(audio), output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=rf"^config_name: could not read a model config from '{audio}'"):
        speech_model_config(cfg, "wav2vec2", Wav2Vec2Config())
    cfg_only = tmp_path / "cfg_only"  # config.json without weights (was: OSError: no file named model.safetensors)
    Wav2Vec2Config().save_pretrained(cfg_only)
    cfg = Wav2Vec2PretrainConfig(train_dir=str(UNLABELED), model_name_or_path=str(cfg_only), output_dir=str(tmp_path / "out"))
    config = speech_model_config(cfg, "wav2vec2", Wav2Vec2Config())
    with pytest.raises(ConfigError, match=rf"^model_name_or_path: could not load Wav2Vec2ForPreTraining weights from '{cfg_only}'"):
        load_initial_weights(Wav2Vec2ForPreTraining, cfg, config)


def test_a_label_model_of_another_type_is_blamed_on_label_model(tmp_path):
    from transformers import HubertConfig, Wav2Vec2Config

    from hfssl.objectives.hubert.config import HubertPretrainConfig
    from hfssl.objectives.speech_base import speech_model_config

    w2v2 = tmp_path / "w2v2"
    Wav2Vec2Config().save_pretrained(w2v2)
    cfg = HubertPretrainConfig(train_dir=str(UNLABELED), iteration=2, label_model=str(w2v2), init_from_label_model=True,
                               output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError) as e:
        speech_model_config(cfg, "hubert", HubertConfig())
    assert str(e.value).startswith(f"label_model '{w2v2}' is a wav2vec2 model") and "model_name_or_path" not in str(e.value)
