"""Batch-time transforms (``random_crop``, ``normalize``) and batch plans: ``duration_batches`` packs
length-grouped batches, ``audio_batch_plan`` is the one switch between batches by padded seconds and
batches by file count that every speech objective and task uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


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


def audio_batch_plan(
    lengths: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
    max_batch_seconds: float | None,
    sampling_rate: int,
    max_length: int | None,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    balance_across: int | None = None,
) -> list[list[int]]:
    """One epoch of batches (lists of dataset indices): by padded seconds or by file count.

    ``max_batch_seconds`` set (and non-zero): ``duration_batches`` with
    ``max_batch_samples = int(max_batch_seconds * sampling_rate)``; otherwise ``batch_size`` files
    per batch. Either way lengths are clipped to ``max_length`` (the crop length) first and the plan
    is a function of ``(seed, epoch)`` only; ``shuffle=False`` gives the fixed longest-first plan
    used for evaluation.

    ``balance_across=W`` plans evaluation batches that W processes share when each of them must run
    the same number of forwards (DDP fine-tuning): longest first, ``ceil(N / batch_size)`` batches
    rounded up to a multiple of W when N >= W, with sizes that differ by at most one, but never more
    batches than items (N = 5, W = 4, batch_size 1: 5 batches; the caller pads the missing turns). It needs
    ``max_batch_seconds=None`` and ``shuffle=False``.

    Args:
        lengths: (N,) sample counts per item.
    Returns:
        batches whose concatenation is a permutation of ``range(N)``.

    Raises:
        ValueError: see ``duration_batches``; or ``balance_across`` with seconds or shuffle.
    """
    if balance_across is not None:
        if max_batch_seconds or shuffle:
            raise ValueError("balance_across plans fixed evaluation batches: pass max_batch_seconds=None, shuffle=False")
        lens = np.asarray(lengths, dtype=np.int64)
        if max_length is not None:
            lens = np.minimum(lens, max_length)
        order = np.argsort(-lens, kind="stable")
        count = -(-lens.size // batch_size)
        if balance_across > 1 and lens.size >= balance_across:
            count = -(-count // balance_across) * balance_across
        return [chunk.tolist() for chunk in np.array_split(order, count) if len(chunk)]
    if max_batch_seconds:
        limit = {"max_batch_samples": int(max_batch_seconds * sampling_rate)}
    else:
        limit = {"batch_size": batch_size}
    return duration_batches(lengths, max_length=max_length, seed=seed, epoch=epoch, shuffle=shuffle, **limit)
