"""wav2vec 2.0 pretraining through the real CLI: learning on real speech, the saved model, bad audio in both
modes, and kill -9 then resume giving bitwise the same per-step losses (Gumbel temperature included)."""

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ONE_THREAD, ROOT, W2V2_RUN, read_log, run_cli, train_losses

UNLABELED = ROOT / "tests" / "fixtures" / "speech" / "unlabeled"
STEPS = 48
RECIPE = ROOT / "recipes" / "wav2vec2" / "tiny-cpu.yaml"
RUN = W2V2_RUN
ENV = ONE_THREAD


@pytest.fixture(scope="module")
def uninterrupted(tiny_w2v2):
    return tiny_w2v2


def _rows(out):
    return [r for r in read_log(out) if "loss" in r]


def test_tiny_recipe_learns_and_saves_a_loadable_model(uninterrupted):
    from transformers import AutoModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    out = uninterrupted
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["contrastive_loss"]) for r in rows)
    chance = math.log(1 + 10)  # cross-entropy of uniform logits over the positive and 10 negatives
    first = np.mean([r["contrastive_loss"] for r in rows[:8]])
    last = np.mean([r["contrastive_loss"] for r in rows[-8:]])
    assert last < first - 0.05 and last < chance - 0.05, (first, last, chance)
    assert np.mean([r["accuracy"] for r in rows[-8:]]) > 1.5 / 11  # well above chance (1/11)
    for g in (0, 1):  # codebook far from collapse (minimum 1 code per group, maximum 16)
        assert min(r[f"perplexity_g{g}"] for r in rows[-8:]) > 2.0  # collapse threshold is 1.5
    temps = [r["gumbel_temperature"] for r in rows]
    assert temps[0] == 1.0 and all(a > b for a, b in zip(temps, temps[1:]))  # 1.0 * 0.99**step
    assert all(r["grad_norm"] is not None and math.isfinite(r["grad_norm"]) for r in rows)

    encoder = Wav2Vec2Model.from_pretrained(out)
    auto = AutoModel.from_pretrained(out)
    assert isinstance(auto, Wav2Vec2Model) and encoder.config.mask_time_prob == 0.65  # never the 0.05 default
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(out)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["sampling_rate"] == 16000 and pre["do_normalize"] is True
    assert pre["return_attention_mask"] == (encoder.config.feat_extract_norm == "layer")
    wave = sf.read(next(UNLABELED.rglob("*.flac")))[0]
    hidden = auto(**extractor(wave, sampling_rate=16000, return_tensors="pt")).last_hidden_state
    assert hidden.shape[-1] == encoder.config.hidden_size and hidden.isfinite().all()

    preflight = json.loads((out / "preflight.json").read_text())
    assert 0.35 < preflight["masking"]["masked_fraction"] < 0.65 and preflight["masking"]["mean_span_length"] > 10
    assert preflight["data"]["train"]["total"] == 48
    card = (out / "README.md").read_text()
    assert "Hours of audio seen" in card and "masked" in card


def _start(out: Path):
    cmd = [sys.executable, str(ROOT / "run_pretrain.py"), *map(str, RUN), "--output_dir", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, **ENV})


def test_kill_9_then_resume_gives_the_same_losses(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    proc = _start(out)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (out / "training_log.jsonl").exists() and any(r["step"] >= 11 for r in _rows(out)):
            break
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill; the test proves nothing"
    killed_at = max(train_losses(out))
    run_cli("run_pretrain.py", [*RUN, "--output_dir", out, "--resume_from_checkpoint", "latest"], env=ENV)
    resumed, full = _rows(out), _rows(uninterrupted)
    assert killed_at < STEPS and [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(resumed, full):  # bitwise: data order, crops, masks, negatives, dropout, Gumbel noise and temperature
        assert (a["loss"], a["contrastive_loss"], a["gumbel_temperature"]) == (b["loss"], b["contrastive_loss"], b["gumbel_temperature"]), a["step"]


@pytest.fixture
def bad_audio_dir(tmp_path):
    """4 good fixture files and 4 bad ones: garbage bytes, empty, NaN samples, shorter than the receptive field."""
    data = tmp_path / "audio"
    data.mkdir()
    for src in sorted(UNLABELED.rglob("*.flac"))[:4]:
        shutil.copy(src, data / src.name)
    (data / "garbage.flac").write_bytes(np.random.default_rng(0).bytes(4000))
    (data / "empty.wav").write_bytes(b"")
    nan = np.zeros(16000, dtype=np.float32)
    nan[123] = np.nan
    sf.write(data / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(data / "short.wav", np.zeros(300, dtype=np.float32), 16000)  # receptive field is 400 samples
    return data


BAD = {"garbage.flac": "cannot decode", "empty.wav": "empty", "nan.wav": "NaN", "short.wav": "too short"}


def test_bad_audio_error_mode_stops_before_training_naming_each_file(bad_audio_dir, tmp_path):
    out = tmp_path / "err"
    proc = run_cli("run_pretrain.py", [RECIPE, "--train_dir", bad_audio_dir, "--output_dir", out, "--on_bad_audio", "error"],
                   env=ENV, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "4 of 8 audio files failed validation" in proc.stderr
    for name, reason in BAD.items():
        line = next(l for l in proc.stderr.splitlines() if name in l)
        assert str(bad_audio_dir / name) in line and reason in line
    assert not (out / "training_log.jsonl").exists()  # nothing trained


def test_bad_audio_skip_mode_lists_them_and_counts_add_up(bad_audio_dir, tmp_path):
    out = tmp_path / "skip"
    proc = run_cli("run_pretrain.py", [RECIPE, "--train_dir", bad_audio_dir, "--output_dir", out, "--on_bad_audio", "skip",
                                       "--validation_split_percentage", 0, "--max_steps", 2, "--per_device_train_batch_size", 2,
                                       "--save_steps", 0], env=ENV)
    lines = (out / "skipped_audio.tsv").read_text().splitlines()
    assert lines[0] == "# skipped 4 audio file(s)" and lines[1] == "path\treason"
    listed = dict(l.split("\t") for l in lines[2:])
    assert set(listed) == {str(bad_audio_dir / n) for n in BAD}
    for name, reason in BAD.items():
        assert reason in listed[str(bad_audio_dir / name)]
    assert "train audio: 4 kept + 4 skipped = 8 files" in proc.stderr
    report = json.loads((out / "preflight.json").read_text())["data"]["train"]
    assert (report["kept"], report["skipped"], report["total"]) == (4, 4, 8)
    assert [r["step"] for r in _rows(out)] == [1, 2] and all(math.isfinite(r["loss"]) for r in _rows(out))


STREAM = [RECIPE, "--streaming", "true", "--validation_split_percentage", 0, "--max_steps", 4,
          "--per_device_train_batch_size", 2, "--save_steps", 0, "--logging_steps", 1]


def test_streaming_a_folder_skips_bad_files_as_they_are_read(bad_audio_dir, tmp_path):
    """--streaming with train_dir: no scan before training; the 4 good files make 2 updates per pass,
    so 4 updates read the folder twice, and each bad file is listed once with its reason."""
    out = tmp_path / "stream"
    run_cli("run_pretrain.py", [*STREAM, "--train_dir", bad_audio_dir, "--output_dir", out, "--on_bad_audio", "skip"], env=ENV)
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r["epoch"] for r in rows] == [0, 0, 1, 1]
    assert all(math.isfinite(r["loss"]) for r in rows)
    lines = (out / "skipped_audio_stream.tsv").read_text().splitlines()
    assert lines[0] == "path\treason" and len(lines) == 1 + len(BAD)
    listed = dict(l.split("\t") for l in lines[1:])
    assert set(listed) == {str(bad_audio_dir / n) for n in BAD}
    for name, reason in BAD.items():
        assert reason in listed[str(bad_audio_dir / name)]
    preflight = json.loads((out / "preflight.json").read_text())
    assert preflight["masking"]["lengths_from"].startswith("max_duration_in_seconds crops")
    assert preflight["data"]["train"] == {"total": 8, "streamed": True, "held_out": 0}


def test_streaming_a_folder_in_error_mode_stops_at_the_first_bad_file(bad_audio_dir, tmp_path):
    proc = run_cli("run_pretrain.py", [*STREAM, "--train_dir", bad_audio_dir, "--output_dir", tmp_path / "err",
                                       "--on_bad_audio", "error"], env=ENV, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = next(l for l in proc.stderr.splitlines() if l.startswith("error:"))
    assert "found while streaming" in line
    assert any(str(bad_audio_dir / name) in line and reason in line for name, reason in BAD.items()), line


def test_two_processes_stream_a_folder_and_each_lists_its_own_skips(bad_audio_dir, tmp_path):
    """torchrun, 2 processes: each reads its half of the listed files and writes the bad ones it met to
    its own skipped_audio_stream.rank<k>.tsv; together they list each bad file exactly once."""
    out = tmp_path / "ddp-stream"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519"]
    run_cli("run_pretrain.py", [*STREAM, "--per_device_train_batch_size", 1, "--train_dir", bad_audio_dir,
                                "--output_dir", out, "--on_bad_audio", "skip"], env=ENV, launcher=torchrun)
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in rows)
    listed = []
    for rank in (0, 1):
        report = out / f"skipped_audio_stream.rank{rank}.tsv"
        if report.exists():
            lines = report.read_text().splitlines()
            assert lines[0] == "path\treason"
            listed += [l.split("\t")[0] for l in lines[1:]]
    assert sorted(listed) == sorted(str(bad_audio_dir / n) for n in BAD)
    assert not (out / "skipped_audio_stream.tsv").exists()
