"""Log-mel filterbank front end for encoders that take features instead of waveforms (`Wav2Vec2BertModel`).

One definition of the input features, used by BEST-RQ pretraining and by fine-tuning the encoder it
produces, and matching transformers' `SeamlessM4TFeatureExtractor` (what `Wav2Vec2Bert` checkpoints and the
`pipeline(...)` use), so a saved model's preprocessor_config.json reproduces them:

* Kaldi-compatible log-mel filterbank (`torchaudio.compliance.kaldi.fbank`): 25 ms Povey window, 10 ms hop,
  no edge padding (`snip_edges`), pre-emphasis 0.97, DC removed per frame, 512-point FFT, `num_mel_bins`
  mel bins from 20 Hz to Nyquist, no dither, natural log floored at float32 eps; the waveform is scaled to
  16-bit integer range first, as Kaldi reads audio. Same numbers as the extractor's numpy implementation
  (to float32 rounding: |difference| < 1e-3 on values up to ~30) at about 5x its speed.
* Normalized per utterance and per mel bin to zero mean, unit variance (unbiased variance, as the extractor).
* `stride` consecutive frames stacked into one encoder frame: (T, M) -> (T // stride, stride * M); an
  incomplete last group is dropped. (The transformers extractor first pads the frame count to an even
  number, so for an odd T it may keep one more, partly zero, group at the end of an utterance.)

Frame geometry: ``1 + (N - window) // hop`` fbank frames for N samples (0 below one window), then
``// stride`` encoder frames; at 16 kHz and stride 2 that is one frame per 20 ms, at stride 4 per 40 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

_PCM_SCALE = 32768.0  # Kaldi reads 16-bit PCM as integers; the extractor multiplies by 2**15 likewise


@dataclass(frozen=True)
class FbankFrontend:
    """Waveforms -> stacked, normalized log-mel frames and their attention mask (see the module docstring)."""

    sampling_rate: int = 16000
    num_mel_bins: int = 80
    stride: int = 2

    def __post_init__(self) -> None:
        if self.stride < 1 or self.num_mel_bins < 1:
            raise ValueError(f"stride and num_mel_bins must be >= 1, got {self.stride} and {self.num_mel_bins}")

    @property
    def window(self) -> int:
        return round(0.025 * self.sampling_rate)

    @property
    def hop(self) -> int:
        return round(0.010 * self.sampling_rate)

    @property
    def frame_geometry(self) -> tuple[int, int]:
        """(window, hop) in samples of one stacked frame: ``stride`` fbank windows, one hop apart (560 / 320 at 16 kHz, stride 2)."""
        return self.window + (self.stride - 1) * self.hop, self.hop * self.stride

    @property
    def feature_dim(self) -> int:
        """Size of one encoder frame: `stride` stacked mel frames (the encoder's feature_projection_input_dim)."""
        return self.num_mel_bins * self.stride

    @property
    def min_samples(self) -> int:
        """Shortest input that gives one encoder frame."""
        return self.window + (self.stride - 1) * self.hop

    def num_frames(self, num_samples):
        """Encoder frames for ``num_samples`` samples: int, or integer np.ndarray / torch.Tensor of any shape."""
        n = num_samples
        if isinstance(n, torch.Tensor):
            fbank = ((n - self.window) // self.hop + 1).clamp(min=0)
        elif isinstance(n, np.ndarray):
            fbank = np.maximum((n - self.window) // self.hop + 1, 0)
        else:
            fbank = max((int(n) - self.window) // self.hop + 1, 0)
        return fbank // self.stride

    def fbank(self, wave) -> torch.Tensor:
        """(N,) waveform in [-1, 1] -> (T, num_mel_bins) float32 log-mel energies, T = 1 + (N - window) // hop."""
        import torchaudio

        x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(1, -1) * _PCM_SCALE
        return torchaudio.compliance.kaldi.fbank(
            x, sample_frequency=self.sampling_rate, num_mel_bins=self.num_mel_bins, frame_length=25.0, frame_shift=10.0,
            window_type="povey", preemphasis_coefficient=0.97, remove_dc_offset=True, dither=0.0, low_freq=20.0,
            high_freq=0.0, use_energy=False, use_log_fbank=True, use_power=True, snip_edges=True)

    def features(self, wave) -> torch.Tensor:
        """(N,) waveform -> (F, stride * num_mel_bins) normalized, stacked frames, F = num_frames(N).

        A wave shorter than `min_samples` gives (0, feature_dim).
        """
        n = int(np.asarray(wave).size)
        if n < self.window:
            return torch.zeros(0, self.feature_dim)
        x = self.fbank(wave)  # (T, M)
        # Unbiased variance as the extractor; a single frame has none (its normalized value is 0).
        var = x.var(0, unbiased=x.shape[0] > 1, keepdim=True)
        x = (x - x.mean(0, keepdim=True)) / torch.sqrt(var + 1e-7)
        f = x.shape[0] // self.stride
        return x[: f * self.stride].reshape(f, self.feature_dim)

    def batch(self, waves: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Waveforms of any lengths -> (input_features (B, F, D) zero-padded, attention_mask (B, F) long,
        frame_lengths (B,) long), F = the longest utterance's frame count, D = feature_dim."""
        feats = [self.features(w) for w in waves]
        lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        longest = int(lengths.max()) if len(feats) else 0
        out = torch.zeros(len(feats), longest, self.feature_dim)
        for i, f in enumerate(feats):
            out[i, : f.shape[0]] = f
        mask = (torch.arange(longest)[None, :] < lengths[:, None]).long()
        return out, mask, lengths

    # ------------------------------------------------------------------ transformers' feature extractor
    def feature_extractor(self):
        """The `SeamlessM4TFeatureExtractor` computing these features (saved next to a model)."""
        from transformers import SeamlessM4TFeatureExtractor

        return SeamlessM4TFeatureExtractor(feature_size=self.num_mel_bins, num_mel_bins=self.num_mel_bins,
                                           sampling_rate=self.sampling_rate, stride=self.stride, padding_value=0.0)

    @classmethod
    def from_feature_extractor(cls, extractor) -> "FbankFrontend":
        """The front end of a saved `SeamlessM4TFeatureExtractor` (e.g. a BEST-RQ or Wav2Vec2Bert checkpoint's)."""
        return cls(sampling_rate=int(extractor.sampling_rate), num_mel_bins=int(extractor.num_mel_bins),
                   stride=int(extractor.stride))
