"""Audio loading, validation and duration bucketing for speech pretraining.

Pip-only: decoding goes through ``soundfile`` (libsndfile: wav, flac, ogg, mp3),
resampling through ``torchaudio.functional.resample``. No ffmpeg / sox needed.

Typical flow::

    rows = list_audio_dir("data/train")                   # or read_manifest("train.csv", "audio")
    result = scan_audio([r["path"] for r in rows], 16_000,
                        min_samples=receptive_field(cfg.conv_kernel, cfg.conv_stride),
                        on_bad_audio="skip")
    write_skipped_report(result.bad, output_dir)
    plan = duration_batches([n for _, n in result.good], max_batch_samples=..., max_length=...,
                            seed=seed, epoch=epoch)
    wave = random_crop(normalize(load_audio(path, 16_000)), max_length, generator)
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AUDIO_EXTENSIONS: tuple[str, ...] = (".flac", ".mp3", ".ogg", ".wav")
"""Lower-case file extensions that libsndfile (via soundfile) decodes; matched case-insensitively."""

METADATA_FILENAMES: tuple[str, ...] = ("metadata.csv", "metadata.jsonl")
"""Files that turn a directory into a Hugging Face ``audiofolder`` with metadata columns."""

# Frames decoded per read while scanning: bounds memory for hour-long files (~4 MB float32 mono).
_SCAN_BLOCK_FRAMES = 1 << 20
# libsndfile raises LibsndfileError (a RuntimeError); mp3/ogg decoders and truncated files can
# surface as other errors from the same call.
_DECODE_ERRORS = (RuntimeError, ValueError, OSError, EOFError, TypeError)
_MAX_LISTED_BAD = 50


class BadAudioError(ValueError):
    """An audio file that cannot be used for training.

    Attributes:
        path: the file.
        reason: human-readable cause, e.g. ``"contains NaN/inf samples (3 of 16000)"``.
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AudioScanError(ValueError):
    """Raised by ``scan_audio(on_bad_audio="error")``; lists every bad file.

    Attributes:
        bad: list of ``(path, reason)`` for all bad files (the message lists up to 50).
        total: number of files scanned.
    """

    def __init__(self, bad: list[tuple[str, str]], total: int):
        self.bad = list(bad)
        self.total = total
        lines = [f"  {p}: {r}" for p, r in self.bad[:_MAX_LISTED_BAD]]
        if len(self.bad) > _MAX_LISTED_BAD:
            lines.append(f"  ... and {len(self.bad) - _MAX_LISTED_BAD} more (see AudioScanError.bad)")
        super().__init__(
            f"{len(self.bad)} of {total} audio files failed validation "
            f"(set on_bad_audio='skip' to drop them and write skipped_audio.tsv):\n" + "\n".join(lines)
        )


@dataclass
class ScanResult:
    """Outcome of ``scan_audio``.

    Attributes:
        good: ``(path, num_samples)`` in input order; ``num_samples`` is the FULL length at the
            target sampling rate (files longer than the max duration are kept, cropped at batch time).
        bad: ``(path, reason)`` in input order.
        num_long: how many good files exceed ``max_duration_in_seconds`` (will be randomly cropped).
    """

    good: list[tuple[str, int]] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    num_long: int = 0


# ----------------------------------------------------------------------------- files & manifests


def _is_audio(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def find_audio_files(root: str | os.PathLike) -> list[str]:
    """All audio files under ``root``, recursively, as sorted paths (``root`` joined with the relative path).

    Hidden files and folders (name starting with ".") are skipped, so ``.ipynb_checkpoints`` and
    editor droppings never become training data. Sorting is by the full path string, so the
    result is identical on every machine and filesystem.

    Raises:
        NotADirectoryError: ``root`` is not a directory.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"audio root is not a directory: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and _is_audio(f))
    return sorted(found)


def _resolve(base_dir: str, value: str) -> str:
    value = os.path.expanduser(value)
    return os.path.normpath(value if os.path.isabs(value) else os.path.join(base_dir, value))


def _read_table(path: str) -> tuple[list[dict], list[str]]:
    """Rows and column names of a .csv / .tsv / .jsonl / .json manifest."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
            rows = list(reader)
            columns = list(reader.fieldnames or [])
        return rows, columns
    if ext in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for lineno, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: invalid JSON line ({e})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: every JSON record must be an object")
        columns = list(dict.fromkeys(k for r in rows for k in r))
        return rows, columns
    raise ValueError(f"{path}: unsupported manifest type '{ext}' (use .csv, .tsv, .jsonl or .json)")


def read_manifest(path: str | os.PathLike, audio_column_name: str = "path") -> list[dict]:
    """Rows of a CSV/TSV/JSONL manifest, each with a resolved ``"path"`` plus the other columns.

    The audio column's value becomes ``row["path"]`` (relative values are resolved against the
    manifest's folder, so a manifest and its audio can move together); the audio column itself
    is dropped when it is not called ``"path"``. Other columns (labels, transcriptions) pass
    through unchanged: strings for CSV, JSON types for JSONL. Files are not opened here; use
    ``scan_audio`` to validate them.

    Raises:
        ValueError: the audio column is missing (message names the file and lists the
            available columns), a row has an empty path, or the manifest also has a
            different column named "path".
    """
    path = os.fspath(path)
    rows, columns = _read_table(path)
    if audio_column_name not in columns:
        raise ValueError(
            f"{path}: audio column '{audio_column_name}' not found; available columns: "
            f"{', '.join(columns) if columns else '(none)'}"
        )
    if audio_column_name != "path" and "path" in columns:
        raise ValueError(
            f"{path}: has both '{audio_column_name}' (audio column) and a 'path' column; rename one"
        )
    base_dir = os.path.dirname(os.path.abspath(path))
    out = []
    for i, row in enumerate(rows):
        value = row.get(audio_column_name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path}: row {i + 1} has an empty or non-string '{audio_column_name}'")
        new = {k: v for k, v in row.items() if k != audio_column_name}
        out.append({"path": _resolve(base_dir, value.strip()), **new})
    return out


def list_audio_dir(root: str | os.PathLike) -> list[dict]:
    """Rows for a Hugging Face ``audiofolder``-style directory, each with ``"path"``.

    Three layouts, checked in this order:
      * ``root/metadata.csv`` or ``root/metadata.jsonl`` with a ``file_name`` column (relative
        to ``root``): rows carry ``"path"`` plus every other metadata column, in file order.
      * every audio file exactly one level down, in at least two folders
        (``root/<label>/x.flac``): rows are ``{"path", "label"}`` with label = folder name.
      * anything else: rows are ``{"path"}`` for every audio file found recursively.
    Rows from a file scan are sorted by path.

    Raises:
        NotADirectoryError / ValueError: ``root`` missing, or metadata without ``file_name``.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"audio root is not a directory: {root}")
    for name in METADATA_FILENAMES:
        meta = os.path.join(root, name)
        if os.path.isfile(meta):
            return read_manifest(meta, audio_column_name="file_name")
    files = find_audio_files(root)
    rel_dirs = [os.path.relpath(os.path.dirname(f), root) for f in files]
    one_level = bool(files) and all(d != "." and os.sep not in d for d in rel_dirs)
    if one_level and len(set(rel_dirs)) >= 2:
        return [{"path": f, "label": d} for f, d in zip(files, rel_dirs)]
    return [{"path": f} for f in files]


# ----------------------------------------------------------------------------- decoding


def _check_file(path: str) -> None:
    """Cheap checks before handing the file to libsndfile (clearer reasons than its errors)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in AUDIO_EXTENSIONS:
        raise BadAudioError(
            path, f"unsupported extension '{ext or '(none)'}' (supported: {', '.join(AUDIO_EXTENSIONS)}); "
            "convert it, e.g. `ffmpeg -i in.m4a -ac 1 -ar 16000 out.flac`"
        )
    if not os.path.exists(path):
        raise BadAudioError(path, "file not found")
    if not os.path.isfile(path):
        raise BadAudioError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise BadAudioError(path, "empty file (0 bytes)")


def resampled_length(num_samples: int, orig_sr: int, target_sr: int) -> int:
    """Length after ``torchaudio.functional.resample(orig_sr -> target_sr)`` of ``num_samples`` samples.

    Mirrors torchaudio's ``ceil(new * n / orig)`` on gcd-reduced rates, evaluated in float32 as it
    does, so lengths recorded by ``scan_audio`` equal what ``load_audio`` returns.
    """
    if orig_sr == target_sr:
        return int(num_samples)
    g = math.gcd(int(orig_sr), int(target_sr))
    orig, new = int(orig_sr) // g, int(target_sr) // g
    return int(math.ceil(np.float32(new * num_samples / orig)))


def load_audio(path: str | os.PathLike, sampling_rate: int) -> np.ndarray:
    """Decode ``path``, average channels to mono and resample to ``sampling_rate``.

    Returns:
        (N,) float32 waveform in [-1, 1] (as decoded), N = ``resampled_length(frames, sr, sampling_rate)``.

    Raises:
        BadAudioError: unsupported extension, missing or 0-byte file, undecodable bytes,
            0 samples, or NaN/inf samples. ``reason`` says which.
    """
    path = os.fspath(path)
    _check_file(path)
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)  # (N, C)
    except _DECODE_ERRORS as e:
        raise BadAudioError(path, f"cannot decode audio ({e})") from None
    if data.shape[0] == 0:
        raise BadAudioError(path, "empty (0 samples)")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    finite = np.isfinite(wave)
    if not finite.all():
        raise BadAudioError(path, f"contains NaN/inf samples ({int((~finite).sum())} of {wave.shape[0]})")
    if sr != sampling_rate:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), sr, sampling_rate).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def _scan_one(
    path: str,
    sampling_rate: int,
    min_samples: int,
    min_duration: float | None,
    max_duration: float | None,
) -> tuple[int, bool]:
    """Fully decode one file (streaming) and return (samples at target rate, is_long).

    Decoding every sample, not just the header, is what catches NaN/inf in float WAVs and
    files that are corrupt past the header; the frame count used is the decoded one.
    """
    _check_file(path)
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            frames = 0
            nonfinite = 0
            while True:
                block = f.read(_SCAN_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                frames += block.shape[0]
                finite = np.isfinite(block)
                if not finite.all():
                    # Count per time step, matching load_audio's count after mixdown.
                    nonfinite += int((~finite.all(axis=1)).sum())
    except _DECODE_ERRORS as e:
        raise BadAudioError(path, f"cannot decode audio ({e})") from None
    if frames == 0:
        raise BadAudioError(path, "empty (0 samples)")
    if nonfinite:
        raise BadAudioError(path, f"contains NaN/inf samples ({nonfinite} of {frames})")
    n = resampled_length(frames, sr, sampling_rate)
    seconds = frames / sr
    if n < min_samples:
        raise BadAudioError(
            path, f"too short: {n} samples at {sampling_rate} Hz ({seconds:.3f} s) < min_samples={min_samples} "
            "(the feature encoder's receptive field)"
        )
    if min_duration is not None and seconds < min_duration:
        raise BadAudioError(path, f"too short: {seconds:.3f} s < min_duration_in_seconds={min_duration}")
    return n, max_duration is not None and seconds > max_duration


def scan_audio(
    paths: Sequence[str | os.PathLike],
    sampling_rate: int,
    min_samples: int,
    min_duration_in_seconds: float | None = None,
    max_duration_in_seconds: float | None = None,
    on_bad_audio: Literal["error", "skip"] = "error",
    num_workers: int | None = None,
) -> ScanResult:
    """Validate every file before training and record its length at ``sampling_rate``.

    A file is bad when it has an unsupported extension, is missing or 0 bytes, cannot be decoded,
    has 0 samples, contains NaN/inf samples, is shorter than ``min_samples`` at the target rate
    (pass the feature encoder's ``receptive_field``: shorter input yields zero frames), or is
    shorter than ``min_duration_in_seconds``. Files longer than ``max_duration_in_seconds`` are
    NOT bad: they are kept with their full length and cropped at batch time (``random_crop``);
    ``ScanResult.num_long`` counts them.

    Every file is decoded in full (streamed in blocks, so memory stays bounded); libsndfile
    releases the GIL, so ``num_workers`` threads decode in parallel.

    Args:
        paths: files to check, any order; results keep this order.
        sampling_rate: target rate the model consumes, e.g. 16000.
        min_samples: minimum length at the target rate.
        min_duration_in_seconds / max_duration_in_seconds: optional duration bounds (see above).
        on_bad_audio: "error" raises ``AudioScanError`` listing all bad files with reasons;
            "skip" returns them in ``ScanResult.bad``.
        num_workers: decoding threads; default ``min(8, cpu_count)``, 0 or 1 = serial.

    Returns:
        ``ScanResult`` with ``len(good) + len(bad) == len(paths)``.
    """
    if on_bad_audio not in ("error", "skip"):
        raise ValueError(f"on_bad_audio must be 'error' or 'skip', got {on_bad_audio!r}")
    if (
        min_duration_in_seconds is not None
        and max_duration_in_seconds is not None
        and max_duration_in_seconds < min_duration_in_seconds
    ):
        raise ValueError(
            f"max_duration_in_seconds={max_duration_in_seconds} < min_duration_in_seconds={min_duration_in_seconds}"
        )
    paths = [os.fspath(p) for p in paths]
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)

    def check(path: str) -> tuple[int, bool] | str:
        try:
            return _scan_one(path, sampling_rate, min_samples, min_duration_in_seconds, max_duration_in_seconds)
        except BadAudioError as e:
            return e.reason

    if num_workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            outcomes = list(pool.map(check, paths))
    else:
        outcomes = [check(p) for p in paths]

    result = ScanResult()
    for path, outcome in zip(paths, outcomes):
        if isinstance(outcome, str):
            result.bad.append((path, outcome))
        else:
            n, is_long = outcome
            result.good.append((path, n))
            result.num_long += int(is_long)
    if result.bad and on_bad_audio == "error":
        raise AudioScanError(result.bad, total=len(paths))
    return result


def write_skipped_report(bad: Sequence[tuple[str, str]], output_dir: str | os.PathLike) -> str:
    """Write ``output_dir/skipped_audio.tsv`` and return its path.

    Format: a summary comment line ``# skipped N audio file(s)``, a ``path<TAB>reason`` header,
    then one row per bad file. Tabs/newlines inside values are replaced by spaces so every
    record stays on one line. Written even when ``bad`` is empty (N = 0), so its absence never
    has to be interpreted.
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    out = os.path.join(output_dir, "skipped_audio.tsv")

    def clean(s: str) -> str:
        return " ".join(str(s).replace("\t", " ").splitlines())

    with open(out, "w", encoding="utf-8") as f:
        f.write(f"# skipped {len(bad)} audio file(s)\n")
        f.write("path\treason\n")
        for path, reason in bad:
            f.write(f"{clean(path)}\t{clean(reason)}\n")
    return out


# ----------------------------------------------------------------------------- feature encoder geometry


def receptive_field(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> int:
    """Samples needed for ONE output frame of a stack of valid (unpadded) 1-D convolutions.

    For wav2vec2/HuBERT base, kernels (10,3,3,3,3,2,2) and strides (5,2,2,2,2,2,2) give 400
    (25 ms at 16 kHz). Inputs shorter than this produce zero frames.
    """
    if len(conv_kernel) != len(conv_stride):
        raise ValueError(f"conv_kernel has {len(conv_kernel)} layers but conv_stride has {len(conv_stride)}")
    r = 1
    for k, s in zip(reversed(conv_kernel), reversed(conv_stride)):
        r = (r - 1) * s + k
    return r


def num_frames(num_samples, conv_kernel: Sequence[int], conv_stride: Sequence[int]):
    """Output frames of the conv feature encoder for ``num_samples`` input samples.

    Same per-layer formula as transformers' ``_get_feat_extract_output_lengths``,
    ``floor((n - kernel) / stride) + 1``, except that it is clamped at 0 so inputs shorter than
    the receptive field give 0 instead of a negative count.

    Args:
        num_samples: int, or integer np.ndarray / torch.Tensor of any shape (e.g. (B,) lengths).
    Returns:
        same type/shape as ``num_samples``.
    """
    n = num_samples
    for k, s in zip(conv_kernel, conv_stride):
        n = (n - k) // s + 1
        if isinstance(n, torch.Tensor):
            n = n.clamp(min=0)
        elif isinstance(n, np.ndarray):
            n = np.maximum(n, 0)
        else:
            n = max(n, 0)
    return n


# ----------------------------------------------------------------------------- batch-time transforms


def random_crop(wave, max_samples: int, generator: torch.Generator | None = None):
    """Crop the last axis to ``max_samples`` at a uniformly random offset (fairseq-style).

    Args:
        wave: (..., N) np.ndarray or torch.Tensor.
        max_samples: crop length; waves with N <= max_samples are returned unchanged (same object).
        generator: seeded ``torch.Generator`` for reproducible offsets.
    Returns:
        (..., min(N, max_samples)) view of ``wave``.
    """
    n = wave.shape[-1]
    if n <= max_samples:
        return wave
    offset = int(torch.randint(0, n - max_samples + 1, (1,), generator=generator).item())
    return wave[..., offset : offset + max_samples]


def normalize(wave: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance normalization of one (unpadded) waveform.

    Computes ``(x - mean) / sqrt(var + 1e-7)`` in float32, exactly as
    ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does for an unpadded input.

    Args:
        wave: (N,) waveform.
    Returns:
        (N,) float32.
    """
    x = np.asarray(wave, dtype=np.float32)
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


def duration_batches(
    lengths: Sequence[int] | np.ndarray,
    max_batch_samples: int | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    bucket_size: int = 4096,
) -> list[list[int]]:
    """Plan one epoch of length-grouped batches; returns lists of dataset indices.

    Exactly one of ``max_batch_samples`` / ``batch_size``:
      * ``max_batch_samples``: each batch's padded size, ``max(cropped length) * count``, is
        <= ``max_batch_samples`` (lengths are first clipped to ``max_length``, the crop length).
      * ``batch_size``: fixed-count batches (the last one of each bucket may be smaller).

    With ``shuffle``: indices are permuted, cut into buckets of ``bucket_size``, sorted by
    length (descending) inside each bucket and packed greedily; then the batch order is
    shuffled. Larger buckets pad less but vary less between epochs. The plan depends only on
    ``(seed, epoch)``, so every rank of a distributed job computes the same one. Without
    ``shuffle``: one bucket, longest batches first (surfaces OOM on step one).

    Args:
        lengths: (N,) sample counts per item.
    Returns:
        batches whose concatenation is a permutation of ``range(N)``.

    Raises:
        ValueError: neither or both batch limits, or one (cropped) item alone exceeds
            ``max_batch_samples`` (set ``max_length`` <= ``max_batch_samples``).
    """
    if (max_batch_samples is None) == (batch_size is None):
        raise ValueError("pass exactly one of max_batch_samples or batch_size")
    if bucket_size < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError("bucket_size and batch_size must be >= 1")
    lens = np.asarray(lengths, dtype=np.int64)
    if lens.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lens.shape}")
    if max_length is not None:
        lens = np.minimum(lens, max_length)
    if max_batch_samples is not None and lens.size and lens.max() > max_batch_samples:
        raise ValueError(
            f"an item of {int(lens.max())} samples exceeds max_batch_samples={max_batch_samples}; "
            "set max_length (crop length) <= max_batch_samples"
        )
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(lens.size)
        buckets = [order[i : i + bucket_size] for i in range(0, lens.size, bucket_size)]
    else:
        rng = None
        buckets = [np.arange(lens.size)]

    batches: list[list[int]] = []
    for bucket in buckets:
        # Stable descending sort: the first item of each batch is its longest.
        idx = bucket[np.argsort(-lens[bucket], kind="stable")]
        if batch_size is not None:
            batches.extend(idx[i : i + batch_size].tolist() for i in range(0, idx.size, batch_size))
            continue
        blens = lens[idx]
        start = 0
        while start < idx.size:
            longest = max(int(blens[start]), 1)
            count = max(1, min(max_batch_samples // longest, idx.size - start))
            batches.append(idx[start : start + count].tolist())
            start += count
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
