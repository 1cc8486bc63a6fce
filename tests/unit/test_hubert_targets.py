"""Tests for HuBERT's targets (MFCC, k-means, frame alignment, layer features) and the HuBERT loss."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from hfssl.data.audio.decode import load_audio
from hfssl.data.audio.files import find_audio_files
from hfssl.data.audio.geometry import num_frames
from hfssl.objectives.hubert.features import (
    align_labels,
    conv_geometry,
    hubert_layer_features,
    label_frame_index,
    mfcc_features,
    mfcc_geometry,
    truncate_encoder,
)
from hfssl.objectives.hubert.kmeans import KMeans, cluster_usage, fit_kmeans, kmeans_plus_plus
from hfssl.objectives.hubert.loss import count_targets, hubert_loss

SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech" / "unlabeled"
BASE_KERNEL, BASE_STRIDE = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
TINY_KERNEL, TINY_STRIDE = (10, 8, 4, 4), (5, 4, 4, 4)


# ----------------------------------------------------------------------------------- MFCC


def test_mfcc_shape_and_frame_rate():
    wave = load_audio(find_audio_files(SPEECH)[0], 16000)
    feats = mfcc_features(wave, 16000)
    assert feats.dtype == torch.float32
    assert feats.shape == (1 + (len(wave) - 400) // 160, 39)
    assert abs(feats.shape[0] / (len(wave) / 16000) - 100) < 2  # ~100 frames per second
    assert torch.isfinite(feats).all()
    assert mfcc_features(np.zeros(16000, np.float32)).shape == (98, 39)
    assert mfcc_features(np.ones(100, np.float32)).shape == (1, 39)  # shorter than a window: one frame


def test_mfcc_deltas_are_torchaudio_compute_deltas():
    wave = load_audio(find_audio_files(SPEECH)[3], 16000)
    feats = mfcc_features(wave).T  # (39, T)
    static, delta, ddelta = feats[:13], feats[13:26], feats[26:]
    deltas = torchaudio.transforms.ComputeDeltas(win_length=5)
    torch.testing.assert_close(delta, deltas(static))
    torch.testing.assert_close(ddelta, deltas(deltas(static)))
    # Independent check of the regression formula d_t = sum_n n (c_{t+n} - c_{t-n}) / 10, edges replicated.
    padded = torch.cat([static[:, :1]] * 2 + [static] + [static[:, -1:]] * 2, dim=1)
    t = static.shape[1]
    by_hand = sum(n * (padded[:, 2 + n : 2 + n + t] - padded[:, 2 - n : 2 - n + t]) for n in (1, 2)) / 10
    torch.testing.assert_close(delta, by_hand, rtol=1e-4, atol=1e-4)
    assert delta.abs().mean() > 0.05  # not trivially zero


def test_mfcc_static_part_matches_torchaudio_mfcc():
    wave = torch.randn(8000, generator=torch.Generator().manual_seed(0))
    ref = torchaudio.transforms.MFCC(16000, n_mfcc=13, log_mels=True, melkwargs={
        "n_fft": 400, "win_length": 400, "hop_length": 160, "n_mels": 23, "f_min": 20.0, "center": False})(wave)
    torch.testing.assert_close(mfcc_features(wave)[:, :13], ref.T)


# ----------------------------------------------------------------------------------- k-means


def _blobs(n_per=400, k=6, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 20
    x = torch.cat([c + torch.randn(n_per, dim, generator=g) for c in centres])
    y = torch.arange(k).repeat_interleave(n_per)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], y[perm], centres


def _purity(pred, truth, k):
    table = torch.zeros(k, k, dtype=torch.long)
    table.index_put_((pred, truth), torch.ones_like(pred), accumulate=True)
    return (table.max(1).values.sum() / len(pred)).item(), (table.max(0).values.sum() / len(pred)).item()


def test_kmeans_recovers_separated_blobs():
    x, y, centres = _blobs()
    km = fit_kmeans(x, 6, batch_size=256, max_passes=20, seed=3)
    pred = km.predict(x)
    purity, inverse_purity = _purity(pred, y, 6)
    assert purity == 1.0 and inverse_purity == 1.0  # one cluster per blob, one blob per cluster
    # every true centre has a fitted centroid within the blob's noise (std 1 per dim)
    d = torch.cdist(centres, km.centroids)
    assert d.min(1).values.max() < 1.0
    assert km.metadata["inertia"] < 8 * 1.5  # ~ dim * noise variance
    usage = cluster_usage(pred, 6)
    assert usage["clusters_used"] == 6 and usage["histogram"].tolist() == [400] * 6
    assert usage["normalized_entropy"] == pytest.approx(1.0)


def test_kmeans_plus_plus_spreads_over_blobs():
    x, y, _ = _blobs(n_per=100, k=5)
    c = kmeans_plus_plus(x, 5, torch.Generator().manual_seed(0))
    nearest = torch.cdist(c, x).argmin(1)
    assert sorted(y[nearest].tolist()) == [0, 1, 2, 3, 4]


def test_kmeans_seeded_reproducible_and_save_load(tmp_path):
    x, _, _ = _blobs(n_per=100, k=8, dim=4, seed=1)
    a = fit_kmeans(x, 8, batch_size=64, max_passes=5, seed=7, metadata={"features": "test"})
    b = fit_kmeans(x, 8, batch_size=64, max_passes=5, seed=7)
    c = fit_kmeans(x, 8, batch_size=64, max_passes=5, seed=8)
    assert torch.equal(a.centroids, b.centroids)
    assert not torch.equal(a.centroids, c.centroids)
    a.save(tmp_path / "kmeans.pt")
    loaded = KMeans.load(tmp_path)  # a folder means folder/kmeans.pt
    assert torch.equal(loaded.centroids, a.centroids)
    assert loaded.metadata == a.metadata and loaded.metadata["features"] == "test"
    assert torch.equal(loaded.predict(x), a.predict(x))
    assert loaded.fingerprint() == a.metadata["centroids_sha1"]
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an hfssl k-means"):
        KMeans.load(tmp_path / "other.pt")


def test_kmeans_predict_is_nearest_centroid():
    km = KMeans(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    pts = torch.tensor([[1.0, 1.0], [9.0, -1.0], [-1.0, 7.0], [6.0, 0.0]])
    assert km.predict(pts).tolist() == [0, 1, 2, 1]
    with pytest.raises(ValueError):
        fit_kmeans(torch.zeros(3, 2), 4)


def test_cluster_usage_counts_and_entropy():
    u = cluster_usage(np.array([0, 0, 1, 3, -100]), 4)
    assert u["histogram"].tolist() == [2, 1, 0, 1] and u["clusters_used"] == 3
    assert u["entropy_bits"] == pytest.approx(1.5)
    assert u["largest_cluster_fraction"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("n", [400, 401, 719, 720, 16000, 16319, 16320, 16399, 16400, 48123])
@pytest.mark.parametrize("geometry", [(BASE_KERNEL, BASE_STRIDE), (TINY_KERNEL, TINY_STRIDE)])
def test_aligned_label_count_equals_model_frames(n, geometry):
    kernel, stride = geometry
    mfcc_frames = 1 + (n - 400) // 160
    labels = np.arange(mfcc_frames)
    aligned = align_labels(labels, mfcc_geometry(16000), n, kernel, stride)
    assert aligned.shape == (num_frames(n, kernel, stride),)
    assert aligned.dtype == np.int64


def test_base_model_frame_i_takes_mfcc_frame_2i():
    n = 16000 * 3 + 123
    labels = np.arange(1 + (n - 400) // 160)
    aligned = align_labels(labels, mfcc_geometry(16000), n, BASE_KERNEL, BASE_STRIDE)
    np.testing.assert_array_equal(aligned, 2 * np.arange(len(aligned)))
    assert conv_geometry(BASE_KERNEL, BASE_STRIDE) == (400, 320)


@pytest.mark.parametrize("model_geom,label_geom", [((345, 320), (400, 160)), ((400, 320), (400, 160)),
                                                     ((40, 20), (400, 160)), ((400, 320), (345, 320)), ((400, 320), (400, 320))])
def test_label_frame_is_the_one_with_nearest_centre(model_geom, label_geom):
    f, t = 300, 2000
    idx = label_frame_index(f, model_geom, label_geom, t)
    centre_m = np.arange(f) * model_geom[1] + model_geom[0] / 2
    centre_l = np.arange(t) * label_geom[1] + label_geom[0] / 2
    dist = np.abs(centre_m[:, None] - centre_l[None, :])
    # brute force: nearest centre, ties to the later frame
    brute = dist.shape[1] - 1 - np.argmin(dist[:, ::-1], axis=1)
    np.testing.assert_array_equal(idx, brute)
    inside = (centre_m >= centre_l[0]) & (centre_m <= centre_l[-1])  # elsewhere: clipped to the first/last frame
    assert inside.sum() > 100
    assert (np.abs(centre_m - centre_l[idx])[inside] <= label_geom[1] / 2).all()
    assert (idx[centre_m < centre_l[0]] == 0).all()


def test_alignment_clips_to_existing_label_frames_and_handles_no_labels():
    idx = label_frame_index(10, (400, 320), (400, 160), 5)
    assert idx.max() == 4 and idx.min() == 0
    assert (align_labels(np.zeros(0), (400, 160), 16000, BASE_KERNEL, BASE_STRIDE) == -100).all()
    # same geometry (iteration-2 labels from a model with the same encoder) -> identity
    same = align_labels(np.arange(49), conv_geometry(BASE_KERNEL, BASE_STRIDE), 16000, BASE_KERNEL, BASE_STRIDE)
    np.testing.assert_array_equal(same, np.arange(49))


# ----------------------------------------------------------------------------------- layer features


def _tiny_hubert(layers=3):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16, 16, 16), conv_kernel=TINY_KERNEL, conv_stride=TINY_STRIDE,
                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, mask_time_prob=0.8)
    return HubertModel(cfg).eval()


def test_layer_features_match_hidden_states_and_truncation():
    model = _tiny_hubert()
    wave = torch.randn(9000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(wave[None], output_hidden_states=True).hidden_states
    feats = hubert_layer_features(model, wave, 2)
    assert feats.shape == (num_frames(9000, TINY_KERNEL, TINY_STRIDE), 32)
    torch.testing.assert_close(feats, ref[2][0])
    truncated = truncate_encoder(_tiny_hubert(), 2)
    assert len(truncated.encoder.layers) == 2
    torch.testing.assert_close(hubert_layer_features(truncated, wave, 2), ref[2][0])
    with pytest.raises(ValueError, match="outside"):
        truncate_encoder(_tiny_hubert(), 4)


def test_chunked_layer_features_keep_exact_frame_count():
    model = _tiny_hubert(layers=1)
    wave = torch.randn(20011, generator=torch.Generator().manual_seed(2))
    full = hubert_layer_features(model, wave, 1)
    chunked = hubert_layer_features(model, wave, 1, chunk_samples=6000)
    assert chunked.shape == full.shape == (num_frames(20011, TINY_KERNEL, TINY_STRIDE), 32)
    # each chunk covers whole conv frames: the first chunk's frames are those of the model run on that chunk alone
    per_chunk = (6000 - 345) // 320 + 1
    first = hubert_layer_features(model, wave[: (per_chunk - 1) * 320 + 345], 1)
    assert first.shape[0] == per_chunk
    torch.testing.assert_close(chunked[:per_chunk], first)
    assert not torch.allclose(chunked, full)  # the transformer context is limited to the chunk


# ----------------------------------------------------------------------------------- loss


def _loss_inputs(seed=0, b=2, f=7, d=5, k=4):
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(b, f, d, generator=g, requires_grad=True)
    emb = torch.randn(k, d, generator=g, requires_grad=True)
    labels = torch.randint(k, (b, f), generator=g)
    labels[1, -2:] = -100  # padding
    mask = torch.zeros(b, f, dtype=torch.bool)
    mask[0, 1:4] = True
    mask[1, 2:5] = True
    return proj, emb, labels, mask


def test_loss_equals_hand_computed_value():
    proj = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]])  # (1, 3, 2)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # clusters along the axes
    labels = torch.tensor([[0, 0, 1]])
    mask = torch.tensor([[True, True, False]])
    out = hubert_loss(proj, emb, labels, mask, temperature=0.5, masked_weight=1.0, unmasked_weight=0.0)
    # frame 0: cos = (1, 0) -> logits (2, 0), label 0; frame 1: cos = (0, 1) -> logits (0, 2), label 0
    expected = -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.exp(2)))
    assert out["loss_sum"].item() == pytest.approx(expected, rel=1e-6)
    assert out["masked_correct"].item() == 1 and out["masked_count"].item() == 2
    # frame 2 (unmasked): cos = (0.6, 0.8) -> logits (1.2, 1.6), label 1
    unmasked = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    both = hubert_loss(proj, emb, labels, mask, temperature=0.5, masked_weight=2.0, unmasked_weight=0.5)
    assert both["loss_sum"].item() == pytest.approx(2 * expected + 0.5 * unmasked, rel=1e-6)
    assert both["unmasked_correct"].item() == 1 and both["unmasked_count"].item() == 1


def test_unmasked_weight_zero_gradients_ignore_unmasked_labels():
    proj, emb, labels, mask = _loss_inputs()
    grads = []
    for change in (False, True):
        y = labels.clone()
        if change:  # new labels on unmasked real frames only
            unmasked = ~mask & (y >= 0)
            y[unmasked] = (y[unmasked] + 1) % 4
        out = hubert_loss(proj, emb, y, mask, temperature=0.1, masked_weight=1.0, unmasked_weight=0.0)
        g = torch.autograd.grad(out["loss_sum"], (proj, emb))
        grads.append(g)
        assert out["unmasked_count"].item() == int((~mask & (labels >= 0)).sum())  # still measured
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert (grads[0][0][~mask] == 0).all() and grads[0][0][mask].abs().sum() > 0
    # with an unmasked weight the same change does move the gradients
    outs = [hubert_loss(proj, emb, y, mask, 0.1, 1.0, 1.0)["loss_sum"] for y in (labels, (labels + 1) % 4 * (labels >= 0) + -100 * (labels < 0))]
    ga, gb = (torch.autograd.grad(o, proj)[0] for o in outs)
    assert not torch.allclose(ga[~mask], gb[~mask])


def test_padding_frames_carry_no_loss_and_count_targets_rule():
    proj, emb, labels, mask = _loss_inputs()
    mask[1, -1] = True  # a mask bit on a padded frame is ignored
    out = hubert_loss(proj, emb, labels, mask, 0.1, 1.0, 1.0)
    g = torch.autograd.grad(out["loss_sum"], proj)[0]
    assert (g[1, -2:] == 0).all()
    real = labels >= 0
    assert count_targets(labels, mask, 1.0, 0.0) == int((mask & real).sum()) == 6
    assert count_targets(labels, mask, 1.0, 0.5) == int(real.sum()) == 12
    assert count_targets(labels, mask, 0.0, 1.0) == int((~mask & real).sum())


# ----------------------------------------------------------------------------------- objective (no training)


def _objective(tmp_path, out, files, *extra):
    from hfssl.objectives import load_config
    from hfssl.objectives.hubert.objective import HubertObjective

    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        for f in files:
            (data / Path(f).name).write_bytes(Path(f).read_bytes())
    cfg = load_config([str(Path(__file__).resolve().parents[2] / "recipes" / "hubert" / "tiny-cpu-iter1.yaml"),
                       "--train_dir", str(data), "--output_dir", str(tmp_path / out), "--num_clusters", "8",
                       "--validation_split_percentage", "0", "--mfcc_type", "torchaudio", *extra])
    torch.manual_seed(0)
    return HubertObjective(cfg)


def test_objective_targets_are_cached_reused_and_aligned_in_batches(tmp_path, caplog):
    files = find_audio_files(SPEECH)[:5]
    a = _objective(tmp_path, "a", files)
    assert (tmp_path / "a" / "kmeans.pt").is_file() and (tmp_path / "a" / "labels.npz").is_file()
    assert a.model.hubert.config.mask_time_prob == 0.8 and a.model.hubert.config.mask_time_length == 10
    # per file: MFCC k-means labels of the (normalized) file, aligned to the model's frames
    i = 2
    wave = load_audio(a.train_dataset.audio.rows[i]["path"], 16000)
    from hfssl.data.audio.batching import normalize

    expected = align_labels(a.kmeans.predict(mfcc_features(normalize(wave))), mfcc_geometry(16000), len(wave),
                            TINY_KERNEL, TINY_STRIDE)
    np.testing.assert_array_equal(a.train_dataset[i]["frame_labels"], expected)
    # a batch: cropped labels follow the crop (offsets are multiples of the conv stride)
    batch = a.collator(a.train_dataset.__getitems__([0, 1, 2]), seed=5)
    assert set(batch) == {"input_values", "mask_time_indices", "labels", "num_targets", "num_inputs"}
    assert batch["labels"].shape == batch["mask_time_indices"].shape
    assert batch["num_targets"] == int((batch["mask_time_indices"] & (batch["labels"] >= 0)).sum()) > 0
    row = batch["labels"][2].numpy()
    full = a.train_dataset[2]["frame_labels"]
    starts = [s for s in range(len(full) - len(row) + 1) if (full[s : s + len(row)] == row).all()]
    assert starts, "the cropped labels are not a contiguous piece of the file's labels"
    out = a.model(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
    assert torch.isfinite(out["loss_sum"]) and 0 <= out["accuracy"] <= 1
    # same settings, same folder: k-means and labels are reused, not refit
    caplog.set_level("INFO")
    b = _objective(tmp_path, "a", files)
    assert "Reusing" in caplog.text and torch.equal(a.kmeans.centroids, b.kmeans.centroids)
    np.testing.assert_array_equal(a.train_dataset.labels, b.train_dataset.labels)
    # another folder with kmeans_model: the same targets
    c = _objective(tmp_path, "c", files, "--kmeans_model", str(tmp_path / "a" / "kmeans.pt"))
    np.testing.assert_array_equal(a.train_dataset.labels, c.train_dataset.labels)
    # other settings (another seed): refit, other centroids
    d = _objective(tmp_path, "a", files, "--seed", "3")
    assert not torch.equal(a.kmeans.centroids, d.kmeans.centroids)


def test_targets_of_a_silent_corpus_are_warned_about(tmp_path, caplog):
    """Digital silence gives one MFCC value, so one cluster takes every frame: the run trains on nothing, and used to
    say so only at INFO."""
    import soundfile as sf

    silent = []
    for i in range(4):
        path = tmp_path / f"silence{i}.wav"
        sf.write(str(path), np.zeros(24000, dtype=np.float32), 16000)
        silent.append(str(path))
    caplog.set_level("INFO")
    _objective(tmp_path, "s", silent)
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "train targets:" in r.getMessage()]
    assert len(warned) == 1 and "Nearly every frame has the same target" in warned[0].getMessage()
