"""Decoding and validating audio: soundfile + torchaudio resampling, per-file checks, ``scan_audio``
and the skipped-file report.

Pip-only: decoding goes through ``soundfile`` (libsndfile: wav, flac, ogg, mp3), resampling through
``torchaudio.functional.resample``. No ffmpeg / sox needed.
"""

from __future__ import annotations

import io
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

from hfssl.data.audio.files import AUDIO_EXTENSIONS
from hfssl.errors import DataError

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


def _decode(source, name: str, sampling_rate: int) -> np.ndarray:
    """Decode a path or file object in full to a mono (N,) float32 waveform at ``sampling_rate``."""
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)  # (N, C)
    except _DECODE_ERRORS as e:
        raise BadAudioError(name, f"cannot decode audio ({e})") from None
    if data.shape[0] == 0:
        raise BadAudioError(name, "empty (0 samples)")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    finite = np.isfinite(wave)
    if not finite.all():
        raise BadAudioError(name, f"contains NaN/inf samples ({int((~finite).sum())} of {wave.shape[0]})")
    if sr != sampling_rate:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), sr, sampling_rate).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


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
    return _decode(path, path, sampling_rate)


def decode_bytes(data: bytes, name: str, sampling_rate: int) -> np.ndarray:
    """``load_audio`` for encoded bytes held in a ``datasets`` column (``name`` is used in errors)."""
    if not data:
        raise BadAudioError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, sampling_rate)


def check_length(name: str, n: int, seconds: float, sampling_rate: int, min_samples: int,
                 min_duration: float | None, max_duration: float | None) -> bool:
    """The length rules of ``scan_audio`` for one file of ``n`` samples at ``sampling_rate``
    (``seconds`` long at its own rate); raises ``BadAudioError`` if too short, returns is_long."""
    if n < min_samples:
        raise BadAudioError(
            name, f"too short: {n} samples at {sampling_rate} Hz ({seconds:.3f} s) < min_samples={min_samples} "
            "(the feature encoder's receptive field)"
        )
    if min_duration is not None and seconds < min_duration:
        raise BadAudioError(name, f"too short: {seconds:.3f} s < min_duration_in_seconds={min_duration}")
    return max_duration is not None and seconds > max_duration


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
    return n, check_length(path, n, frames / sr, sampling_rate, min_samples, min_duration, max_duration)


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


def scan_audio_split(paths: Sequence[str | os.PathLike], sampling_rate: int, min_samples: int, accelerator=None,
                     on_bad_audio: Literal["error", "skip"] = "error", **options) -> ScanResult:
    """``scan_audio`` with the files divided over the processes of ``accelerator``: each decodes every
    W-th file, the outcomes are gathered and put back in input order on every process, so a corpus is
    decoded once in all instead of once per process. Every process must call it with the same paths;
    with one process (or none) it is ``scan_audio``. ``options``: the other ``scan_audio`` arguments."""
    if accelerator is None or accelerator.num_processes == 1:
        return scan_audio(paths, sampling_rate, min_samples, on_bad_audio=on_bad_audio, **options)
    from accelerate.utils import gather_object

    paths = [os.fspath(p) for p in paths]
    world, rank = accelerator.num_processes, accelerator.process_index
    mine = scan_audio(paths[rank::world], sampling_rate, min_samples, on_bad_audio="skip", **options)
    outcomes: dict[str, int | str] = {}  # path -> samples (good) or reason (bad)
    result = ScanResult()
    for good, bad, num_long in gather_object([(mine.good, mine.bad, mine.num_long)]):
        outcomes.update(good)
        outcomes.update(bad)
        result.num_long += num_long
    result.good = [(p, outcomes[p]) for p in paths if not isinstance(outcomes[p], str)]
    result.bad = [(p, outcomes[p]) for p in paths if isinstance(outcomes[p], str)]
    if result.bad and on_bad_audio == "error":
        raise AudioScanError(result.bad, total=len(paths))
    return result


def write_skipped_report(bad: Sequence[tuple[str, str]], output_dir: str | os.PathLike, filename: str = "skipped_audio.tsv") -> str:
    """Write ``output_dir/<filename>`` (default skipped_audio.tsv) and return its path.

    Format: a summary comment line ``# skipped N audio file(s)``, a ``path<TAB>reason`` header,
    then one row per bad file. Tabs/newlines inside values are replaced by spaces so every
    record stays on one line. Written even when ``bad`` is empty (N = 0), so its absence never
    has to be interpreted.
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    out = os.path.join(output_dir, filename)

    def clean(s: str) -> str:
        return " ".join(str(s).replace("\t", " ").splitlines())

    with open(out, "w", encoding="utf-8") as f:
        f.write(f"# skipped {len(bad)} audio file(s)\n")
        f.write("path\treason\n")
        for path, reason in bad:
            f.write(f"{clean(path)}\t{clean(reason)}\n")
    return out
