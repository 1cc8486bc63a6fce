"""wav2vec 2.0 time-span masking and contrastive negative sampling.

Vectorized torch re-implementations of the masking recipe of wav2vec 2.0 (Baevski et al., 2020) as
implemented by transformers' ``_compute_mask_indices`` / ``_sample_negative_indices`` (numpy, Python
loop over the batch). Everything here is a pure function of its inputs and the (optional)
``torch.Generator``: no global RNG state is read or written when a generator is given, there is no
Python loop over the batch or over frames, and the only host/device synchronisations are the range
check on ``lengths`` in :func:`compute_span_mask` and the masked-frame count in
:func:`sample_negatives`.

Device rule: outputs live on the device of the input tensor (``lengths`` / ``mask``). Random numbers
are drawn on ``generator.device`` when a generator is given (torch requires the generator and the
sampled tensor to share a device) and otherwise on the input's device with the global RNG; they are
then moved to the input's device, so a CPU generator gives the same draws whatever device the
inputs are on.

Shapes: ``B`` batch size, ``T`` frames (after the feature encoder), ``K`` negatives per frame.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "compute_span_mask",
    "span_mask_stats",
    "sample_negatives",
    "expected_masked_fraction",
]


def _rand(
    shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` returned on ``device`` (see the module's device rule)."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, dtype=dtype, device=draw_device, generator=generator).to(device)


def _num_spans(
    lengths: torch.Tensor,
    num_frames: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int,
    eps: torch.Tensor,
) -> torch.Tensor:
    """(B,) long: number of span starts per utterance, with transformers' rounding and caps.

    float64 and the reference's operation order, so that ``mask_prob * length / mask_length + eps``
    rounds exactly like the Python floats of the reference implementation.
    """
    num = torch.floor(lengths.to(torch.float64) * mask_prob / mask_length + eps).long()
    # max(num, min_masks) first, then the same two caps as transformers: spans must fit into the
    # padded axis if they did not overlap (num * mask_length <= T), and starts are drawn without
    # replacement from the length - mask_length + 1 positions where a span fits in the real frames.
    num = num.clamp(min_masks, num_frames // mask_length)
    return torch.minimum(num, (lengths - (mask_length - 1)).clamp_min(0))


def compute_span_mask(
    lengths: torch.Tensor,
    num_frames: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample wav2vec 2.0 time-span masks.

    Per utterance ``b`` with ``L_b = lengths[b]`` real frames:
    ``n_b = floor(mask_prob * L_b / mask_length + eps_b)`` with ``eps_b ~ U[0, 1)`` (probabilistic
    rounding, so ``E[n_b] = mask_prob * L_b / mask_length``), then ``n_b = max(n_b, min_masks)``,
    capped at ``num_frames // mask_length`` and at ``L_b - mask_length + 1``. ``n_b`` distinct span
    starts are drawn uniformly without replacement from ``[0, L_b - mask_length]`` and frames
    ``[start, start + mask_length)`` are masked. Spans may overlap, so the masked fraction is below
    ``mask_prob`` (about 0.49 at ``mask_prob=0.65, mask_length=10``, mean run length about 14.7).

    Same distribution as transformers' ``_compute_mask_indices(..., attention_mask=...)`` with two
    deliberate differences: ``eps`` is drawn per utterance (as fairseq does) rather than once per
    batch, and an utterance that gets no span (``L_b < mask_length``) is left entirely unmasked,
    whereas the reference then masks the padded frame ``T - 1``.

    Args:
        lengths: (B,) integer tensor, number of real (unpadded) frames per utterance, each in
            ``[0, num_frames]``. Frames at or beyond ``lengths[b]`` are never masked.
        num_frames: T, the padded number of frames.
        mask_prob: expected number of spans per real frame times ``mask_length``, i.e. the masked
            fraction if spans never overlapped (an upper bound on the actual one).
        mask_length: span length in frames (>= 1).
        min_masks: minimum number of spans per utterance (still subject to the caps above, so
            utterances shorter than ``mask_length`` get none).
        generator: optional ``torch.Generator`` making the draw reproducible.

    Returns:
        (B, T) bool tensor on ``lengths.device``, True = masked.
    """
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    if num_frames < 0 or min_masks < 0:
        raise ValueError(f"num_frames and min_masks must be >= 0, got {num_frames} and {min_masks}")
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (B,), got {tuple(lengths.shape)}")
    if lengths.numel():
        shortest, longest = (int(x) for x in lengths.aminmax())
        if shortest < 0 or longest > num_frames:
            raise ValueError(f"lengths must lie in [0, num_frames={num_frames}], got {lengths.tolist()}")
    device = lengths.device
    lengths = lengths.long()
    batch = lengths.shape[0]
    # Static upper bound on n_b (the two caps evaluated at L_b = T): keeps topk's k a Python int
    # without reading the per-utterance counts back from the device.
    max_spans = min(num_frames // mask_length, max(num_frames - mask_length + 1, 0))
    if batch == 0 or max_spans == 0:
        return torch.zeros(batch, num_frames, dtype=torch.bool, device=device)

    eps = _rand((batch,), dtype=torch.float64, device=device, generator=generator)
    num_spans = _num_spans(lengths, num_frames, mask_prob, mask_length, min_masks, eps)

    # Sampling n_b starts without replacement == taking the n_b largest of i.i.d. uniform scores
    # over the valid starts. Invalid starts get score -1 so they are never among the first n_b
    # (n_b <= number of valid starts by the cap above). float64 scores make ties, which topk would
    # break by position rather than at random, ~2**-53 events.
    frames = torch.arange(num_frames, device=device)
    scores = _rand((batch, num_frames), dtype=torch.float64, device=device, generator=generator)
    scores = torch.where(frames[None, :] <= (lengths - mask_length)[:, None], scores, -1.0)
    top_starts = scores.topk(max_spans, dim=1, sorted=True).indices  # (B, max_spans), best first
    keep = torch.arange(max_spans, device=device)[None, :] < num_spans[:, None]  # (B, max_spans)

    # Expand each kept start into its mask_length frames; rejected slots are sent to the extra
    # column T, which is dropped. max_spans * mask_length <= T, so this is O(B * T).
    span_frames = top_starts[:, :, None] + torch.arange(mask_length, device=device)
    span_frames = torch.where(keep[:, :, None], span_frames, num_frames).view(batch, -1)
    mask = torch.zeros(batch, num_frames + 1, dtype=torch.bool, device=device)
    return mask.scatter_(1, span_frames, True)[:, :num_frames].contiguous()


def span_mask_stats(mask: torch.Tensor, lengths: torch.Tensor) -> dict[str, float | int]:
    """Statistics of the contiguous masked runs inside the real frames.

    Overlapping or adjacent spans form a single run, so ``mean_span_length`` is the length of the
    runs actually seen by the model (about 14.7 at ``mask_prob=0.65, mask_length=10``), not
    ``mask_length``.

    Args:
        mask: (B, T) bool, True = masked.
        lengths: (B,) integer, real frames per utterance; masked frames beyond are ignored.

    Returns:
        ``masked_fraction``: masked real frames / real frames over the whole batch (0.0 if none);
        ``mean_span_length``: masked real frames / number of runs (0.0 if no run);
        ``num_spans``: number of maximal runs of masked frames over the batch.
    """
    mask = mask.bool()
    lengths = torch.as_tensor(lengths, device=mask.device).long()
    frames = torch.arange(mask.shape[1], device=mask.device)
    mask = mask & (frames[None, :] < lengths[:, None])
    # A run starts at every masked frame whose left neighbour is unmasked (or absent).
    previous = torch.nn.functional.pad(mask[:, :-1], (1, 0), value=False)
    num_runs = int((mask & ~previous).sum())
    masked = int(mask.sum())
    total = int(lengths.sum())
    return {
        "masked_fraction": masked / total if total > 0 else 0.0,
        "mean_span_length": masked / num_runs if num_runs > 0 else 0.0,
        "num_spans": num_runs,
    }


def sample_negatives(mask: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample contrastive distractors among the masked frames of the same utterance.

    For a masked frame t of utterance b with ``M_b`` masked frames, each of the K negatives is
    drawn uniformly, with replacement across K, from the other ``M_b - 1`` masked frames of
    utterance b (same distribution as transformers' ``_sample_negative_indices`` with
    ``mask_time_indices``). Only masked frames are candidates, so padding is never sampled as long
    as ``mask`` does not mark padding (:func:`compute_span_mask` never does).

    Unmasked frames get index 0 for every negative, as in transformers: a valid index whose value
    carries no meaning (the contrastive loss is only computed on masked frames).

    Degenerate utterances: with ``M_b == 1`` there is no other masked frame, so all K negatives of
    that frame are the frame itself. Objectives must ignore negatives equal to the positive, as
    wav2vec 2.0 does (transformers sets their logits to -inf, which makes such a frame contribute
    zero loss); transformers' reference raises in this case.

    Random numbers are drawn only for masked frames, which needs their count on the host: one
    device synchronisation when ``mask`` is on an accelerator.

    Args:
        mask: (B, T) bool, True = masked (the frames the contrastive loss is computed on).
        num_negatives: K >= 1.
        generator: optional ``torch.Generator`` making the draw reproducible.

    Returns:
        (B, T, K) long tensor on ``mask.device``: time indices in ``[0, T)`` into the same utterance
        (``Wav2Vec2ForPreTraining`` takes ``b * T + t`` instead).
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape (B, T), got {tuple(mask.shape)}")
    mask = mask.bool()
    device = mask.device
    batch, num_frames = mask.shape
    negatives = torch.zeros(batch, num_frames, num_negatives, dtype=torch.long, device=device)
    batch_idx, time_idx = mask.nonzero(as_tuple=True)  # (N,) each, N = masked frames in the batch
    if batch_idx.numel() == 0:
        return negatives

    csum = mask.cumsum(dim=1)  # (B, T): number of masked frames at or before t
    num_masked = csum[:, -1]  # (B,) = M_b
    # table[b, j] = time index of the (j mod M_b)-th masked frame of utterance b, for j < 2T.
    # Reading own_rank + 1 + r with r uniform in [0, M_b - 2] gives a uniform draw over the other
    # masked frames without a wrap-around or skip-the-positive pass over the (N, K) draws; for
    # M_b == 1 it reads the frame itself.
    frames = torch.arange(num_frames, device=device)
    masked_pos = torch.zeros(batch, num_frames + 1, dtype=torch.long, device=device)
    # Unmasked frames are scattered into the extra column T, which is dropped.
    masked_pos.scatter_(1, torch.where(mask, csum - 1, num_frames), frames.expand(batch, -1))
    slots = torch.arange(2 * num_frames, device=device)
    table = masked_pos.gather(1, slots[None, :] % num_masked.clamp_min(1)[:, None])  # (B, 2T)

    # Flat position of each masked frame's own slot + 1 in the flattened table. int32 index
    # arithmetic (index_select accepts it) halves the memory traffic of the (N, K) passes; the
    # table has 2 * B * T entries, far below 2**31.
    base = (batch_idx * (2 * num_frames) + csum[batch_idx, time_idx]).to(torch.int32)  # (N,)
    num_others = (num_masked - 1)[batch_idx].to(torch.float32)  # (N,)
    u = _rand((base.numel(), num_negatives), dtype=torch.float32, device=device, generator=generator)
    # In float32, u * n rounds to below n for every u < 1 (largest: 1 - 2**-24) and integer
    # n <= 2**22 (checked exhaustively; n < M_b <= T), so floor(u * n) <= M_b - 2 and the
    # positive's own slot (own + M_b) is never read when M_b >= 2.
    slot = (u * num_others[:, None]).to(torch.int32).add_(base[:, None])  # (N, K)
    picked = table.view(-1).index_select(0, slot.view(-1))
    negatives.view(batch * num_frames, num_negatives).index_copy_(
        0, batch_idx * num_frames + time_idx, picked.view(-1, num_negatives)
    )
    return negatives


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def expected_masked_fraction(
    mask_prob: float, mask_length: int, length: int, num_frames: int | None = None, min_masks: int = 2
) -> float:
    """Exact expected masked fraction of one utterance under :func:`compute_span_mask`.

    With ``n`` distinct starts drawn uniformly from ``N = length - mask_length + 1`` positions,
    frame t (covered by ``w_t`` possible starts) stays unmasked with probability
    ``C(N - w_t, n) / C(N, n)``; ``n`` is ``floor(x)`` or ``floor(x) + 1`` (``x = mask_prob *
    length / mask_length``) with the probabilistic-rounding weights, then ``min_masks`` and the caps
    apply. O(length) Python arithmetic: meant for reports and tests, not the training loop.

    Args:
        mask_prob, mask_length, min_masks: as in :func:`compute_span_mask`.
        length: real frames of the utterance.
        num_frames: padded T (defaults to ``length``); only matters through the ``T // mask_length`` cap.

    Returns:
        E[masked real frames] / length (0.0 for length 0).
    """
    if length <= 0:
        return 0.0
    num_frames = length if num_frames is None else num_frames
    num_starts = length - mask_length + 1
    if num_starts <= 0:
        return 0.0
    x = mask_prob * length / mask_length
    low = math.floor(x)
    expected = 0.0
    for n, weight in ((low, 1.0 - (x - low)), (low + 1, x - low)):
        if weight <= 0.0:
            continue
        n = min(max(n, min_masks), num_frames // mask_length, num_starts)
        if n == 0:
            continue
        log_total = _log_comb(num_starts, n)
        masked = 0.0
        for t in range(length):
            covering = min(t, num_starts - 1) - max(0, t - mask_length + 1) + 1
            remaining = num_starts - covering
            p_unmasked = math.exp(_log_comb(remaining, n) - log_total) if remaining >= n else 0.0
            masked += 1.0 - p_unmasked
        expected += weight * masked / length
    return expected


def masked_rows(mask: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked frames as rows of the (N, ...) tensors a contrastive loss works on, and their negatives as rows.

    Args:
        mask: (B, T) bool, masked frames.
        negatives: (B, T, K) long time indices into the same utterance (`sample_negatives`).
    Returns:
        positions (N,) long: flat b * T + t of each masked frame, row-major;
        negative_rows (N, K) long: for each masked frame, the row (in 0..N-1) of each of its negatives.
    Collators compute these on the CPU, so that a model on a GPU gathers by index instead of reading the
    mask back (a boolean index is a device sync and a data-dependent shape).
    """
    B, T = mask.shape
    positions = mask.reshape(-1).nonzero().squeeze(1)  # (N,)
    rows_of = mask.reshape(-1).long().cumsum(0) - 1  # (B * T,) row of each masked frame
    flat = (positions // T)[:, None] * T + negatives.reshape(B * T, -1).index_select(0, positions)  # (N, K)
    return positions, rows_of[flat]
