"""Fine-tuning collators: text classification, audio classification and CTC speech recognition.

Same calling convention as the pretraining collators: `collator(examples, seed, progress)` returns
tensors plus `num_targets` (examples: the loss is a sum over examples/utterances) and `num_inputs`.
Random choices (crops, SpecAugment masks) come from a generator seeded by `seed`, so they are a
function of the batch position and resume exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from hfssl.collators.packing import PackedLayout, pack
from hfssl.collators.text import pad_int_sequences
from hfssl.data.audio.batching import normalize, random_crop
from hfssl.data.audio.fbank import FbankFrontend
from hfssl.data.audio.geometry import num_frames
from hfssl.masking.spans import compute_span_mask


@dataclass
class TextClassificationCollator:
    """Pads tokenized examples (`input_ids`, optional `token_type_ids`, `labels`).

    `labels` is a class id, or an (L,) 0/1 vector for multi-label; examples without `labels`
    (an unlabeled test set) give a batch without them. With `packing`, the token tensors are packed
    without padding (`hfssl.collators.packing.pack`: position_ids, sequence_ids, cu_seqlens,
    sequence_starts instead of attention_mask); labels stay in batch order.
    """

    pad_token_id: int
    packing: Optional[PackedLayout] = None

    def __call__(self, examples: list[dict], seed: int = 0, progress: float = 0.0) -> dict:
        ids = pad_int_sequences([e["input_ids"] for e in examples], self.pad_token_id)  # (B, T)
        lengths = torch.tensor([len(e["input_ids"]) for e in examples])
        tokens = {"input_ids": ids}
        if "token_type_ids" in examples[0]:
            tokens["token_type_ids"] = pad_int_sequences([e["token_type_ids"] for e in examples], 0)
        if self.packing is None:
            batch = {**tokens, "attention_mask": (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()}
        else:
            batch = pack(tokens, lengths, self.packing, {"input_ids": self.pad_token_id})
        if "labels" in examples[0]:
            labels = np.asarray([e["labels"] for e in examples])
            batch["labels"] = torch.as_tensor(labels, dtype=torch.float32 if labels.ndim == 2 else torch.long)
        batch["num_targets"] = len(examples)
        batch["num_inputs"] = float(len(examples))
        return batch


@dataclass
class AudioCollator:
    """Pads waveforms for audio classification (`labels`: class id) or CTC (`labels`: token ids).

    Examples: {"input_values": (N,) float32 at the model's rate, "labels": ..., "train": bool}. Training
    examples are randomly cropped to `max_samples` (None: keep whole) and get SpecAugment masks
    when the mask probabilities are > 0; evaluation examples are used whole and unmasked.
    CTC labels are padded with -100.

    Two kinds of encoder: a wav2vec2-family conv feature encoder reading waveforms (`conv_kernel` /
    `conv_stride`), or an encoder reading log-mel frames (`fbank`, e.g. Wav2Vec2Bert / BEST-RQ), for which
    the waveforms become `input_features` here and `do_normalize` does not apply (the features are
    normalized per utterance and mel bin).

    Output: input_values (B, S) float, or input_features (B, T, D) with `fbank`; attention_mask (B, S) /
    (B, T) long (if `return_attention_mask`; always with `fbank`); labels (B,) or (B, U); and in training
    mask_time_indices (B, T) bool and mask_feature_indices (B, H) bool over the encoder's frames / channels.
    """

    do_normalize: bool
    return_attention_mask: bool
    conv_kernel: Optional[Sequence[int]]
    conv_stride: Optional[Sequence[int]]
    hidden_size: int
    ctc: bool = False
    max_samples: Optional[int] = None
    mask_time_prob: float = 0.0
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    sampling_rate: int = 16000
    fbank: Optional[FbankFrontend] = None

    def __call__(self, examples: list[dict], seed: int = 0, progress: float = 0.0) -> dict:
        gen = torch.Generator().manual_seed(seed)
        training = bool(examples[0].get("train", False))
        waves = []
        for e in examples:
            w = e["input_values"]
            if training and self.max_samples is not None:
                w = random_crop(w, self.max_samples, gen)
            waves.append(normalize(w) if self.do_normalize and self.fbank is None else np.asarray(w, dtype=np.float32))
        seconds = float(sum(len(w) for w in waves)) / self.sampling_rate
        if self.fbank is not None:
            features, attention_mask, frames = self.fbank.batch(waves)  # (B, T, D), (B, T), (B,)
            batch = {"input_features": features, "attention_mask": attention_mask}
            T = features.shape[1]
        else:
            lengths = torch.tensor([len(w) for w in waves])
            S = int(lengths.max())
            values = torch.zeros(len(waves), S)
            for i, w in enumerate(waves):
                values[i, : len(w)] = torch.from_numpy(np.ascontiguousarray(w))
            batch = {"input_values": values}
            if self.return_attention_mask:
                batch["attention_mask"] = (torch.arange(S)[None, :] < lengths[:, None]).long()
            frames = num_frames(lengths, self.conv_kernel, self.conv_stride)  # (B,)
            T = int(num_frames(S, self.conv_kernel, self.conv_stride))
        if "labels" in examples[0]:
            if self.ctc:
                batch["labels"] = pad_int_sequences([e["labels"] for e in examples], -100)
            else:
                batch["labels"] = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        if training and (self.mask_time_prob > 0 or self.mask_feature_prob > 0):
            B = len(waves)
            batch["mask_time_indices"] = (
                compute_span_mask(frames, T, self.mask_time_prob, self.mask_time_length, self.mask_time_min_masks, gen)
                if self.mask_time_prob > 0 else torch.zeros(B, T, dtype=torch.bool))
            batch["mask_feature_indices"] = (
                compute_span_mask(torch.full((B,), self.hidden_size), self.hidden_size, self.mask_feature_prob,
                                  self.mask_feature_length, 0, gen)
                if self.mask_feature_prob > 0 else torch.zeros(B, self.hidden_size, dtype=torch.bool))
        batch["num_targets"] = len(examples)
        batch["num_inputs"] = seconds
        return batch
