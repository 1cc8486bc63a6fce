"""Geometry of the wav2vec2-family conv feature encoder: samples per frame and frames per input."""

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
