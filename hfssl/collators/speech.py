"""Audio pretraining collator: crop, normalize, pad, and draw the time-span masks and negatives.

Shared by wav2vec 2.0 (contrastive, needs negatives) and HuBERT (frame labels, no negatives).
Everything random is drawn from one `torch.Generator` seeded with the micro-batch seed the loop
passes in, in a fixed order (crop offsets, then masks, then negatives), so a batch is a pure
function of (examples, seed): exact resume and multi-process runs see the same masks.

Frames: the feature encoder turns N samples into `num_frames(N)` frames (valid convolutions). Masks
and negatives only ever touch the REAL frames of each utterance (those computed from its unpadded
samples); padded frames are never masked, never negatives and never labelled.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from hfssl.data.audio.geometry import num_frames
from hfssl.masking.spans import compute_span_mask, masked_rows, sample_negatives


class AudioPretrainingCollator:
    """(examples, seed, progress) -> batch of tensors for a speech pretraining model.

    Args:
        conv_kernel / conv_stride: the feature encoder's convolutions (model config).
        max_samples: crop length; longer audio is cropped at a seeded uniform offset (fairseq-style).
        do_normalize: zero-mean unit-variance per (cropped, unpadded) utterance, as
            `Wav2Vec2FeatureExtractor(do_normalize=True)` does.
        return_attention_mask: add `attention_mask` (B, N) — only for architectures that use it
            (`feat_extract_norm == "layer"`); group-norm models are trained on zero-padded input
            without one, as in transformers.
        mask_prob / mask_length / min_masks: span masking (`compute_span_mask`).
        num_negatives: distractors per masked frame (0: none drawn, e.g. HuBERT).
        sampling_rate: only for `num_inputs` (audio seconds).

    Returns per batch: `input_values` (B, N) float32, optionally `attention_mask` (B, N) long,
    `mask_time_indices` (B, F) bool, `frame_lengths` (B,) long (real frames per utterance),
    `sampled_negative_indices` (B, F, K) long time indices into the same utterance, with
    `masked_positions` (N,) and `negative_rows` (N, K), the same as rows of the masked frames
    (`hfssl.masking.spans.masked_rows`; when num_negatives > 0), `labels` (B, F) long with -100 on padding (when examples carry
    `frame_labels`), and the ints/floats `num_targets` (masked frames) and `num_inputs`
    (audio seconds after cropping).
    """

    def __init__(self, conv_kernel: Sequence[int], conv_stride: Sequence[int], max_samples: Optional[int] = None,
                 do_normalize: bool = True, return_attention_mask: bool = False, mask_prob: float = 0.65,
                 mask_length: int = 10, min_masks: int = 2, num_negatives: int = 100, sampling_rate: int = 16000):
        self.conv_kernel, self.conv_stride = tuple(conv_kernel), tuple(conv_stride)
        self.total_stride = int(np.prod(self.conv_stride))
        self.max_samples = max_samples
        self.do_normalize = do_normalize
        self.return_attention_mask = return_attention_mask
        self.mask_prob, self.mask_length, self.min_masks = mask_prob, mask_length, min_masks
        self.num_negatives = num_negatives
        self.sampling_rate = sampling_rate

    # ------------------------------------------------------------------ pieces (also used by the preflight report)
    def crop_offsets(self, lengths: Sequence[int], generator: torch.Generator, align: bool = False) -> list[int]:
        """Sample offset of the crop of each utterance (0 when it fits). With `align`, offsets are
        multiples of the total conv stride so frame-level labels stay aligned exactly."""
        offsets = []
        for n in lengths:
            n = int(n)
            if self.max_samples is None or n <= self.max_samples:
                offsets.append(0)
            elif align:
                steps = (n - self.max_samples) // self.total_stride
                offsets.append(int(torch.randint(0, steps + 1, (1,), generator=generator)) * self.total_stride)
            else:
                offsets.append(int(torch.randint(0, n - self.max_samples + 1, (1,), generator=generator)))
        return offsets

    def cropped_length(self, n: int) -> int:
        return int(n) if self.max_samples is None else min(int(n), self.max_samples)

    def draw_masks(self, sample_lengths: torch.Tensor, generator: torch.Generator):
        """(B,) cropped sample lengths -> (frame_lengths (B,), mask (B, F), negatives (B, F, K) or None)."""
        frame_lengths = num_frames(sample_lengths.long(), self.conv_kernel, self.conv_stride)
        total_frames = int(num_frames(int(sample_lengths.max()), self.conv_kernel, self.conv_stride)) if len(sample_lengths) else 0
        mask = compute_span_mask(frame_lengths, total_frames, self.mask_prob, self.mask_length, self.min_masks, generator=generator)
        negatives = sample_negatives(mask, self.num_negatives, generator=generator) if self.num_negatives > 0 else None
        return frame_lengths, mask, negatives

    def masks_for_lengths(self, lengths: Sequence[int], seed: int):
        """Masks exactly as `__call__` draws them for utterances of these (uncropped) lengths,
        without any audio: for preflight statistics. Returns (frame_lengths, mask)."""
        g = torch.Generator().manual_seed(int(seed))
        self.crop_offsets(lengths, g)
        cropped = torch.tensor([self.cropped_length(n) for n in lengths], dtype=torch.long)
        frame_lengths, mask, _ = self.draw_masks(cropped, g)
        return frame_lengths, mask

    # ------------------------------------------------------------------ batch
    def __call__(self, examples: list[dict], seed: int, progress: float = 0.0) -> dict:
        g = torch.Generator().manual_seed(int(seed))
        with_labels = bool(examples) and "frame_labels" in examples[0]
        waves = [torch.as_tensor(ex["input_values"], dtype=torch.float32) for ex in examples]
        offsets = self.crop_offsets([w.shape[0] for w in waves], g, align=with_labels)
        waves = [w[o : o + self.cropped_length(w.shape[0])] for w, o in zip(waves, offsets)]
        if self.do_normalize:
            waves = [(w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-7) for w in waves]
        lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.long)
        batch_size, longest = len(waves), int(lengths.max())
        input_values = torch.zeros(batch_size, longest, dtype=torch.float32)
        for i, w in enumerate(waves):
            input_values[i, : w.shape[0]] = w

        frame_lengths, mask, negatives = self.draw_masks(lengths, g)
        batch = {"input_values": input_values, "mask_time_indices": mask, "frame_lengths": frame_lengths}
        if self.return_attention_mask:
            batch["attention_mask"] = (torch.arange(longest)[None, :] < lengths[:, None]).long()
        if negatives is not None:
            batch["sampled_negative_indices"] = negatives
            batch["masked_positions"], batch["negative_rows"] = masked_rows(mask, negatives)
        if with_labels:
            batch["labels"] = self._labels(examples, offsets, frame_lengths, mask.shape[1])
        batch["num_targets"] = int(mask.sum())
        batch["num_inputs"] = float(lengths.sum()) / self.sampling_rate
        return batch

    def _labels(self, examples, offsets, frame_lengths, total_frames) -> torch.Tensor:
        """(B, F) long: each utterance's frame labels cut at the crop's frame offset; -100 on padding
        (and on any real frame the label sequence does not reach)."""
        labels = torch.full((len(examples), total_frames), -100, dtype=torch.long)
        for i, (ex, off) in enumerate(zip(examples, offsets)):
            seq = torch.as_tensor(np.asarray(ex["frame_labels"]), dtype=torch.long)
            start = off // self.total_stride
            piece = seq[start : start + int(frame_lengths[i])]
            labels[i, : piece.shape[0]] = piece
        return labels
