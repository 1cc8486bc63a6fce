"""Frame geometry: samples per frame and frames per input of the wav2vec2-family conv feature encoder, and the
alignment of another frame sequence (MFCC, log-mel) to its frames.

A frame sequence is described by ``(window, hop)`` in samples: frame ``j`` covers samples
``[j * hop, j * hop + window)`` and its centre is at ``j * hop + window / 2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


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


class ConvFrames:
    """`num_frames` of one conv feature encoder as a callable: samples (int / array / tensor) -> frames."""

    def __init__(self, conv_kernel: Sequence[int], conv_stride: Sequence[int]):
        self.conv_kernel, self.conv_stride = tuple(conv_kernel), tuple(conv_stride)

    def __call__(self, num_samples):
        return num_frames(num_samples, self.conv_kernel, self.conv_stride)


def conv_geometry(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> tuple[int, int]:
    """(window, hop) in samples of a conv feature encoder: (receptive field, product of strides)."""
    return receptive_field(conv_kernel, conv_stride), int(np.prod(conv_stride))


def label_frame_index(num_model_frames: int, model_geometry: tuple[int, int], label_geometry: tuple[int, int],
                      num_label_frames: int, clip: bool = True) -> np.ndarray:
    """For each model frame, the label frame whose centre is nearest to its centre.

    Model frame i has centre ``i * hop_m + win_m / 2``; label frame j has centre ``j * hop_l + win_l / 2``;
    j = floor((i * hop_m + win_m / 2 - win_l / 2) / hop_l + 1 / 2) (ties to the later frame), clipped to
    [0, num_label_frames - 1]. Integer arithmetic, so no rounding drift on long files.

    Args:
        model_geometry, label_geometry: (window, hop) in samples (`conv_geometry`, `mfcc_geometry`).
        clip: False leaves the indices unclipped, so a caller can tell which model frames have no label frame
            near them (index >= num_label_frames, at the end of an utterance).
    Returns:
        (num_model_frames,) int64 indices into the label frames (empty when there are no label frames and clip).
    """
    (win_m, hop_m), (win_l, hop_l) = model_geometry, label_geometry
    if num_label_frames <= 0 and clip:
        return np.zeros(0, dtype=np.int64)
    i = np.arange(num_model_frames, dtype=np.int64)
    # 2 * (centre_m - win_l / 2) = 2 * i * hop_m + win_m - win_l; adding hop_l then floor-dividing by
    # 2 * hop_l rounds half up.
    j = np.maximum((2 * i * hop_m + win_m - win_l + hop_l) // (2 * hop_l), 0)
    return np.minimum(j, num_label_frames - 1) if clip else j
