"""Datasets the training loop reads: ``AudioDataset`` (map-style, validated files with their lengths)
and ``AudioStream`` (iterable, decoded and checked as examples arrive)."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from hfssl.data.audio.decode import BadAudioError, check_length, decode_bytes, load_audio

logger = logging.getLogger(__name__)


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
            return decode_bytes(self.source[int(row["_index"])][self.audio_column]["bytes"], row["path"], self.sampling_rate)
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
                    wave = decode_bytes(audio["bytes"], label, self.sampling_rate)
                else:
                    wave = load_audio(audio["path"], self.sampling_rate)
                check_length(label, wave.shape[0], wave.shape[0] / self.sampling_rate, self.sampling_rate,
                              self.min_samples, self.min_duration, None)
            except BadAudioError as e:
                if self.on_bad_audio == "error":
                    raise BadAudioError(e.path, f"{e.reason} (found while streaming; on_bad_audio skip skips and lists such files)") from None
                if (e.path, e.reason) not in self.skipped:  # once per example, not once per pass
                    self.skipped.append((e.path, e.reason))
                    self._report(e.path, e.reason)
                    logger.warning("Skipping bad streamed audio %s: %s", e.path, e.reason)
                continue
            meta = {k: v for k, v in ex.items() if k != self.audio_column}
            yield {"input_values": wave, **meta, "id": i}
