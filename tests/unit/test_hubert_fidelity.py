"""HuBERT against fairseq's recipe: Kaldi MFCC targets (dump_mfcc_feature.py), the feature penalty
(loss_weights [10]), k-means with several initializations, patience and empty-cluster re-seeding
(learn_kmeans.py), iteration-2 features of whole utterances, and label_layer 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from hfssl.data.audio.batching import normalize
from hfssl.data.audio.decode import load_audio
from hfssl.data.audio.files import find_audio_files
from hfssl.objectives.hubert.features import align_labels, conv_geometry, kaldi_mfcc_features, mfcc_features, mfcc_geometry
from hfssl.objectives.hubert.kmeans import cluster_usage, fit_kmeans
from hfssl.objectives.hubert.loss import hubert_loss

ROOT = Path(__file__).resolve().parents[2]
SPEECH = ROOT / "tests" / "fixtures" / "speech" / "unlabeled"
TINY_KERNEL, TINY_STRIDE = (10, 8, 4, 4), (5, 4, 4, 4)


def _fairseq_mfcc(wave: np.ndarray) -> torch.Tensor:
    """examples/hubert/simple_kmeans/dump_mfcc_feature.py, MfccFeatureReader.get_feats, written out."""
    x = torch.from_numpy(wave).float().view(1, -1)
    mfccs = torchaudio.compliance.kaldi.mfcc(waveform=x, sample_frequency=16000, use_energy=False).transpose(0, 1)
    deltas = torchaudio.functional.compute_deltas(mfccs)
    ddeltas = torchaudio.functional.compute_deltas(deltas)
    return torch.cat([mfccs, deltas, ddeltas], dim=0).transpose(0, 1).contiguous()


def test_kaldi_mfccs_equal_torchaudio_compliance_kaldi_on_the_fixtures():
    for path in find_audio_files(SPEECH)[::6]:
        wave = load_audio(path, 16000)
        ours = kaldi_mfcc_features(wave)
        assert ours.shape == (1 + (len(wave) - 400) // 160, 39)
        torch.testing.assert_close(ours, _fairseq_mfcc(wave), rtol=0, atol=0)
        # not the torchaudio.transforms.MFCC variant: its coefficients are on another scale
        assert (ours[:, 1:13].std(0) / mfcc_features(wave)[:, 1:13].std(0)).mean() > 2


def _objective(tmp_path, out, files, *extra, recipe="tiny-cpu-iter1.yaml"):
    from hfssl.objectives import load_config
    from hfssl.objectives.hubert.objective import HubertObjective

    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        for f in files:
            (data / Path(f).name).write_bytes(Path(f).read_bytes())
    cfg = load_config([str(ROOT / "recipes" / "hubert" / recipe), "--train_dir", str(data), "--output_dir", str(tmp_path / out),
                       "--num_clusters", "8", "--validation_split_percentage", "0", *extra])
    torch.manual_seed(0)
    return HubertObjective(cfg)


def test_iteration1_targets_are_kaldi_mfcc_kmeans_by_default(tmp_path):
    files = find_audio_files(SPEECH)[:4]
    obj = _objective(tmp_path, "a", files)
    assert obj.cfg.mfcc_type == "kaldi" and obj.kmeans.metadata["mfcc_type"] == "kaldi"
    for i in range(len(files)):
        wave = load_audio(obj.train_dataset.audio.rows[i]["path"], 16000)
        expected = align_labels(obj.kmeans.predict(_fairseq_mfcc(normalize(wave))), mfcc_geometry(16000), len(wave), TINY_KERNEL, TINY_STRIDE)
        np.testing.assert_array_equal(obj.train_dataset[i]["frame_labels"], expected)
    assert obj.kmeans.metadata["n_init"] == obj.cfg.kmeans_inits and obj.cfg.feature_penalty_weight == 10.0


@pytest.mark.parametrize("norm, scale", [("group", 0.1), ("layer", 1.0)])
def test_unset_feature_grad_scale_is_fairseqs_for_the_feature_encoder_layout(tmp_path, norm, scale):
    # hubert_base_librispeech.yaml (group norm): feature_grad_mult 0.1; hubert_large_librivox.yaml (layer norm): 1.0
    obj = _objective(tmp_path, "a", find_audio_files(SPEECH)[:4], "--feature_grad_scale", "none", "--config_overrides",
                     f"feat_extract_norm={norm},do_stable_layer_norm={norm == 'layer'}")
    assert obj.model.hubert.config.feat_extract_norm == norm
    assert obj.model.feature_grad_scale == scale and obj.cfg.feature_grad_scale == scale
    assert obj.model.feature_penalty_weight == 10.0  # fairseq keeps HuBERT's penalty on both layouts


def test_an_unknown_feature_encoder_layout_is_a_config_error():
    from hfssl.errors import ConfigError
    from hfssl.objectives import load_config
    from hfssl.objectives.speech_base import FEATURE_GRAD_SCALE_BY_LAYOUT, resolve_layout_defaults

    cfg = load_config([str(ROOT / "recipes" / "hubert" / "tiny-cpu-iter1.yaml"), "--feature_grad_scale", "none"])
    with pytest.raises(ConfigError, match="feat_extract_norm must be 'group' or 'layer', got 'batch'"):
        resolve_layout_defaults(cfg, "batch", {"feature_grad_scale": FEATURE_GRAD_SCALE_BY_LAYOUT})
    assert cfg.feature_grad_scale is None


def test_feature_penalty_is_added_per_target_and_the_forward_is_hubertmodels():
    from transformers import HubertConfig, HubertModel

    from hfssl.objectives.hubert.model import HubertForMaskedPrediction

    torch.manual_seed(0)
    config = HubertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16, 16, 16),
                          conv_kernel=TINY_KERNEL, conv_stride=TINY_STRIDE, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                          mask_time_prob=0.8, feat_extract_norm="layer", do_stable_layer_norm=True)
    hubert = HubertModel(config)
    model = HubertForMaskedPrediction(hubert, 5, 8, 0.1, feature_grad_scale=0.1, feature_penalty_weight=10.0).eval()
    x = torch.randn(2, 6000, generator=torch.Generator().manual_seed(1))
    x[1, 4000:] = 0
    attention = torch.ones(2, 6000, dtype=torch.long)
    attention[1, 4000:] = 0
    frames = 18  # num_frames(6000); utterance 1 has 12 real frames
    labels = torch.randint(5, (2, frames), generator=torch.Generator().manual_seed(2))
    labels[1, 12:] = -100
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[:, 3:8] = True
    out = model(x, labels, mask, attention_mask=attention)
    with torch.no_grad():
        feats = hubert.feature_extractor(x).transpose(1, 2)  # (B, F, C)
        real = labels >= 0
        penalty = (feats.pow(2).mean(-1) * real).sum() / real.sum()  # fairseq: features.pow(2).mean(), here over real frames
        stock = hubert(x, attention_mask=attention, mask_time_indices=mask).last_hidden_state  # transformers' own forward
        ce = hubert_loss(model.final_proj(stock), model.label_embeddings, labels, mask, 0.1, 1.0, 0.0)["loss_sum"]
    targets = int((mask & real).sum())
    torch.testing.assert_close(out["feature_penalty"], penalty)
    torch.testing.assert_close(out["loss_sum"], ce + 10.0 * penalty * targets)
    model.feature_penalty_weight = 0.0
    torch.testing.assert_close(model(x, labels, mask, attention_mask=attention)["loss_sum"], ce)
    # the penalty's gradient reaches the conv encoder, scaled by feature_grad_scale like the rest
    model.train()
    model.feature_penalty_weight = 10.0
    grads = []
    for scale in (1.0, 0.1):
        model.zero_grad()
        model.feature_grad_scale = scale
        torch.manual_seed(3)  # same dropout and layerdrop draws
        model(x, labels, mask, attention_mask=attention)["loss_sum"].backward()
        grads.append(hubert.feature_extractor.conv_layers[0].conv.weight.grad.clone())
    torch.testing.assert_close(grads[1], 0.1 * grads[0])


def _blobs(n_per=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    return torch.cat([c + torch.randn(n_per, 2, generator=g) for c in centres])


def test_kmeans_reseeds_an_empty_cluster():
    x = _blobs()
    init = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [1000.0, 1000.0]])  # one centre far from every point
    km = fit_kmeans(x, 4, batch_size=200, max_passes=20, seed=0, init_centroids=init)
    assert km.metadata["reseeded_clusters"] >= 1
    usage = cluster_usage(km.predict(x), 4)
    assert usage["clusters_used"] == 4 and usage["histogram"].min() > 150  # the re-seeded centre took the fourth blob
    assert km.centroids.abs().max() < 20 and km.metadata["inertia"] < 2.5  # ~2 = the blobs' own variance


def test_kmeans_keeps_the_initialization_with_the_lowest_inertia(monkeypatch):
    """Of n_init k-means++ draws the one with the lowest inertia on the init sample is the one refined. The draws
    are scripted: a local optimum (one blob split in two, two blobs under one centre), except draw 5, the true centres."""
    from hfssl.objectives.hubert import kmeans as kmeans_module

    x = _blobs(seed=1)
    good = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    split = torch.tensor([[-0.5, 0.0], [0.5, 0.0], [10.0, 0.0], [5.0, 10.0]])
    draws = iter([good if i == 5 else split for i in range(8)])
    monkeypatch.setattr(kmeans_module, "kmeans_plus_plus", lambda *a, **k: next(draws).clone())
    many = fit_kmeans(x, 4, batch_size=100, max_passes=1, seed=5, n_init=8)
    inertias = many.metadata["init_inertias"]
    assert len(inertias) == 8 and many.metadata["chosen_init"] == 5 == int(np.argmin(inertias))
    assert inertias[5] < 3 < min(inertias[:5] + inertias[6:])  # ~2: the blobs' own variance
    # refined from draw 5: one pass ends at the blobs' variance; from any other draw it stays far above it
    assert many.metadata["inertia"] < 2.5
    monkeypatch.setattr(kmeans_module, "kmeans_plus_plus", lambda *a, **k: split.clone())
    assert fit_kmeans(x, 4, batch_size=100, max_passes=1, seed=5, n_init=1).metadata["inertia"] > 5


def test_kmeans_patience_stops_early():
    x = _blobs(seed=2)
    patient = fit_kmeans(x, 4, batch_size=50, max_passes=50, seed=0, n_init=2, max_no_improvement=5)
    full = fit_kmeans(x, 4, batch_size=50, max_passes=50, seed=0, n_init=2, max_no_improvement=0)
    assert patient.metadata["steps"] < full.metadata["steps"] == 50 * 800 // 50


def _save_tiny_label_model(path, conv=16):
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(conv,) * 4,
                          conv_kernel=TINY_KERNEL, conv_stride=TINY_STRIDE, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    HubertModel(config).eval().save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(path)
    return path


def test_iteration2_label_layer_0_and_whole_utterance_features(tmp_path):
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    label_model = tmp_path / "iter1"
    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16, 16, 16),
                          conv_kernel=TINY_KERNEL, conv_stride=TINY_STRIDE, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    full = HubertModel(config).eval()
    full.save_pretrained(label_model)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(label_model)
    files = find_audio_files(SPEECH)[:3]
    obj = _objective(tmp_path, "iter2", files, "--label_model", str(label_model), "--label_layer", "0", recipe="tiny-cpu-iter2.yaml")
    assert obj.kmeans.metadata["label_layer"] == 0 and obj.kmeans.dim == 32
    assert obj.cfg.max_duration_in_seconds < 3.1 < obj.cfg.label_chunk_seconds  # crops are shorter than the files; chunks are not
    for i in range(len(files)):
        wave = load_audio(obj.train_dataset.audio.rows[i]["path"], 16000)
        with torch.no_grad():  # layer 0 = the transformer's input, over the whole file at once
            hidden = full(torch.from_numpy(normalize(wave))[None], output_hidden_states=True).hidden_states[0][0]
        expected = align_labels(obj.kmeans.predict(hidden.half()), conv_geometry(TINY_KERNEL, TINY_STRIDE), len(wave), TINY_KERNEL, TINY_STRIDE)
        np.testing.assert_array_equal(obj.train_dataset[i]["frame_labels"], expected)
    with pytest.raises(Exception, match="outside"):
        _objective(tmp_path, "iter2-bad", files, "--label_model", str(label_model), "--label_layer", "3", recipe="tiny-cpu-iter2.yaml")


def test_iteration2_starts_from_the_label_models_weights_when_asked(tmp_path):
    """tiny-cpu-iter2.yaml sets init_from_label_model (continue from iteration 1); false gives a fresh model."""
    from hfssl.errors import ConfigError
    from transformers import Wav2Vec2FeatureExtractor

    files = find_audio_files(SPEECH)[:3]
    # An "iteration 1" of the recipe's own architecture: a fresh iteration-2 model, saved (its labels come from itself).
    seed_model = tmp_path / "seed"
    fresh = _objective(tmp_path, "seed-run", files, "--label_model", str(_save_tiny_label_model(seed_model, 16)), "--label_layer", "1",
                       "--init_from_label_model", "false", recipe="tiny-cpu-iter2.yaml")
    label_model = tmp_path / "iter1"
    with torch.no_grad():
        for p in fresh.model.hubert.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the values a fresh draw would give
    fresh.model.hubert.save_pretrained(label_model)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(label_model)
    args = ("--label_model", str(label_model), "--label_layer", "1")
    warm = _objective(tmp_path, "warm", files, *args, recipe="tiny-cpu-iter2.yaml")
    cold = _objective(tmp_path, "cold", files, *args, "--init_from_label_model", "false", recipe="tiny-cpu-iter2.yaml")
    assert warm.cfg.initial_weights() == str(label_model) and cold.cfg.initial_weights() is None
    expected = fresh.model.hubert.state_dict()
    for module, equal in ((warm, True), (cold, False)):
        got = module.model.hubert.state_dict()
        assert sorted(got) == sorted(expected)
        assert [k for k in expected if expected[k].dim() > 1 and torch.equal(got[k], expected[k]) != equal] == []
    # The command line's model source replaces the recipe's (init_from_label_model is one of its keys) ...
    other = _objective(tmp_path, "other", files, *args, "--model_name_or_path", str(label_model), recipe="tiny-cpu-iter2.yaml")
    assert other.cfg.init_from_label_model is False and other.cfg.initial_weights() == str(label_model)
    # ... and two starts in one place are refused.
    with pytest.raises(ConfigError, match="keep one of the two"):
        _objective(tmp_path, "both", files, *args, "--init_from_label_model", "true", "--model_name_or_path", str(label_model),
                   recipe="tiny-cpu-iter2.yaml")
    with pytest.raises(ConfigError, match="set iteration 2"):
        _objective(tmp_path, "it1", files, "--init_from_label_model", "true")
