"""BEST-RQ pieces: the log-mel front end against transformers' extractor, the random-projection quantizer against
a hand computation, the collator's masks/noise/labels, the loss and the codebook-usage figure, the model."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from conftest import FIXTURES
from hfssl.data.audio.fbank import FbankFrontend
from hfssl.objectives.best_rq.loss import best_rq_loss, code_perplexity, count_targets
from hfssl.objectives.best_rq.quantizer import RandomProjectionQuantizer

CLIPS = sorted((FIXTURES / "speech" / "unlabeled").rglob("*.flac"))


def _wave(i: int = 0) -> np.ndarray:
    return sf.read(str(CLIPS[i]), dtype="float32")[0]


@pytest.mark.parametrize("stride", [2, 4])
def test_fbank_equals_the_seamless_feature_extractor(stride):
    fe = FbankFrontend(stride=stride)
    extractor = fe.feature_extractor()
    checked = 0
    for i in range(6):
        wave = _wave(i)
        n_fbank = 1 + (len(wave) - 400) // 160
        ours = fe.features(wave)
        theirs = extractor(wave, sampling_rate=16000, return_tensors="pt")["input_features"][0]
        assert ours.shape == (fe.num_frames(len(wave)), 80 * stride) == (n_fbank // stride, 80 * stride)
        if n_fbank % 2 == 0:  # the extractor pads an odd frame count to even first (one extra group at the end)
            torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=0)
            checked += 1
        else:
            torch.testing.assert_close(ours, theirs[: len(ours)], atol=1e-3, rtol=0)
    assert checked >= 2
    # per utterance and mel bin: zero mean, unit (unbiased) variance over the utterance's frames
    x = fe.fbank(_wave(0))
    z = (x - x.mean(0)) / x.std(0)
    torch.testing.assert_close(fe.features(_wave(0)), z[: len(z) // stride * stride].reshape(-1, 80 * stride), atol=1e-4, rtol=0)


def test_fbank_geometry_and_batch():
    fe = FbankFrontend(stride=4)
    assert fe.min_samples == 400 + 3 * 160 and fe.num_frames(fe.min_samples) == 1 and fe.num_frames(fe.min_samples - 1) == 0
    assert fe.num_frames(torch.tensor([0, 399, 880, 16000])).tolist() == [0, 0, 1, 24]
    assert fe.features(np.zeros(300, dtype=np.float32)).shape == (0, 320)
    waves = [_wave(0), _wave(1)[:8000]]
    x, mask, lengths = fe.batch(waves)
    assert lengths.tolist() == [fe.num_frames(len(w)) for w in waves] and x.shape == (2, int(lengths.max()), 320)
    assert mask.sum(1).tolist() == lengths.tolist() and x[1, lengths[1]:].abs().sum() == 0
    torch.testing.assert_close(x[1, : lengths[1]], fe.features(waves[1]))


def test_quantizer_labels_equal_a_hand_computed_lookup():
    q = RandomProjectionQuantizer.create(input_dim=12, codebook_dim=4, codebook_size=10, num_codebooks=2, seed=3)
    again = RandomProjectionQuantizer.create(input_dim=12, codebook_dim=4, codebook_size=10, num_codebooks=2, seed=3)
    other = RandomProjectionQuantizer.create(input_dim=12, codebook_dim=4, codebook_size=10, num_codebooks=2, seed=4)
    assert torch.equal(q.projections, again.projections) and torch.equal(q.codebooks, again.codebooks)
    assert q.fingerprint() == again.fingerprint() != other.fingerprint()
    bound = math.sqrt(6 / (12 + 4))  # Xavier uniform
    assert q.projections.shape == (2, 12, 4) and q.projections.abs().max() <= bound and q.projections.abs().max() > 0.8 * bound
    torch.testing.assert_close(q.codebooks.norm(dim=-1), torch.ones(2, 10))

    x = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(0))
    labels = q(x)
    assert labels.shape == (3, 5, 2) and labels.dtype == torch.long
    for b in range(3):
        for t in range(5):
            for n in range(2):  # by hand, in float64: normalize the projection, nearest codeword by L2 distance
                z = x[b, t].double() @ q.projections[n].double()
                z = z / z.norm()
                dist = [float(((z - c.double()) ** 2).sum()) for c in q.codebooks[n]]
                assert labels[b, t, n] == int(np.argmin(dist))
    # pinned: labels of this input with seed 3 (a change in the draw or the lookup shows here)
    assert labels[0, :, 0].tolist() == PINNED


PINNED = [1, 0, 8, 0, 9]


def test_quantizer_save_load(tmp_path):
    q = RandomProjectionQuantizer.create(20, 4, 8, 3, seed=0)
    q.save(tmp_path / "q.safetensors", {"stack_frames": 2})
    back = RandomProjectionQuantizer.load(tmp_path / "q.safetensors")
    assert back.fingerprint() == q.fingerprint() and back.num_codebooks == 3 and back.codebook_size == 8 and back.input_dim == 20
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "q.safetensors").read_bytes().replace(b"hfssl-best-rq", b"other-thing--"))
    with pytest.raises(ValueError, match="not an hfssl BEST-RQ quantizer"):
        RandomProjectionQuantizer.load(tmp_path / "bad.safetensors")


def test_loss_is_a_sum_and_perplexity_counts_used_codes():
    logits = torch.randn(7, 2, 5, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 5, (7, 2), generator=torch.Generator().manual_seed(2))
    r = best_rq_loss(logits, labels)
    torch.testing.assert_close(r["loss_sum"], F.cross_entropy(logits.reshape(14, 5), labels.reshape(14)) * 14)
    assert int(r["correct"]) == int((logits.argmax(-1) == labels).sum())
    uniform = torch.arange(12).reshape(12, 1) % 4  # 4 codewords equally used
    assert code_perplexity(uniform, 4).item() == pytest.approx(4.0)
    assert code_perplexity(torch.zeros(9, 3, dtype=torch.long), 4).item() == pytest.approx(1.0)
    mixed = torch.stack([torch.arange(8) % 2, torch.zeros(8, dtype=torch.long)], 1)  # codebook 0: 2 codes; codebook 1: 1
    assert code_perplexity(mixed, 2).item() == pytest.approx(1.5)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    lab = torch.tensor([[[1, 1], [2, 2], [3, 3]], [[1, 1], [-100, -100], [-100, -100]]])
    assert count_targets(lab, mask) == 3 * 2  # masked real frames x codebooks


def _collator(**kw):
    from hfssl.objectives.best_rq.collators import BestRQCollator

    fe = FbankFrontend(stride=2)
    q = RandomProjectionQuantizer.create(fe.feature_dim, 16, 32, 2, seed=0)
    args = dict(max_samples=24000, mask_prob=0.4, mask_length=5, min_masks=2, noise_std=0.1)
    return BestRQCollator(fe, q, **{**args, **kw}), fe, q


def test_collator_labels_clean_frames_and_replaces_masked_ones_with_noise():
    c, fe, q = _collator()
    examples = [{"input_values": _wave(i)} for i in range(3)] + [{"input_values": _wave(3)[:9000]}]
    batch = c(examples, seed=5)
    again = c(examples, seed=5)
    assert all(torch.equal(batch[k], again[k]) for k in ("input_features", "mask_time_indices", "labels"))  # a function of the seed
    other = c(examples, seed=6)
    assert not torch.equal(batch["mask_time_indices"], other["mask_time_indices"])

    # the same crops, drawn with the collator's generator order (crops first)
    g = torch.Generator().manual_seed(5)
    from hfssl.data.audio.batching import random_crop

    waves = [random_crop(e["input_values"], 24000, g) for e in examples]
    clean, attention, lengths = fe.batch(waves)
    assert torch.equal(batch["attention_mask"], attention)
    expected = q(clean)
    expected[attention == 0] = -100
    assert torch.equal(batch["labels"], expected)  # labels of the clean frames, -100 on padding
    mask, x = batch["mask_time_indices"], batch["input_features"]
    assert mask.shape == attention.shape and not (mask & (attention == 0)).any()  # never masks padding
    assert torch.equal(x[~mask], clean[~mask])  # unmasked frames untouched
    noise = x[mask]
    assert noise.shape[0] > 0 and not torch.equal(noise, clean[mask])
    assert abs(float(noise.std()) - 0.1) < 0.01 and abs(float(noise.mean())) < 0.01
    assert 0.2 < mask.sum() / attention.sum() < 0.5
    assert batch["num_targets"] == int(mask.sum()) * 2
    assert batch["num_inputs"] == pytest.approx(sum(len(w) for w in waves) / 16000)


BASE_KERNEL, BASE_STRIDE = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)  # 400-sample receptive field, hop 320


def test_samples_of_frames_covers_each_masked_frames_receptive_field():
    from hfssl.objectives.best_rq.collators import samples_of_frames

    mask = torch.tensor([[False, True, True, False, False], [True, False, False, False, True]])
    out = samples_of_frames(mask, (4, 3), 16)  # window 4, hop 3: frame i covers [3i, 3i + 4)
    expected = torch.zeros(2, 16, dtype=torch.bool)
    expected[0, 3:10] = True  # frames 1 and 2: [3, 7) and [6, 10)
    expected[1, 0:4] = True
    expected[1, 12:16] = True  # frame 4: [12, 16)
    assert torch.equal(out, expected)
    assert torch.equal(samples_of_frames(mask, (4, 3), 14)[1], expected[1, :14])  # clipped at the end


def test_stacked_fbank_frames_align_one_to_one_with_base_conv_frames():
    from hfssl.data.audio.geometry import conv_geometry, label_frame_index, num_frames

    fe = FbankFrontend(stride=2)
    assert fe.frame_geometry == (560, 320) and conv_geometry(BASE_KERNEL, BASE_STRIDE) == (400, 320)
    for n in (400, 559, 560, 16000, 16159, 16160, 40000):
        f, t = int(num_frames(n, BASE_KERNEL, BASE_STRIDE)), int(fe.num_frames(n))
        j = label_frame_index(f, (400, 320), fe.frame_geometry, t, clip=False)
        # centres 320 i + 200 and 320 j + 280: the nearest stacked frame is frame i; at most the last conv frame has none
        assert j.tolist() == list(range(f)) and t in (f - 1, f), (n, f, t)
    assert label_frame_index(3, (400, 320), (560, 320), 2).tolist() == [0, 1, 1]  # clipped (HuBERT's use)


def _wave_collator(**kw):
    from hfssl.objectives.best_rq.collators import BestRQWaveCollator

    fe = FbankFrontend(stride=2)
    q = RandomProjectionQuantizer.create(fe.feature_dim, 16, 32, 2, seed=0)
    args = dict(max_samples=24000, do_normalize=True, return_attention_mask=True, mask_prob=0.4, mask_length=5, min_masks=2,
                noise_std=0.1)
    return BestRQWaveCollator(fe, q, BASE_KERNEL, BASE_STRIDE, **{**args, **kw}), fe, q


def test_wave_collator_labels_conv_frames_and_puts_noise_under_masked_frames():
    from hfssl.data.audio.batching import random_crop
    from hfssl.data.audio.geometry import num_frames

    c, fe, q = _wave_collator()
    examples = [{"input_values": _wave(i)} for i in range(3)] + [{"input_values": _wave(3)[:9000]}]
    batch = c(examples, seed=5)
    assert all(torch.equal(batch[k], c(examples, seed=5)[k]) for k in ("input_values", "mask_time_indices", "labels"))
    g = torch.Generator().manual_seed(5)  # crops first, as the collator draws them
    waves = [random_crop(e["input_values"], 24000, g) for e in examples]
    lengths = [len(w) for w in waves]
    frames = [int(num_frames(n, BASE_KERNEL, BASE_STRIDE)) for n in lengths]
    assert batch["frame_lengths"].tolist() == frames and batch["labels"].shape == (4, max(frames), 2)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for k, w in enumerate(waves):  # by hand: conv frame i gets the quantizer's label of stacked log-mel frame i
        codes = q(fe.features(w)[None])[0]  # (T, 2)
        t = codes.shape[0]
        assert torch.equal(batch["labels"][k, :t], codes[:t]) and (batch["labels"][k, t:] == -100).all()
    x, mask = batch["input_values"], batch["mask_time_indices"]
    assert not mask[torch.arange(mask.shape[1])[None, :] >= batch["frame_lengths"][:, None]].any()  # never masks padding
    assert 0.2 < mask.sum() / sum(frames) < 0.5 and batch["num_targets"] == int((mask & (batch["labels"][..., 0] >= 0)).sum()) * 2
    for k, w in enumerate(waves):
        clean = torch.from_numpy(w)
        clean = (clean - clean.mean()) / torch.sqrt(clean.var(unbiased=False) + 1e-7)
        noisy = torch.zeros(lengths[k], dtype=torch.bool)
        for i in mask[k].nonzero().flatten().tolist():
            noisy[320 * i: 320 * i + 400] = True  # the receptive field of masked frame i
        torch.testing.assert_close(x[k, : lengths[k]][~noisy], clean[~noisy])  # the rest is the normalized clean wave
        assert noisy.any() and not torch.equal(x[k, : lengths[k]][noisy], clean[noisy])
        assert (x[k, lengths[k]:] == 0).all()
    everything = []  # every masked frame's receptive field, all utterances: N(0, 0.1^2)
    for k in range(4):
        sel = torch.zeros(x.shape[1], dtype=torch.bool)
        for i in mask[k].nonzero().flatten().tolist():
            sel[320 * i: 320 * i + 400] = True
        everything.append(x[k][sel])
    noise = torch.cat(everything)
    assert abs(float(noise.std()) - 0.1) < 0.01 and abs(float(noise.mean())) < 0.01
    assert batch["num_inputs"] == pytest.approx(sum(lengths) / 16000)
    assert "attention_mask" not in _wave_collator(return_attention_mask=False)[0](examples, seed=5)


def test_wave_model_scores_only_masked_labelled_frames():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from hfssl.objectives.best_rq.model import BestRQForPretraining

    c, fe, q = _wave_collator()
    batch = c([{"input_values": _wave(i)} for i in range(2)], seed=1)
    torch.manual_seed(0)
    encoder = Wav2Vec2Model(Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                           conv_dim=[8] * 7, conv_kernel=list(BASE_KERNEL), conv_stride=list(BASE_STRIDE),
                                           feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=8,
                                           num_conv_pos_embedding_groups=2, mask_time_prob=0.4, layerdrop=0.0))
    model = BestRQForPretraining(encoder, q.num_codebooks, q.codebook_size).eval()
    out = model(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
    with torch.no_grad():
        hidden = encoder(batch["input_values"], attention_mask=batch["attention_mask"]).last_hidden_state
        sel = batch["mask_time_indices"] & (batch["labels"][..., 0] >= 0)
        logits = model.head(hidden[sel]).view(-1, 2, 32)
        ce = F.cross_entropy(logits.reshape(-1, 32), batch["labels"][sel].reshape(-1), reduction="sum")
    torch.testing.assert_close(out["loss_sum"], ce)
    assert batch["num_targets"] == logits.shape[0] * 2


def test_model_predicts_only_masked_frames_and_returns_the_loops_dict():
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

    from hfssl.objectives.best_rq.model import BestRQForPretraining

    c, fe, q = _collator()
    batch = c([{"input_values": _wave(i)} for i in range(2)], seed=1)
    torch.manual_seed(0)
    encoder = Wav2Vec2BertModel(Wav2Vec2BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                                   feature_projection_input_dim=fe.feature_dim, conv_depthwise_kernel_size=3,
                                                   mask_time_prob=0.4, layerdrop=0.0))
    model = BestRQForPretraining(encoder, q.num_codebooks, q.codebook_size).eval()
    inputs = {k: batch[k] for k in ("input_features", "attention_mask", "mask_time_indices", "labels")}
    out = model(**inputs)
    assert set(out) == {"loss_sum", "accuracy", "masked_fraction", "code_perplexity", "code_usage", "pred_perplexity"}
    # loss_sum: CE summed over masked real frames x codebooks, by hand from the encoder and the head
    with torch.no_grad():
        hidden = encoder(batch["input_features"], attention_mask=batch["attention_mask"]).last_hidden_state
        sel = batch["mask_time_indices"]
        logits = model.head(hidden[sel]).view(-1, 2, 32)
        ce = F.cross_entropy(logits.reshape(-1, 32), batch["labels"][sel].reshape(-1), reduction="sum")
    torch.testing.assert_close(out["loss_sum"], ce)
    assert batch["num_targets"] == logits.shape[0] * 2
    real = batch["labels"][..., 0] >= 0
    torch.testing.assert_close(out["code_perplexity"], code_perplexity(batch["labels"][real], 32))
    # changing an unmasked frame's label changes nothing: only masked frames are scored
    labels = batch["labels"].clone()
    labels[~batch["mask_time_indices"] & real] = (labels[~batch["mask_time_indices"] & real] + 1) % 32
    torch.testing.assert_close(model(**{**inputs, "labels": labels})["loss_sum"], out["loss_sum"])


def _objective(tmp_path, waves: dict, *extra):
    from hfssl.objectives import load_config
    from hfssl.objectives.best_rq.objective import BestRQObjective
    from conftest import ROOT

    data = tmp_path / "data"
    data.mkdir()
    for name, wave in waves.items():
        sf.write(data / name, wave, 16000)
    cfg = load_config([str(ROOT / "recipes" / "best_rq" / "tiny-cpu.yaml"), "--train_dir", str(data), "--output_dir", str(tmp_path / "out"),
                       "--validation_split_percentage", "0", "--per_device_train_batch_size", "2", *extra])
    return BestRQObjective(cfg)


def test_collapsed_labels_warn_before_and_during_training(tmp_path, caplog):
    from hfssl.errors import ConfigError

    silence = {f"silence{i}.wav": np.zeros(32000, dtype=np.float32) for i in range(3)}  # every frame the same
    caplog.set_level("WARNING")
    obj = _objective(tmp_path, silence)
    assert obj.preflight["code_usage"] < obj.cfg.collapse_usage and "use few codewords" in caplog.text
    assert (tmp_path / "out" / "best_rq_quantizer.safetensors").is_file()  # written before training
    caplog.clear()
    low = [{"step": s, "code_usage": 0.01, "num_targets": 10} for s in range(1, 2 * obj.cfg.collapse_patience)]
    for i in range(len(low)):
        assert obj.check_health(low[: i + 1]) is None  # warns, never stops: the quantizer is frozen
    assert caplog.text.count("Codebook usage collapse") == 1
    obj.check_health([{"step": 99, "code_usage": 0.5, "num_targets": 10}])
    assert obj.state_dict()["low_usage_streak"] == 0
    with pytest.raises(ConfigError, match="another quantizer"):
        obj.load_state_dict({"quantizer_sha1": "0" * 16})


def test_feature_grad_scale_scales_only_the_conv_front_ends_gradient(tmp_path):
    from conftest import ROOT
    from hfssl.objectives import load_config
    from hfssl.objectives.best_rq.objective import BestRQObjective

    grads = {}
    for scale in (1.0, 0.25):
        cfg = load_config([str(ROOT / "recipes" / "best_rq" / "tiny-cpu-wav2vec2.yaml"), "--output_dir", str(tmp_path / str(scale)),
                           "--feature_grad_scale", str(scale), "--validation_split_percentage", "0"])
        torch.manual_seed(0)
        obj = BestRQObjective(cfg)
        batch = obj.collator(obj.train_dataset.__getitems__([0, 1]), seed=3)
        obj.model.eval()(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})["loss_sum"].backward()
        enc = obj.model.encoder
        grads[scale] = (enc.feature_extractor.conv_layers[0].conv.weight.grad.clone(), enc.encoder.layers[0].attention.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0.25][0], 0.25 * grads[1.0][0])
    torch.testing.assert_close(grads[0.25][1], grads[1.0][1])


def test_quantizer_sources_and_the_runs_own_record(tmp_path):
    """output_dir's quantizer file is the run's record of its labels: a run building another quantizer there is
    refused and the file kept (it was overwritten, and the error's hint then pointed at the wrong one). An explicit
    quantizer_seed draws afresh even when model_name_or_path has a quantizer (it was ignored)."""
    from conftest import ROOT
    from hfssl.errors import ConfigError
    from hfssl.objectives import load_config
    from hfssl.objectives.best_rq.objective import BestRQObjective
    from hfssl.objectives.best_rq.quantizer import QUANTIZER_FILE

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(data / f"u{i}.wav", (0.1 * rng.standard_normal(32000)).astype(np.float32), 16000)

    def build(out, *extra):
        return BestRQObjective(load_config([str(ROOT / "recipes" / "best_rq" / "tiny-cpu.yaml"), "--train_dir", str(data),
                                            "--output_dir", str(tmp_path / out), "--validation_split_percentage", "0",
                                            "--per_device_train_batch_size", "2", *extra]))

    first = build("run")
    record = tmp_path / "run" / QUANTIZER_FILE
    before = record.read_bytes()
    with pytest.raises(ConfigError, match=f"{re.escape(str(record))} holds another quantizer than this run's .*--quantizer_path "
                                          f"{re.escape(str(record))}"):
        build("run", "--quantizer_seed", "7")
    assert record.read_bytes() == before
    assert build("run", "--quantizer_path", str(record)).quantizer.fingerprint() == first.quantizer.fingerprint()

    model = tmp_path / "model"  # a BEST-RQ output: encoder, quantizer, head
    first.save_pretrained(str(model), {"steps": 0})
    assert (model / QUANTIZER_FILE).is_file()
    assert build("cont", "--model_name_or_path", str(model)).quantizer.fingerprint() == first.quantizer.fingerprint()
    fresh = build("fresh", "--model_name_or_path", str(model), "--quantizer_seed", "7")
    assert fresh.quantizer.fingerprint() != first.quantizer.fingerprint() and fresh.quantizer_source == "drawn with seed 7"



def test_companion_files_of_a_hub_model_are_downloaded(tmp_path, monkeypatch, caplog):
    """A Hub id's quantizer / head come from its repository (only local folders were looked at, so continuing from a
    published BEST-RQ model drew a new quantizer); a missing file is None; an unreachable Hub is None, logged."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from hfssl.objectives.speech_base import companion_file

    (tmp_path / "q.safetensors").write_bytes(b"x")
    calls = []

    def download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        if filename == "missing.safetensors":
            raise EntryNotFoundError("no such file")
        if filename == "offline.safetensors":
            raise LocalEntryNotFoundError("offline")
        return str(tmp_path / "q.safetensors")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.chdir(tmp_path)
    assert companion_file("me/best-rq", "best_rq_quantizer.safetensors") == str(tmp_path / "q.safetensors")
    assert companion_file("me/best-rq", "missing.safetensors") is None
    caplog.set_level("WARNING")
    assert companion_file("me/best-rq", "offline.safetensors") is None and "Could not fetch offline.safetensors" in caplog.text
    assert calls == [("me/best-rq", n) for n in ("best_rq_quantizer.safetensors", "missing.safetensors", "offline.safetensors")]
    assert companion_file(str(tmp_path), "q.safetensors") == str(tmp_path / "q.safetensors")  # a folder: no download
    assert companion_file(str(tmp_path), "none.safetensors") is None and len(calls) == 3

    # The heads (BEST-RQ's, HuBERT's) are looked up through it: a Hub id's head comes from the repository.
    from safetensors.torch import save_file

    from hfssl.objectives.best_rq.objective import HEAD_FILE
    from hfssl.objectives.speech_base import matching_head

    save_file({"weight": torch.ones(2, 3)}, str(tmp_path / "q.safetensors"), metadata={"quantizer_sha1": "abc"})
    head = matching_head("me/best-rq", HEAD_FILE, "quantizer_sha1", "abc")
    assert calls[-1] == ("me/best-rq", HEAD_FILE) and torch.equal(head["weight"], torch.ones(2, 3))
    assert matching_head("me/best-rq", HEAD_FILE, "quantizer_sha1", "other") is None  # trained on other targets
