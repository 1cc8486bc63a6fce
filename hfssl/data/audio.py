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

For training, ``build_audio_splits(cfg, output_dir, min_samples)`` does all of this from a config and
returns ``AudioDataset``s (map-style, ``.lengths`` for bucketing) whose items are decoded waveforms plus
the metadata columns (label, transcription, ...).
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

from hfssl.errors import DataError

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


class BadAudioError(DataError):
    """An audio file that cannot be used for training.

    Attributes:
        path: the file.
        reason: human-readable cause, e.g. ``"contains NaN/inf samples (3 of 16000)"``.
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AudioScanError(DataError):
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


# ----------------------------------------------------------------------------- datasets for the loop


def _decode_bytes(data: bytes, name: str, sampling_rate: int) -> np.ndarray:
    """``load_audio`` for encoded bytes held in a ``datasets`` column (``name`` is used in errors)."""
    import io

    if not data:
        raise BadAudioError(name, "empty file (0 bytes)")
    try:
        decoded, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (N, C)
    except _DECODE_ERRORS as e:
        raise BadAudioError(name, f"cannot decode audio ({e})") from None
    if decoded.shape[0] == 0:
        raise BadAudioError(name, "empty (0 samples)")
    wave = decoded.mean(axis=1, dtype=np.float32) if decoded.shape[1] > 1 else decoded[:, 0]
    finite = np.isfinite(wave)
    if not finite.all():
        raise BadAudioError(name, f"contains NaN/inf samples ({int((~finite).sum())} of {wave.shape[0]})")
    if sr != sampling_rate:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), sr, sampling_rate).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def _check_length(name: str, n: int, seconds: float, sampling_rate: int, min_samples: int,
                  min_duration: float | None, max_duration: float | None) -> bool:
    """The length rules of ``_scan_one`` for an already decoded waveform; returns is_long."""
    if n < min_samples:
        raise BadAudioError(
            name, f"too short: {n} samples at {sampling_rate} Hz ({seconds:.3f} s) < min_samples={min_samples} "
            "(the feature encoder's receptive field)"
        )
    if min_duration is not None and seconds < min_duration:
        raise BadAudioError(name, f"too short: {seconds:.3f} s < min_duration_in_seconds={min_duration}")
    return max_duration is not None and seconds > max_duration


class AudioDataset(torch.utils.data.Dataset):
    """Map-style dataset of validated audio files for the training loop.

    Args:
        rows: one dict per file with ``"path"`` and ``"num_samples"`` (full length at
            ``sampling_rate``, as recorded by ``scan_audio``) plus any metadata columns
            (``label``, ``transcription``, ...), which are passed through unchanged.
        sampling_rate: rate the waveforms are returned at.
        source: optional ``datasets.Dataset`` (audio column cast to ``Audio(decode=False)``) for rows
            whose audio is embedded bytes; such rows carry the private key ``"_index"`` into it and
            ``audio_column`` names the column.

    ``dataset[i]`` is ``{"input_values": (N,) float32, **metadata, "id": i}``: the decoded (mono,
    resampled, NOT normalized, NOT cropped) waveform; normalization and cropping are the
    collator's job because they depend on the batch seed and the feature extractor.
    ``lengths`` is the (len,) int64 array of ``num_samples`` for duration bucketing.
    """

    _PRIVATE = ("path", "num_samples", "_index")

    def __init__(self, rows: list[dict], sampling_rate: int, source=None, audio_column: str = "audio"):
        self.rows = list(rows)
        self.sampling_rate = int(sampling_rate)
        self.source = source
        self.audio_column = audio_column
        self.lengths = np.asarray([int(r["num_samples"]) for r in self.rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def hours(self) -> float:
        return float(self.lengths.sum()) / self.sampling_rate / 3600

    def decode(self, idx: int) -> np.ndarray:
        """(N,) float32 waveform of row ``idx`` at ``sampling_rate``."""
        row = self.rows[idx]
        if "_index" in row:
            return _decode_bytes(self.source[int(row["_index"])][self.audio_column]["bytes"], row["path"], self.sampling_rate)
        return load_audio(row["path"], self.sampling_rate)

    def __getitem__(self, idx: int) -> dict:
        idx = int(idx)
        if not -len(self.rows) <= idx < len(self.rows):
            raise IndexError(f"index {idx} out of range for {len(self.rows)} audio files")
        idx %= len(self.rows)
        meta = {k: v for k, v in self.rows[idx].items() if k not in self._PRIVATE}
        return {"input_values": self.decode(idx), **meta, "id": idx}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        return [self[i] for i in indices]

    def select(self, indices) -> "AudioDataset":
        """A new dataset over ``rows[i] for i in indices`` (same source)."""
        return AudioDataset([self.rows[int(i)] for i in indices], self.sampling_rate, self.source, self.audio_column)


class AudioStream(torch.utils.data.IterableDataset):
    """Streamed audio: examples decoded on the fly, in stream order.

    ``stream`` is a ``datasets.IterableDataset`` whose ``audio_column`` holds ``{"path", "bytes"}``
    (a Hub dataset with ``Audio(decode=False)``) or a file path (files on disk). A stream cannot be
    scanned before training, so bad examples are found when they arrive: ``on_bad_audio="error"``
    raises ``BadAudioError`` naming the example, ``"skip"`` drops it with a warning, counts it in
    ``skipped`` and, when ``report_path`` is set, appends ``path<TAB>reason`` to that file (once per
    example: a resumed run re-reads the stream up to its position without listing them again).
    Yields the same dicts as ``AudioDataset`` (``"id"`` is the position in this process's stream).
    """

    def __init__(self, stream, audio_column: str, sampling_rate: int, min_samples: int,
                 min_duration: float | None, on_bad_audio: str, name: str, report_path: str | None = None):
        self.stream, self.audio_column, self.sampling_rate = stream, audio_column, int(sampling_rate)
        self.min_samples, self.min_duration, self.on_bad_audio, self.name = min_samples, min_duration, on_bad_audio, name
        self.report_path = report_path
        self._listed: set[str] | None = None
        self.skipped: list[tuple[str, str]] = []

    def _report(self, path: str, reason: str) -> None:
        if self.report_path is None:
            return
        clean = lambda x: " ".join(str(x).replace("\t", " ").splitlines())  # noqa: E731
        if self._listed is None:  # what an earlier (resumed) run of this output_dir already listed
            self._listed = set()
            if os.path.exists(self.report_path):
                with open(self.report_path, encoding="utf-8") as f:
                    self._listed = {line.split("\t", 1)[0] for line in f}
            else:
                os.makedirs(os.path.dirname(self.report_path) or ".", exist_ok=True)
        if clean(path) not in self._listed:
            with open(self.report_path, "a", encoding="utf-8") as f:
                f.write(("" if self._listed else "path\treason\n") + f"{clean(path)}\t{clean(reason)}\n")
            self._listed.add(clean(path))

    def __iter__(self):
        import logging

        log = logging.getLogger(__name__)
        for i, ex in enumerate(self.stream):
            audio = ex[self.audio_column]
            if isinstance(audio, str):  # a file on disk
                audio = {"path": audio}
            if audio.get("path") and not audio.get("bytes"):  # a file: its path names it
                label = audio["path"]
            else:
                label = f"{self.name}[{i}]" + (f" ({audio.get('path')})" if audio.get("path") else "")
            try:
                if audio.get("bytes"):
                    wave = _decode_bytes(audio["bytes"], label, self.sampling_rate)
                else:
                    wave = load_audio(audio["path"], self.sampling_rate)
                _check_length(label, wave.shape[0], wave.shape[0] / self.sampling_rate, self.sampling_rate,
                              self.min_samples, self.min_duration, None)
            except BadAudioError as e:
                if self.on_bad_audio == "error":
                    raise BadAudioError(e.path, f"{e.reason} (found while streaming; on_bad_audio skip skips and lists such files)") from None
                if (e.path, e.reason) not in self.skipped:  # once per example, not once per pass
                    self.skipped.append((e.path, e.reason))
                    self._report(e.path, e.reason)
                    log.warning("Skipping bad streamed audio %s: %s", e.path, e.reason)
                continue
            meta = {k: v for k, v in ex.items() if k != self.audio_column}
            yield {"input_values": wave, **meta, "id": i}


def _scan_rows(rows: list[dict], cfg, min_samples: int, source=None) -> tuple[list[dict], list[tuple[str, str]], int]:
    """Validate rows (files or embedded bytes); returns (good rows with num_samples, bad, num_long)."""
    min_d = cfg.min_duration_in_seconds if cfg.min_duration_in_seconds > 0 else None
    max_d = cfg.max_duration_in_seconds
    sr = cfg.sampling_rate
    on_files = [r for r in rows if "_index" not in r]
    result = scan_audio([r["path"] for r in on_files], sr, min_samples=min_samples, min_duration_in_seconds=min_d,
                        max_duration_in_seconds=max_d, on_bad_audio="skip", num_workers=cfg.preprocessing_num_workers)
    lengths = dict(result.good)
    bad = list(result.bad)
    num_long = result.num_long
    good = []
    for r in rows:
        if "_index" in r:  # embedded bytes: decode in full, same rules as scan_audio
            try:
                wave = _decode_bytes(source[int(r["_index"])][cfg.audio_column_name]["bytes"], r["path"], sr)
                num_long += _check_length(r["path"], wave.shape[0], wave.shape[0] / sr, sr, min_samples, min_d, max_d)
            except BadAudioError as e:
                bad.append((e.path, e.reason))
                continue
            good.append({**r, "num_samples": int(wave.shape[0])})
        elif r["path"] in lengths:
            good.append({**r, "num_samples": lengths[r["path"]]})
    return good, bad, num_long


def _rows_from_hf(ds, column: str, name: str) -> list[dict]:
    """Rows for a ``datasets.Dataset`` whose audio column is cast to ``Audio(decode=False)``.

    Audio stored as a local file keeps its path; embedded bytes are referenced by ``"_index"``
    (read again at batch time, never held in memory).
    """
    meta_cols = [c for c in ds.column_names if c != column]
    rows = []
    for start in range(0, len(ds), 1000):
        chunk = ds[start : start + 1000]
        for j, audio in enumerate(chunk[column]):
            i = start + j
            meta = {c: chunk[c][j] for c in meta_cols}
            path = (audio or {}).get("path")
            if audio is not None and audio.get("bytes") is None and path and os.path.isfile(path):
                rows.append({"path": path, **meta})
            else:
                rows.append({"path": f"{name}[{i}]" + (f" ({path})" if path else ""), "_index": i, **meta})
    return rows


def build_audio_splits(cfg, output_dir: str | os.PathLike | None, min_samples: int):
    """Training and validation audio from ``cfg`` (``AudioDataArguments``), validated before training.

    Sources: ``train_dir`` (``list_audio_dir``: plain folders, ``<label>/`` folders, or an audiofolder
    with metadata.csv), ``train_file`` (a manifest whose ``audio_column_name`` holds paths), or
    ``dataset_name`` (``datasets.load_dataset`` with audio decoding turned off; bytes or paths are
    decoded with soundfile). Validation: ``validation_dir`` / ``validation_file`` / the dataset's
    ``validation`` split, else a seeded ``validation_split_percentage`` of the training files
    (``cfg.seed``), else none.

    Every file is decoded in full (``scan_audio``) before training: too short for ``min_samples``
    (the feature encoder's receptive field) or ``min_duration_in_seconds``, empty, undecodable or
    NaN/inf. ``on_bad_audio="error"``: raises ``hfssl.errors.DataError`` (caught by the CLI,
    exit code 2) naming every bad file and its reason, whose ``__cause__`` is the ``AudioScanError``.
    ``"skip"``: writes ``output_dir/skipped_audio.tsv`` (train and validation) and logs the counts.
    Pass ``output_dir=None`` on non-main processes so only one process writes the report.

    Streaming (``cfg.streaming``): the train split is an ``AudioStream`` (IterableDataset, no length,
    sharded by the caller), checked as examples arrive; only the validation files are scanned before
    training. Files on disk are listed (cheap) but not decoded in advance, in one seeded order.

    Returns:
        (train, validation, report): ``AudioDataset`` (or ``AudioStream``), ``AudioDataset`` or None,
        and ``{"train": {"total", "kept", "skipped", "long", "hours"}, "validation": {...} or None,
        "skipped_report": path or None}`` with kept + skipped = total per split.
    """
    import logging

    from hfssl.errors import DataError

    log = logging.getLogger(__name__)
    sr = cfg.sampling_rate
    source = train_source = val_source = None
    val_rows = None
    name = cfg.dataset_name
    try:
        if cfg.dataset_name:
            import datasets

            kw = {"streaming": bool(cfg.streaming)}
            if cfg.dataset_config_name:
                kw["name"] = cfg.dataset_config_name
            if os.path.isdir(cfg.dataset_name) and find_audio_files(cfg.dataset_name):
                # datasets' audiofolder builder re-encodes audio with torchcodec (+FFmpeg); a folder
                # is read directly with soundfile instead, with the same metadata columns.
                raise DataError(f"dataset_name '{name}' is a local folder of audio files: use --train_dir {name} "
                                "(read with soundfile, same audiofolder metadata) instead of dataset_name.")
            try:
                raw = datasets.load_dataset(cfg.dataset_name, **kw)
            except (ImportError, OSError, ValueError, datasets.exceptions.DatasetGenerationError) as e:
                cause = e.__cause__ or e
                raise DataError(f"Could not load dataset '{name}': {type(cause).__name__}: {cause}") from e

            def pick(expr: str, required: bool):
                names = [x.strip() for x in expr.split("+") if x.strip()]
                missing = [x for x in names if x not in raw]
                if missing:
                    if not required:
                        return None
                    raise DataError(f"dataset '{name}' has no split {', '.join(repr(x) for x in missing)} "
                                    f"(splits: {', '.join(raw)}); set dataset_train_split / dataset_validation_split.")
                parts = [raw[x] for x in names]
                for x, part in zip(names, parts):
                    if cfg.audio_column_name not in part.column_names:
                        raise DataError(f"dataset '{name}' split '{x}' has no column '{cfg.audio_column_name}'; "
                                        f"columns: {', '.join(part.column_names)}. Set audio_column_name.")
                joined = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
                return joined.cast_column(cfg.audio_column_name, datasets.Audio(decode=False))

            train_raw = pick(cfg.dataset_train_split, True)
            val_raw = (pick(cfg.dataset_validation_split, True) if cfg.dataset_validation_split
                       else pick("validation", False))
            if cfg.streaming:
                log.warning("Streaming: audio cannot be validated before training; bad examples are %s as they arrive.",
                            "an error" if cfg.on_bad_audio == "error" else "skipped")
                min_d = cfg.min_duration_in_seconds if cfg.min_duration_in_seconds > 0 else None
                report_path = (os.path.join(output_dir, STREAM_SKIPPED_REPORT)
                               if output_dir is not None and cfg.on_bad_audio == "skip" else None)
                train = AudioStream(train_raw, cfg.audio_column_name, sr, min_samples, min_d, cfg.on_bad_audio, f"{name}[train]",
                                    report_path)
                validation = None
                if val_raw is not None:  # a bounded, scanned validation set: its first 2000 examples
                    subset = datasets.Dataset.from_list(list(val_raw.take(2000)), features=val_raw.features)
                    val_source = subset
                    val_rows = _rows_from_hf(subset, cfg.audio_column_name, f"{name}[validation]")
                report = {"train": None, "validation": None, "skipped_report": None}
                if val_rows is not None:
                    good, bad, num_long = _scan_rows(val_rows, cfg, min_samples, val_source)
                    validation = AudioDataset(good, sr, val_source, cfg.audio_column_name) if good else None
                    report["validation"] = _split_report(len(val_rows), good, bad, num_long, sr)
                    _handle_bad(bad, len(val_rows), cfg, output_dir, report, log, DataError)
                return train, validation, report
            train_source = train_raw
            train_rows = _rows_from_hf(train_source, cfg.audio_column_name, f"{name}[{cfg.dataset_train_split}]")
            if val_raw is not None:
                val_source = val_raw
                val_rows = _rows_from_hf(val_source, cfg.audio_column_name, f"{name}[{cfg.dataset_validation_split or 'validation'}]")
        else:
            train_rows = list_audio_dir(cfg.train_dir) if cfg.train_dir else read_manifest(cfg.train_file, cfg.audio_column_name)
            if cfg.validation_dir:
                val_rows = list_audio_dir(cfg.validation_dir)
            elif cfg.validation_file:
                val_rows = read_manifest(cfg.validation_file, cfg.audio_column_name)
    except (NotADirectoryError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(str(e)) from e
    where = cfg.train_dir or cfg.train_file or name
    if not train_rows:
        raise DataError(f"No audio files found in '{where}' (extensions: {', '.join(AUDIO_EXTENSIONS)}).")
    if cfg.streaming:
        return _stream_files(train_rows, val_rows, cfg, output_dir, min_samples, where, log, DataError)

    good, bad, num_long = _scan_rows(train_rows, cfg, min_samples, train_source)
    report: dict = {"train": _split_report(len(train_rows), good, bad, num_long, sr), "validation": None, "skipped_report": None}
    all_bad, total = list(bad), len(train_rows)
    if val_rows is not None:
        vgood, vbad, vlong = _scan_rows(val_rows, cfg, min_samples, val_source)
        report["validation"] = _split_report(len(val_rows), vgood, vbad, vlong, sr)
        all_bad += vbad
        total += len(val_rows)
    _handle_bad(all_bad, total, cfg, output_dir, report, log, DataError)
    if not good:
        raise DataError(f"All {len(train_rows)} training audio files in '{where}' are bad; see {report['skipped_report']}.")

    train = AudioDataset(good, sr, train_source, cfg.audio_column_name)
    validation = None
    if val_rows is not None:
        validation = AudioDataset(vgood, sr, val_source, cfg.audio_column_name) if vgood else None
    elif cfg.validation_split_percentage > 0 and len(train) >= 2:
        # Seeded hold-out of the good files, so the split is the same on every process and on resume.
        order, n_val = _held_out_order(len(train), cfg)
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        validation, train = train.select(val_idx), train.select(train_idx)
        report["validation"] = {"total": n_val, "kept": n_val, "skipped": 0, "long": int((validation.lengths > cfg.max_duration_in_seconds * sr).sum()),
                                "hours": validation.hours, "held_out_from_train": True}
        report["train"]["held_out"] = n_val
    log.info("Training audio: %d files (%.2f h), %d of them longer than %.1f s (randomly cropped)%s; validation: %s.",
             len(train), train.hours, report["train"]["long"], cfg.max_duration_in_seconds,
             f", {report['train']['held_out']} held out for validation" if "held_out" in report["train"] else "",
             f"{len(validation)} files ({validation.hours * 60:.1f} min)" if validation is not None else "none")
    return train, validation, report


STREAM_SKIPPED_REPORT = "skipped_audio_stream.tsv"


def _held_out_order(n: int, cfg) -> tuple[np.ndarray, int]:
    """One seeded order of n training files (the same on every process and on resume) and how many of
    them to hold out for validation_split_percentage (at least 1, never all)."""
    order = np.random.default_rng([int(getattr(cfg, "seed", 0)), 7]).permutation(n)
    return order, min(n - 1, max(1, round(n * cfg.validation_split_percentage / 100)))


def _stream_files(train_rows, val_rows, cfg, output_dir, min_samples, where, log, error_cls):
    """Streaming from files on disk. Listing thousands of hours of audio is cheap; decoding all of it
    before training is not, so training files are decoded and checked only when read. One seeded
    order for every process and every pass (folders are often sorted by speaker). Without a
    validation set, a seeded share of the listed files is held out; validation files are scanned
    before training like any validation set."""
    import datasets

    sr = cfg.sampling_rate
    order, held_out = _held_out_order(len(train_rows), cfg)
    rows = [train_rows[i] for i in order]
    if val_rows is None and cfg.validation_split_percentage > 0 and len(rows) >= 2:
        val_rows, rows = rows[:held_out], rows[held_out:]
    else:
        held_out = 0
    report: dict = {"train": {"total": len(rows), "streamed": True, "held_out": held_out}, "validation": None,
                    "skipped_report": None}
    validation = None
    if val_rows:
        good, bad, num_long = _scan_rows(val_rows, cfg, min_samples)
        report["validation"] = _split_report(len(val_rows), good, bad, num_long, sr)
        _handle_bad(bad, len(val_rows), cfg, output_dir, report, log, error_cls)
        validation = AudioDataset(good, sr) if good else None
    stream = datasets.Dataset.from_dict({"audio": [r["path"] for r in rows]}).to_iterable_dataset()
    min_d = cfg.min_duration_in_seconds if cfg.min_duration_in_seconds > 0 else None
    report_path = os.path.join(output_dir, STREAM_SKIPPED_REPORT) if output_dir is not None and cfg.on_bad_audio == "skip" else None
    train = AudioStream(stream, "audio", sr, min_samples, min_d, cfg.on_bad_audio, where, report_path)
    log.info("Streaming %d training audio files from '%s' (decoded and checked as read; bad ones are %s)%s; validation: %s.",
             len(rows), where, "an error" if cfg.on_bad_audio == "error" else f"skipped and listed in {STREAM_SKIPPED_REPORT}",
             f", {held_out} held out for validation" if held_out else "",
             f"{len(validation)} files ({validation.hours * 60:.1f} min)" if validation is not None else "none")
    return train, validation, report


def _split_report(total: int, good: list[dict], bad: list, num_long: int, sr: int) -> dict:
    return {"total": total, "kept": len(good), "skipped": len(bad), "long": num_long,
            "hours": float(sum(r["num_samples"] for r in good)) / sr / 3600}


def _handle_bad(bad, total, cfg, output_dir, report, log, error_cls) -> None:
    if bad and cfg.on_bad_audio == "error":
        raise error_cls(str(AudioScanError(bad, total))) from AudioScanError(bad, total)
    if cfg.on_bad_audio == "skip":
        if output_dir is not None:
            report["skipped_report"] = write_skipped_report(bad, output_dir)
        for split in ("train", "validation"):
            r = report.get(split)
            if r and "kept" in r:  # a streamed split is checked as it is read
                log.info("%s audio: %d kept + %d skipped = %d files%s", split, r["kept"], r["skipped"], r["total"],
                         f" (skipped files listed in {report['skipped_report']})" if r["skipped"] and report["skipped_report"] else "")
        if bad:
            log.warning("Skipped %d bad audio file(s), e.g. %s: %s", len(bad), bad[0][0], bad[0][1])
