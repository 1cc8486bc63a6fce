"""BEST-RQ batches, one collator per encoder input. Both are pure functions of (examples, seed): random draws come
from one generator seeded with the loop's micro-batch seed, in this order: crop offsets, masks, noise.

* `BestRQCollator` (`encoder: conformer`, Wav2Vec2Bert): the encoder reads the stacked log-mel frames, so the
  label frames ARE the encoder frames; masked frames are replaced by N(0, noise_std^2) noise (the paper).
* `BestRQWaveCollator` (`encoder: wav2vec2`, a Wav2Vec2Model with its conv front end): the encoder reads the
  waveform. Labels still come from the stacked log-mel frames of the clean crop; each conv frame takes the label
  of the stacked frame whose centre is nearest to its own (`label_frame_index`). With the base conv geometry
  (400-sample receptive field, hop 320) and 2 stacked frames (560 / 320 samples) frame i gets label frame i, the
  two centres 80 samples (5 ms) apart; a last conv frame with no stacked frame near it is unlabelled (-100) and
  not scored. Masking: spans over conv frames; every sample inside a masked frame's receptive field is replaced by
  N(0, noise_std^2) noise in the (normalized) waveform, so a masked frame sees nothing of its own audio (its
  unmasked neighbours see up to receptive field - hop samples of noise).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from hfssl.data.audio.batching import normalize, random_crop
from hfssl.data.audio.fbank import FbankFrontend
from hfssl.data.audio.geometry import conv_geometry, label_frame_index, num_frames
from hfssl.masking.spans import compute_span_mask
from hfssl.objectives.best_rq.loss import count_targets
from hfssl.objectives.best_rq.quantizer import RandomProjectionQuantizer


class BestRQCollator:
    """(examples, seed, progress) -> input_features (B, F, D) with masked frames replaced by noise,
    attention_mask (B, F), mask_time_indices (B, F) bool, labels (B, F, N) long (-100 on padding),
    frame_lengths (B,), num_targets (masked real frames x codebooks), num_inputs (audio seconds after cropping).
    """

    def __init__(self, frontend: FbankFrontend, quantizer: RandomProjectionQuantizer, max_samples: Optional[int],
                 mask_prob: float, mask_length: int, min_masks: int, noise_std: float):
        self.frontend, self.quantizer, self.max_samples = frontend, quantizer, max_samples
        self.mask_prob, self.mask_length, self.min_masks, self.noise_std = mask_prob, mask_length, min_masks, noise_std

    def __call__(self, examples: list[dict], seed: int, progress: float = 0.0) -> dict:
        g = torch.Generator().manual_seed(int(seed))
        waves = [np.asarray(ex["input_values"], dtype=np.float32) for ex in examples]
        if self.max_samples is not None:
            waves = [random_crop(w, self.max_samples, g) for w in waves]
        features, attention_mask, lengths = self.frontend.batch(waves)  # (B, F, D), (B, F), (B,)
        labels = self.quantizer(features)  # (B, F, N) from the clean frames
        labels[attention_mask == 0] = -100
        mask = compute_span_mask(lengths, features.shape[1], self.mask_prob, self.mask_length, self.min_masks, generator=g)
        noise = torch.randn(int(mask.sum()), features.shape[2], generator=g) * self.noise_std
        features[mask] = noise
        return {"input_features": features, "attention_mask": attention_mask, "mask_time_indices": mask, "labels": labels,
                "frame_lengths": lengths, "num_targets": count_targets(labels, mask),
                "num_inputs": float(sum(w.size for w in waves)) / self.frontend.sampling_rate}


def samples_of_frames(mask: torch.Tensor, geometry: tuple[int, int], num_samples: int) -> torch.Tensor:
    """(B, F) bool frame mask -> (B, num_samples) bool: the samples inside any masked frame's window
    ``[i * hop, i * hop + window)`` (`geometry` = (window, hop))."""
    window, hop = geometry
    b, i = mask.nonzero(as_tuple=True)
    edges = torch.zeros(mask.shape[0], num_samples + 1, dtype=torch.long)
    edges.index_put_((b, (i * hop).clamp(max=num_samples)), torch.ones_like(b), accumulate=True)
    edges.index_put_((b, (i * hop + window).clamp(max=num_samples)), -torch.ones_like(b), accumulate=True)
    return edges.cumsum(1)[:, :num_samples] > 0


class BestRQWaveCollator:
    """(examples, seed, progress) -> input_values (B, S) normalized waveforms with the masked frames' samples
    replaced by noise, attention_mask (B, S) (when the encoder uses one), mask_time_indices (B, F) bool over conv
    frames, labels (B, F, N) long (-100 on padding and unlabelled frames), frame_lengths (B,), num_targets,
    num_inputs (see the module docstring for the alignment).
    """

    def __init__(self, frontend: FbankFrontend, quantizer: RandomProjectionQuantizer, conv_kernel: Sequence[int],
                 conv_stride: Sequence[int], max_samples: Optional[int], do_normalize: bool, return_attention_mask: bool,
                 mask_prob: float, mask_length: int, min_masks: int, noise_std: float):
        self.frontend, self.quantizer, self.max_samples = frontend, quantizer, max_samples
        self.conv_kernel, self.conv_stride = tuple(conv_kernel), tuple(conv_stride)
        self.geometry = conv_geometry(self.conv_kernel, self.conv_stride)
        self.do_normalize, self.return_attention_mask = do_normalize, return_attention_mask
        self.mask_prob, self.mask_length, self.min_masks, self.noise_std = mask_prob, mask_length, min_masks, noise_std

    def labels(self, waves: list[np.ndarray], frame_lengths: torch.Tensor) -> torch.Tensor:
        """(B, F, N) long: the quantizer's labels of each clean wave's stacked log-mel frames, at the conv frames."""
        features, _, lengths = self.frontend.batch(waves)  # (B, T, D)
        codes = self.quantizer(features)  # (B, T, N)
        total = int(frame_lengths.max()) if len(waves) else 0
        labels = torch.full((len(waves), total, codes.shape[-1]), -100, dtype=torch.long)
        for k, (f, t) in enumerate(zip(frame_lengths.tolist(), lengths.tolist())):
            j = torch.from_numpy(label_frame_index(f, self.geometry, self.frontend.frame_geometry, t, clip=False))
            ok = j < t
            labels[k, : f][ok] = codes[k, j[ok]]
        return labels

    def __call__(self, examples: list[dict], seed: int, progress: float = 0.0) -> dict:
        g = torch.Generator().manual_seed(int(seed))
        waves = [np.asarray(ex["input_values"], dtype=np.float32) for ex in examples]
        if self.max_samples is not None:
            waves = [random_crop(w, self.max_samples, g) for w in waves]
        lengths = torch.tensor([w.size for w in waves], dtype=torch.long)
        frame_lengths = num_frames(lengths, self.conv_kernel, self.conv_stride)  # (B,)
        labels = self.labels(waves, frame_lengths)  # from the clean crops
        longest = int(lengths.max())
        x = torch.zeros(len(waves), longest)
        for k, w in enumerate(waves):  # normalized as Wav2Vec2FeatureExtractor(do_normalize=True) will at fine-tuning
            x[k, : w.size] = torch.from_numpy(normalize(w) if self.do_normalize else w)
        mask = compute_span_mask(frame_lengths, labels.shape[1], self.mask_prob, self.mask_length, self.min_masks, generator=g)
        real = torch.arange(longest)[None, :] < lengths[:, None]  # (B, S)
        noisy = samples_of_frames(mask, self.geometry, longest) & real
        x[noisy] = torch.randn(int(noisy.sum()), generator=g) * self.noise_std
        batch = {"input_values": x, "mask_time_indices": mask, "labels": labels, "frame_lengths": frame_lengths,
                 "num_targets": count_targets(labels, mask), "num_inputs": float(lengths.sum()) / self.frontend.sampling_rate}
        if self.return_attention_mask:
            batch["attention_mask"] = real.long()
        return batch
