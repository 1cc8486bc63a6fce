"""Tests for hfssl.data.audio: decoding, validation, manifests, bucketing, encoder geometry."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from hfssl.data.audio.batching import audio_batch_plan, duration_batches, normalize, random_crop
from hfssl.data.audio.decode import AudioScanError, BadAudioError, load_audio, resampled_length, scan_audio, write_skipped_report
from hfssl.data.audio.files import AUDIO_EXTENSIONS, find_audio_files, list_audio_dir, read_manifest
from hfssl.data.audio.geometry import num_frames, receptive_field

SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
SR = 16_000
BASE_KERNEL = (10, 3, 3, 3, 3, 2, 2)
BASE_STRIDE = (5, 2, 2, 2, 2, 2, 2)


def _tone(n: int, sr: int = SR, freq: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def _write_good(path: Path, n: int = 8000, sr: int = SR) -> Path:
    sf.write(path, _tone(n, sr), sr)
    return path


# Each maker writes one kind of bad file into tmp_path; returns (path, regex the reason must match).
def _garbage(tmp: Path):
    p = tmp / "garbage.wav"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p, r"cannot decode"


def _zero_bytes(tmp: Path):
    p = tmp / "zero_bytes.flac"
    p.write_bytes(b"")
    return p, r"empty file \(0 bytes\)"


def _no_samples(tmp: Path):
    p = tmp / "no_samples.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), SR)
    assert p.stat().st_size > 0  # a valid header with no data, not a 0-byte file
    return p, r"empty \(0 samples\)"


def _nan(tmp: Path):
    p = tmp / "nan.wav"
    x = _tone(8000)
    x[100:103] = np.nan
    x[500] = np.inf
    sf.write(p, x, SR, subtype="FLOAT")
    return p, r"NaN/inf samples \(4 of 8000\)"


def _too_short(tmp: Path):
    p = tmp / "short.wav"
    sf.write(p, _tone(399), SR)
    return p, r"too short: 399 samples .* < min_samples=400"


def _bad_extension(tmp: Path):
    p = tmp / "speech.m4a"
    sf.write(p, _tone(8000), SR, format="WAV")  # decodable bytes, but not an extension we accept
    return p, r"unsupported extension '\.m4a'"


def _missing(tmp: Path):
    return tmp / "does_not_exist.flac", r"file not found"


BAD_MAKERS = [_garbage, _zero_bytes, _no_samples, _nan, _too_short, _bad_extension, _missing]


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("maker", BAD_MAKERS, ids=lambda m: m.__name__.strip("_"))
def test_scan_bad_file_error_mode_names_file_and_reason(tmp_path, maker):
    good = [_write_good(tmp_path / f"good{i}.wav") for i in range(2)]
    bad, pattern = maker(tmp_path)
    with pytest.raises(AudioScanError) as info:
        scan_audio([good[0], bad, good[1]], SR, min_samples=400, on_bad_audio="error")
    assert str(bad) in str(info.value)
    assert re.search(pattern, str(info.value))
    assert [p for p, _ in info.value.bad] == [str(bad)]


@pytest.mark.parametrize("maker", BAD_MAKERS, ids=lambda m: m.__name__.strip("_"))
def test_scan_bad_file_skip_mode_lists_it(tmp_path, maker):
    good = [_write_good(tmp_path / f"good{i}.wav", n=8000 + i) for i in range(2)]
    bad, pattern = maker(tmp_path)
    res = scan_audio([good[0], bad, good[1]], SR, min_samples=400, on_bad_audio="skip", num_workers=2)
    assert res.good == [(str(good[0]), 8000), (str(good[1]), 8001)]
    assert len(res.bad) == 1 and res.bad[0][0] == str(bad)
    assert re.search(pattern, res.bad[0][1])
    assert len(res.good) + len(res.bad) == 3


@pytest.mark.parametrize("maker", [m for m in BAD_MAKERS if m is not _too_short], ids=lambda m: m.__name__.strip("_"))
def test_load_audio_raises_bad_audio_error(tmp_path, maker):
    bad, pattern = maker(tmp_path)
    with pytest.raises(BadAudioError) as info:
        load_audio(bad, SR)
    assert info.value.path == str(bad)
    assert re.search(pattern, info.value.reason)
    assert str(bad) in str(info.value)


def test_scan_error_lists_every_bad_file_and_skip_reports_them(tmp_path):
    good = [_write_good(tmp_path / f"good{i}.wav") for i in range(3)]
    bads = [maker(tmp_path)[0] for maker in BAD_MAKERS]
    paths = good[:1] + bads + good[1:]
    with pytest.raises(AudioScanError) as info:
        scan_audio(paths, SR, min_samples=400)
    message = str(info.value)
    assert message.startswith(f"{len(bads)} of {len(paths)} audio files failed")
    for b in bads:
        assert str(b) in message

    res = scan_audio(paths, SR, min_samples=400, on_bad_audio="skip", num_workers=4)
    assert [p for p, _ in res.good] == [str(p) for p in good]
    assert [p for p, _ in res.bad] == [str(p) for p in bads]  # input order, not completion order
    report = write_skipped_report(res.bad, tmp_path / "out")
    assert os.path.basename(report) == "skipped_audio.tsv"
    lines = Path(report).read_text().splitlines()
    assert lines[0] == f"# skipped {len(bads)} audio file(s)"
    assert lines[1] == "path\treason"
    assert [ln.split("\t") for ln in lines[2:]] == [[p, r] for p, r in res.bad]


def test_scan_durations_min_and_max(tmp_path):
    short = _write_good(tmp_path / "half_second.wav", n=8000)
    long = _write_good(tmp_path / "three_seconds.wav", n=48000)
    res = scan_audio([short, long], SR, min_samples=400, min_duration_in_seconds=1.0,
                     max_duration_in_seconds=2.0, on_bad_audio="skip")
    assert res.bad == [(str(short), "too short: 0.500 s < min_duration_in_seconds=1.0")]
    # Longer than max is kept with its full length, to be cropped at batch time.
    assert res.good == [(str(long), 48000)]
    assert res.num_long == 1
    with pytest.raises(ValueError, match="on_bad_audio"):
        scan_audio([long], SR, min_samples=400, on_bad_audio="ignore")


@pytest.mark.parametrize("orig_sr", [8000, 22050, 44100, 48000, 16000])
def test_scan_length_matches_load_audio_length(tmp_path, orig_sr):
    p = tmp_path / f"x_{orig_sr}.flac"
    sf.write(p, _tone(orig_sr + 123, orig_sr), orig_sr)
    res = scan_audio([p], SR, min_samples=400)
    assert res.good[0][1] == load_audio(p, SR).shape[0]


def test_resampled_length_matches_torchaudio():
    cases = [(orig, new, n) for orig, new in [(44100, 16000), (22050, 16000), (8000, 16000), (48000, 16000),
                                              (16000, 8000)] for n in [1, 2, 399, 12345, 100_003]]
    # torchaudio rounds new*n/orig through float32: at n=722788 exact integer ceil says 262237,
    # torchaudio returns 262236. Lengths recorded by scan_audio must equal what load_audio returns.
    cases.append((44100, 16000, 722_788))
    for orig, new, n in cases:
        expected = AF.resample(torch.zeros(n), orig, new).shape[-1]
        assert resampled_length(n, orig, new) == expected, (orig, new, n)


# ----------------------------------------------------------------------------- decoding


def test_stereo_mixdown_is_channel_mean(tmp_path):
    rng = np.random.default_rng(1)
    stereo = rng.uniform(-0.5, 0.5, size=(4000, 2)).astype(np.float32)
    p = tmp_path / "stereo.wav"
    sf.write(p, stereo, SR, subtype="FLOAT")
    wave = load_audio(p, SR)
    assert wave.dtype == np.float32 and wave.shape == (4000,)
    np.testing.assert_allclose(wave, stereo.mean(axis=1), rtol=0, atol=1e-7)
    assert not np.allclose(wave, stereo[:, 0])


def test_resample_8k_to_16k_doubles_length_and_keeps_pitch(tmp_path):
    p = tmp_path / "tone8k.wav"
    sf.write(p, _tone(8000, sr=8000, freq=440.0), 8000, subtype="FLOAT")
    wave = load_audio(p, 16000)
    assert wave.shape == (16000,)
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / wave.shape[0]
    assert abs(peak_hz - 440.0) <= 1.0


@pytest.mark.parametrize("fmt,ext", [("WAV", ".wav"), ("FLAC", ".flac"), ("OGG", ".ogg"), ("MP3", ".mp3")])
def test_each_supported_format_decodes(tmp_path, fmt, ext):
    assert ext in AUDIO_EXTENSIONS
    p = tmp_path / f"tone{ext.upper()}"  # extension matching is case-insensitive
    sf.write(p, _tone(16000), SR, format=fmt)
    wave = load_audio(p, SR)
    # Lossy codecs add/pad a few frames; the tone must survive.
    assert abs(wave.shape[0] - 16000) < 2000
    assert 0.2 < np.abs(wave).max() < 0.8


# ----------------------------------------------------------------------------- files and manifests


def test_find_audio_files_recursive_sorted_skips_hidden(tmp_path):
    for rel in ["b/2.wav", "a/x/1.FLAC", "a/0.mp3", "c.ogg", "notes.txt", ".hidden/3.wav", "a/.4.wav"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [os.path.relpath(p, tmp_path) for p in find_audio_files(tmp_path)]
    assert found == ["a/0.mp3", "a/x/1.FLAC", "b/2.wav", "c.ogg"]
    with pytest.raises(NotADirectoryError):
        find_audio_files(tmp_path / "nope")


def test_read_manifest_csv_resolves_relative_paths(tmp_path):
    (tmp_path / "audio").mkdir()
    a = _write_good(tmp_path / "audio" / "a.wav")
    b = _write_good(tmp_path / "b.wav")
    manifest_dir = tmp_path / "manifests"
    manifest_dir.mkdir()
    manifest = manifest_dir / "train.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audio", "text"])
        w.writerow(["../audio/a.wav", "hello"])
        w.writerow([str(b), "absolute"])
    rows = read_manifest(manifest, "audio")
    assert rows == [{"path": str(a), "text": "hello"}, {"path": str(b), "text": "absolute"}]
    assert scan_audio([r["path"] for r in rows], SR, min_samples=400).bad == []


def test_read_manifest_jsonl(tmp_path):
    _write_good(tmp_path / "a.wav")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "a.wav", "label": 3}) + "\n\n")
    assert read_manifest(manifest) == [{"path": str(tmp_path / "a.wav"), "label": 3}]


def test_read_manifest_missing_column_lists_columns(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,sentence,speaker\nx.wav,hi,s1\n")
    with pytest.raises(ValueError) as info:
        read_manifest(manifest, "audio")
    msg = str(info.value)
    assert str(manifest) in msg
    assert "'audio' not found" in msg
    assert "available columns: file, sentence, speaker" in msg


def test_list_audio_dir_class_folders_and_plain(tmp_path):
    for rel in ["yes/1.wav", "yes/2.wav", "no/1.wav"]:
        (tmp_path / "cls" / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_good(tmp_path / "cls" / rel)
    rows = list_audio_dir(tmp_path / "cls")
    assert [(os.path.relpath(r["path"], tmp_path / "cls"), r["label"]) for r in rows] == [
        ("no/1.wav", "no"), ("yes/1.wav", "yes"), ("yes/2.wav", "yes")]
    # Mixed depths: no labels can be inferred.
    _write_good(tmp_path / "cls" / "top.wav")
    assert all(set(r) == {"path"} for r in list_audio_dir(tmp_path / "cls"))


def test_list_audio_dir_follows_symlinked_class_folders_once(tmp_path):
    """A class folder linked in from elsewhere is listed with its label (os.walk skips links unless told);
    a link back up the tree is not walked twice."""
    store = tmp_path / "store" / "dog"
    store.mkdir(parents=True)
    _write_good(store / "d.wav")
    (tmp_path / "cls" / "cat").mkdir(parents=True)
    _write_good(tmp_path / "cls" / "cat" / "c.wav")
    (tmp_path / "cls" / "dog").symlink_to(store, target_is_directory=True)
    (tmp_path / "cls" / "cat" / "loop").symlink_to(tmp_path / "cls", target_is_directory=True)
    rows = list_audio_dir(tmp_path / "cls")
    assert [(os.path.relpath(r["path"], tmp_path / "cls"), r.get("label")) for r in rows] == [
        ("cat/c.wav", "cat"), ("dog/d.wav", "dog")]


# ----------------------------------------------------------------------------- committed fixtures


def _readme_table() -> dict[str, tuple[int, float, float]]:
    table = {}
    for line in (SPEECH / "README.md").read_text().splitlines():
        m = re.match(r"\| (unlabeled|keywords|digits) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            table[m.group(1)] = (int(m.group(2)), float(m.group(3)), float(m.group(4)))
    return table


def test_fixtures_match_readme_and_load():
    table = _readme_table()
    assert table.keys() == {"unlabeled", "keywords", "digits"}
    assert table["unlabeled"][0] == 48 and table["keywords"][0] == 60 and table["digits"][0] == 60

    sets = {
        "unlabeled": list_audio_dir(SPEECH / "unlabeled"),
        "keywords": list_audio_dir(SPEECH / "keywords"),
        "digits": list_audio_dir(SPEECH / "digits"),
    }
    total_bytes = 0
    for name, rows in sets.items():
        count, lo, hi = table[name]
        assert len(rows) == count, name
        res = scan_audio([r["path"] for r in rows], SR, min_samples=receptive_field(BASE_KERNEL, BASE_STRIDE))
        secs = np.array([n for _, n in res.good]) / SR
        assert round(secs.min(), 2) == lo and round(secs.max(), 2) == hi, name
        for r in rows:
            assert sf.info(r["path"]).samplerate == SR and sf.info(r["path"]).channels == 1
            total_bytes += os.path.getsize(r["path"])
    assert total_bytes < 6e6
    assert 1.5 <= table["unlabeled"][1] and table["unlabeled"][2] <= 5.0

    # Nested voice folders: recursive search, no class labels inferred.
    assert all(set(r) == {"path"} for r in sets["unlabeled"])
    assert len({os.path.dirname(r["path"]) for r in sets["unlabeled"]}) == 12
    assert {r["label"] for r in sets["keywords"]} == {"yes", "no", "up", "down", "stop"}
    assert all(sum(r["label"] == k for r in sets["keywords"]) == 12 for k in ("yes", "no", "up", "down", "stop"))
    words = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    for r in sets["digits"]:
        assert set(r) == {"path", "transcription"}
        tokens = r["transcription"].split(" ")
        assert 2 <= len(tokens) <= 4 and set(tokens) <= words

    wave = load_audio(sets["digits"][0]["path"], SR)
    assert wave.dtype == np.float32 and np.abs(wave).max() > 0.1  # real signal, not silence


# ----------------------------------------------------------------------------- bucketing


def _padded(batch, lens):
    return max(lens[i] for i in batch) * len(batch)


def test_duration_batches_covers_once_and_respects_budget():
    lens = np.random.default_rng(0).integers(400, 250_000, size=1000)
    max_len, budget = 160_000, 1_000_000
    cropped = np.minimum(lens, max_len)
    batches = duration_batches(lens, max_batch_samples=budget, max_length=max_len, seed=3, epoch=0, bucket_size=256)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(_padded(b, cropped) <= budget for b in batches)
    # Length grouping pays off: padding waste is small versus random batching.
    useful = cropped.sum()
    padded = sum(_padded(b, cropped) for b in batches)
    assert padded / useful < 1.1
    assert max(_padded(b, cropped) for b in batches) > 0.8 * budget  # batches are actually packed


def test_duration_batches_deterministic_per_seed_epoch():
    lens = np.random.default_rng(1).integers(1000, 100_000, size=300)
    kw = dict(max_batch_samples=400_000, bucket_size=100)
    a = duration_batches(lens, seed=7, epoch=2, **kw)
    assert a == duration_batches(lens, seed=7, epoch=2, **kw)
    assert a != duration_batches(lens, seed=7, epoch=3, **kw)
    assert a != duration_batches(lens, seed=8, epoch=2, **kw)
    plain = duration_batches(lens, shuffle=False, **kw)
    assert plain == duration_batches(lens, shuffle=False, seed=99, epoch=5, **kw)
    assert _padded(plain[0], lens) >= _padded(plain[-1], lens) or len(plain[-1]) < len(plain[0])
    assert max(lens[plain[0]]) == lens.max()


def test_duration_batches_fixed_batch_size_groups_lengths():
    lens = np.random.default_rng(2).integers(1000, 100_000, size=103)
    batches = duration_batches(lens, batch_size=8, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert sorted(len(b) for b in batches) == [7] + [8] * 12
    spread = np.mean([lens[b].max() - lens[b].min() for b in batches])
    assert spread < 0.2 * (lens.max() - lens.min())


def test_duration_batches_errors():
    with pytest.raises(ValueError, match="exactly one"):
        duration_batches([1, 2], max_batch_samples=10, batch_size=2)
    with pytest.raises(ValueError, match="exceeds max_batch_samples"):
        duration_batches([100, 5000], max_batch_samples=1000)
    assert duration_batches([100, 5000], max_batch_samples=1000, max_length=1000, shuffle=False) == [[1], [0]]


# 7 files at 1 kHz; longest first: 1 (3.0 s), 3 (2.5 s), 5 (2.0 s), 2 (1.2 s), 4 (0.8 s), 0 (0.5 s), 6 (0.4 s).
PLAN_LENS = [500, 3000, 1200, 2500, 800, 2000, 400]


def _plan(**kw):
    args = dict(batch_size=3, max_batch_seconds=None, sampling_rate=1000, max_length=None, shuffle=False)
    return audio_batch_plan(PLAN_LENS, **{**args, **kw})


def test_audio_batch_plan_count_mode():
    assert _plan() == [[1, 3, 5], [2, 4, 0], [6]]
    assert _plan(max_batch_seconds=0) == [[1, 3, 5], [2, 4, 0], [6]]  # 0 means "by count", like None
    shuffled = _plan(shuffle=True, seed=4, epoch=1)
    assert sorted(len(b) for b in shuffled) == [1, 3, 3] and sorted(i for b in shuffled for i in b) == list(range(7))
    assert shuffled == _plan(shuffle=True, seed=4, epoch=1)


def test_audio_batch_plan_seconds_mode_packs_to_the_budget():
    # 5 s = 5000 samples of padded batch: 3000 alone, 2500 + 2000, then 1200 * 4 = 4800.
    assert _plan(max_batch_seconds=5.0) == [[1], [3, 5], [2, 4, 0, 6]]
    assert _plan(max_batch_seconds=5.0, sampling_rate=2000) == [[1, 3, 5], [2, 4, 0, 6]]  # budget 10000 samples
    # Cropped to 2 s, the 3 s and 2.5 s files count as 2000 samples each.
    assert _plan(max_batch_seconds=5.0, max_length=2000) == [[1, 3], [5, 2], [4, 0, 6]]
    # A file longer than the budget cannot be batched uncropped; cropped, it sits alone in its batch.
    with pytest.raises(ValueError, match="exceeds max_batch_samples"):
        _plan(max_batch_seconds=2.0)
    assert _plan(max_batch_seconds=2.0, max_length=2000)[:3] == [[1], [3], [5]]

    lens = np.random.default_rng(5).integers(400, 60_000, size=500)
    for seed, epoch in [(0, 0), (1, 3)]:
        batches = audio_batch_plan(lens, batch_size=8, max_batch_seconds=3.0, sampling_rate=16_000, max_length=40_000,
                                   seed=seed, epoch=epoch)
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert all(_padded(b, np.minimum(lens, 40_000)) <= 48_000 for b in batches)
        assert all(len(b) == 1 for b in batches if lens[b].max() > 24_000)  # over half the budget: alone


def test_audio_batch_plan_balanced_across_processes():
    # ceil(7 / 3) = 3 batches of near-equal size, longest first; rounded up to a multiple of the process count.
    assert _plan(balance_across=1) == [[1, 3, 5], [2, 4], [0, 6]]
    assert _plan(balance_across=2) == [[1, 3], [5, 2], [4, 0], [6]]
    assert _plan(balance_across=8) == [[1, 3, 5], [2, 4], [0, 6]]  # fewer files than processes: not rounded
    with pytest.raises(ValueError, match="balance_across"):
        _plan(balance_across=2, max_batch_seconds=5.0)
    with pytest.raises(ValueError, match="balance_across"):
        _plan(balance_across=2, shuffle=True)


# ----------------------------------------------------------------------------- encoder geometry & transforms


def test_receptive_field_base():
    assert receptive_field(BASE_KERNEL, BASE_STRIDE) == 400
    assert num_frames(400, BASE_KERNEL, BASE_STRIDE) == 1
    assert num_frames(399, BASE_KERNEL, BASE_STRIDE) == 0
    assert num_frames(16000, BASE_KERNEL, BASE_STRIDE) == 49  # 20 ms hop at 16 kHz


@pytest.mark.parametrize("kernel,stride", [(BASE_KERNEL, BASE_STRIDE), ((10, 3, 2), (5, 2, 2)), ((4, 4), (3, 1))])
def test_num_frames_matches_transformers(kernel, stride):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8,) * len(kernel), conv_kernel=kernel, conv_stride=stride,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )
    model = Wav2Vec2Model(config).eval()
    rf = receptive_field(kernel, stride)
    lengths = torch.tensor([rf, rf + 1, rf + 7, 1000, 4321, 16000])
    expected = model._get_feat_extract_output_lengths(lengths)
    assert torch.equal(num_frames(lengths, kernel, stride), expected)
    assert num_frames(lengths.numpy(), kernel, stride).tolist() == expected.tolist()
    assert [num_frames(int(n), kernel, stride) for n in lengths] == expected.tolist()
    # And the real encoder: rf samples give exactly one frame; one fewer crashes the conv stack,
    # which is why scan_audio rejects files shorter than min_samples=receptive_field.
    with torch.no_grad():
        assert model.feature_extractor(torch.zeros(1, rf)).shape[-1] == 1
        assert model.feature_extractor(torch.zeros(1, 4321)).shape[-1] == num_frames(4321, kernel, stride)
        with pytest.raises(RuntimeError):
            model.feature_extractor(torch.zeros(1, rf - 1))


def test_normalize_matches_wav2vec2_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    wave = (np.random.default_rng(3).standard_normal(12345) * 0.1 + 0.05).astype(np.float32)
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=SR, return_attention_mask=True)
    expected = fe(wave, sampling_rate=SR, return_tensors="np").input_values[0]
    out = normalize(wave)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-3


def test_random_crop():
    wave = np.arange(1000, dtype=np.float32)
    g = torch.Generator().manual_seed(0)
    crops = [random_crop(wave, 100, g) for _ in range(20)]
    for c in crops:
        assert c.shape == (100,)
        np.testing.assert_array_equal(c, np.arange(c[0], c[0] + 100))  # contiguous slice
    assert len({int(c[0]) for c in crops}) > 5  # offsets vary
    g2 = torch.Generator().manual_seed(0)
    assert [int(random_crop(wave, 100, g2)[0]) for _ in range(20)] == [int(c[0]) for c in crops]
    assert random_crop(wave, 1000, g) is wave
    t = torch.arange(2 * 500).reshape(2, 500)
    assert random_crop(t, 64, g).shape == (2, 64)


def test_streamed_folder_is_listed_not_scanned_and_sharded_across_processes(tmp_path):
    """streaming + train_dir: the files are only listed (a bad one is not found before training), in one
    seeded order; the held-out validation files are scanned; 2 processes read disjoint halves."""
    from datasets.distributed import split_dataset_by_node

    from hfssl.objectives.wav2vec2.config import Wav2Vec2PretrainConfig
    from hfssl.data.audio.datasets import AudioStream
    from hfssl.data.audio.splits import build_audio_splits

    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(10):
        sf.write(folder / f"u{i}.wav", np.full(800 + 100 * i, 0.1 * (i + 1), dtype=np.float32), 16000)
    (folder / "broken.wav").write_bytes(b"not audio at all")
    cfg = Wav2Vec2PretrainConfig(train_dir=str(folder), streaming=True, max_steps=1, validation_split_percentage=20,
                                 output_dir=str(tmp_path / "out"))
    train, validation, report = build_audio_splits(cfg, None, min_samples=400)
    assert isinstance(train, AudioStream) and report["train"] == {"total": 9, "streamed": True, "held_out": 2}
    streamed = [ex["audio"] for ex in train.stream]
    assert str(folder / "broken.wav") in streamed  # listed, checked only when read
    assert sorted(streamed) != streamed  # shuffled (folders are often sorted by speaker) ...
    again, _, _ = build_audio_splits(cfg, None, min_samples=400)
    assert [ex["audio"] for ex in again.stream] == streamed  # ... in the same seeded order every time
    assert len(validation) == 2 and not {r["path"] for r in validation.rows} & set(streamed)
    halves = [[ex["audio"] for ex in split_dataset_by_node(train.stream, rank, 2)] for rank in (0, 1)]
    assert halves[0] and halves[1] and not set(halves[0]) & set(halves[1])
    assert sorted(halves[0] + halves[1]) == sorted(streamed)


def test_stream_lists_each_skipped_file_once_across_passes_and_resumes(tmp_path):
    import datasets

    from hfssl.data.audio.datasets import AudioStream

    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    sf.write(good, np.full(1600, 0.1, dtype=np.float32), 16000)
    bad.write_bytes(b"")
    stream = datasets.Dataset.from_dict({"audio": [str(good), str(bad)]}).to_iterable_dataset()
    report = tmp_path / "out" / "skipped_audio_stream.tsv"
    first = AudioStream(stream, "audio", 16000, 400, None, "skip", "folder", str(report))
    for _ in range(2):  # two passes over the stream
        assert [ex["input_values"].shape[0] for ex in first] == [1600]
    resumed = AudioStream(stream, "audio", 16000, 400, None, "skip", "folder", str(report))  # a new process
    assert len(list(resumed)) == 1
    lines = report.read_text().splitlines()
    assert lines[0] == "path\treason" and len(lines) == 2 and lines[1].startswith(f"{bad}\tempty")
    strict = AudioStream(stream, "audio", 16000, 400, None, "error", "folder")
    with pytest.raises(Exception, match=r"bad\.wav: empty.*found while streaming"):
        list(strict)


def test_streamed_dataset_with_a_validation_split_needs_no_torchcodec(tmp_path):
    """A streamed `dataset_name` with a validation split: its first examples become a scanned validation
    set. Building it must not re-encode the audio (datasets would need torchcodec + FFmpeg for that)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hfssl.data.audio.splits import build_audio_splits
    from hfssl.objectives.wav2vec2.config import Wav2Vec2PretrainConfig

    clips = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "speech" / "unlabeled").rglob("*.flac"))[:6]
    hf_features = {"info": {"features": {"audio": {"_type": "Audio"}, "speaker": {"dtype": "string", "_type": "Value"}}}}
    for split, part in (("train", clips[:4]), ("validation", clips[4:])):
        table = pa.table({"audio": [{"bytes": p.read_bytes(), "path": p.name} for p in part], "speaker": [p.parent.name for p in part]})
        (tmp_path / "hub" / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(hf_features)}),
                       tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet")
    cfg = Wav2Vec2PretrainConfig(dataset_name=str(tmp_path / "hub"), streaming=True, max_steps=2, output_dir=str(tmp_path / "out"))
    train, validation, report = build_audio_splits(cfg, None, 400)
    assert report["validation"]["kept"] == 2 and len(validation) == 2
    expected = load_audio(clips[4], 16000)
    assert np.allclose(validation.decode(0), expected)  # the first validation clip, decoded from its bytes


def test_log_counts_long_files_among_those_kept_for_training(tmp_path, caplog):
    """The 'N of them longer than' count and the report's long / hours are over the training files left after
    the hold-out, not over all files scanned (the log read "340 files, 378 of them longer" on the payoff set)."""
    import logging

    from hfssl.objectives.wav2vec2.config import Wav2Vec2PretrainConfig
    from hfssl.data.audio.splits import build_audio_splits

    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(10):  # every file is 0.5 s, longer than the 0.1 s crop
        sf.write(folder / f"u{i}.wav", np.full(8000, 0.1, dtype=np.float32), 16000)
    cfg = Wav2Vec2PretrainConfig(train_dir=str(folder), max_steps=1, validation_split_percentage=20,
                                 max_duration_in_seconds=0.1, output_dir=str(tmp_path / "out"))
    with caplog.at_level(logging.INFO, logger="hfssl.data.audio.splits"):
        train, validation, report = build_audio_splits(cfg, None, min_samples=400)
    assert len(train) == 8 and len(validation) == 2
    assert report["train"]["kept"] == 10 and report["train"]["held_out"] == 2  # the scan's count, and how many of them
    assert report["train"]["long"] == 8 and report["train"]["hours"] == pytest.approx(8 * 0.5 / 3600)  # what is trained on
    assert report["validation"]["long"] == 2 and report["validation"]["hours"] == pytest.approx(2 * 0.5 / 3600)
    assert "Training audio: 8 files (0.00 h), 8 of them longer than 0.1 s" in caplog.text


def test_resume_checks_max_batch_seconds_not_the_unused_batch_size(tmp_path):
    """Duration-bucketed batches (max_batch_seconds) are decided by that budget: resuming with another one would
    silently replay other batches, so it is refused; per_device_train_batch_size plays no part then, so changing it
    is not (it was the other way round)."""
    from types import SimpleNamespace

    from hfssl.errors import TrainingStopped
    from hfssl.loop_state import check_same_run_geometry

    saved = {"step": 4, "seed": 1, "global_batch_size": 8, "per_device_train_batch_size": 8, "world_size": 1,
             "gradient_accumulation_steps": 1, "max_batch_seconds": 60.0}

    def cfg(**kw):
        return SimpleNamespace(**{"seed": 1, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                                  "max_batch_seconds": 60.0, **kw})

    check_same_run_geometry(saved, tmp_path, cfg(per_device_train_batch_size=4), 1)  # unused: accepted
    with pytest.raises(TrainingStopped, match="max_batch_seconds 60.0; this run has 30.0.*--max_batch_seconds 60.0"):
        check_same_run_geometry(saved, tmp_path, cfg(max_batch_seconds=30.0), 1)
    with pytest.raises(TrainingStopped, match="1 batches per update; this run has 2"):
        check_same_run_geometry(saved, tmp_path, cfg(gradient_accumulation_steps=2), 1)
    check_same_run_geometry({**saved, "world_size": 2}, tmp_path, cfg(gradient_accumulation_steps=2), 1)  # 2 x 1 = 1 x 2
    older = {k: v for k, v in saved.items() if k != "max_batch_seconds"}  # checkpoints written before it was recorded
    with pytest.raises(TrainingStopped, match="global batch size 8"):
        check_same_run_geometry(older, tmp_path, cfg(per_device_train_batch_size=4, max_batch_seconds=None), 1)


def test_check_crop_length_names_the_key_and_the_minimum():
    # (what SpeechTask and build_audio_splits call with max_length_seconds / max_duration_in_seconds)
    from hfssl.data.audio.splits import check_crop_length
    from hfssl.errors import ConfigError

    check_crop_length("max_length_seconds", 0.025, 400, 16000, 400)  # exactly one frame: fine
    with pytest.raises(ConfigError, match=r"max_length_seconds 0\.01 crops audio to 160 samples at 16000 Hz, fewer than the "
                                          r"560 samples .* at least 0\.035\.$"):
        check_crop_length("max_length_seconds", 0.01, 160, 16000, 560)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_validation_folder_without_usable_audio_is_an_error_not_silently_none(tmp_path, streaming):
    """Pretraining used to log "validation: none" and train on; fine-tuning already refused it."""
    from hfssl.data.audio.splits import build_audio_splits
    from hfssl.errors import DataError
    from hfssl.objectives.wav2vec2.config import Wav2Vec2PretrainConfig

    train, val = tmp_path / "train", tmp_path / "val"
    train.mkdir()
    val.mkdir()
    for i in range(3):
        _write_good(train / f"u{i}.wav")
    cfg = Wav2Vec2PretrainConfig(train_dir=str(train), validation_dir=str(val), on_bad_audio="skip", streaming=streaming,
                                 max_steps=1, output_dir=str(tmp_path / "out"))
    with pytest.raises(DataError, match=rf"No audio files found for the validation split in '{re.escape(str(val))}'"):
        build_audio_splits(cfg, None, 400)
    (val / "bad.wav").write_bytes(b"")  # every file bad, skipped
    with pytest.raises(DataError, match=rf"All 1 validation audio files in '{re.escape(str(val))}' are bad"):
        build_audio_splits(cfg, str(tmp_path / "out"), 400)


def test_a_metadata_csv_saved_with_a_bom_is_read(tmp_path):
    # Excel's "CSV UTF-8" writes a BOM: the first column was read as '\ufefffile_name' and "not found".
    _write_good(tmp_path / "a.wav")
    (tmp_path / "metadata.csv").write_bytes("file_name,transcription\na.wav,héllo\n".encode("utf-8-sig"))
    assert list_audio_dir(tmp_path) == [{"path": str(tmp_path / "a.wav"), "transcription": "héllo"}]


def test_audio_the_metadata_does_not_name_is_listed_in_a_warning(tmp_path, caplog):
    """A clip without a metadata row (e.g. a CTC folder whose transcript list is behind) is not used: it used to be
    dropped without a word."""
    for name in ("a.wav", "b.wav", "c.wav"):
        _write_good(tmp_path / name)
    (tmp_path / "metadata.csv").write_text("file_name,transcription\na.wav,one\nc.wav,three\n")
    assert [os.path.basename(r["path"]) for r in list_audio_dir(tmp_path)] == ["a.wav", "c.wav"]
    assert "names 2 audio files; 1 more in" in caplog.text and "are not used (e.g. b.wav)" in caplog.text
    caplog.clear()
    (tmp_path / "metadata.csv").write_text("file_name,transcription\na.wav,one\nb.wav,two\nc.wav,three\n")
    list_audio_dir(tmp_path)
    assert "not used" not in caplog.text


def test_a_broken_class_folder_layout_is_explained(tmp_path):
    """Class folders that do not form <label>/x.flac were listed unlabeled and then failed with "give class
    subfolders" though the user had; now the layout problem is named."""
    from hfssl.data.audio.files import class_layout_problem

    for label in ("no", "yes"):
        (tmp_path / label).mkdir()
        _write_good(tmp_path / label / "a.wav")
    assert class_layout_problem(tmp_path) is None  # a good layout
    _write_good(tmp_path / "stray.wav")
    assert "'stray.wav' (1 audio file(s) in all) is at the top level next to the class folders no, yes" in class_layout_problem(tmp_path)
    (tmp_path / "stray.wav").unlink()
    (tmp_path / "yes" / "sub").mkdir()
    _write_good(tmp_path / "yes" / "sub" / "b.wav")
    assert f"'{os.path.join('yes', 'sub', 'b.wav')}' (1 audio file(s) in all) is in a subfolder" in class_layout_problem(tmp_path)
    for f in (tmp_path / "yes" / "sub" / "b.wav", tmp_path / "no" / "a.wav"):
        f.unlink()
    assert class_layout_problem(tmp_path) == "there is only one class folder 'yes': classification needs at least two"
