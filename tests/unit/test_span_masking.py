"""Tests for hfssl.masking.spans (wav2vec 2.0 span masks and negatives).

The statistical reference is `_reference_mask` below: the wav2vec 2.0 masking recipe written as a
plain loop over utterances and spans (numpy), independent of the vectorized implementation and of
any library's private functions. All draws are seeded, so the statistical tolerances below are
deterministic checks; they are set at several standard errors of the measured quantity so that a
change of seed would not break them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfssl.masking.spans import (
    compute_span_mask,
    expected_masked_fraction,
    masked_rows,
    sample_negatives,
    span_mask_stats,
)

PROB, SPAN, FRAMES, BATCH = 0.65, 10, 780, 8


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ours_stats(lengths: torch.Tensor, num_frames: int, draws: int, seed: int = 0) -> dict[str, float]:
    """Pooled stats of ``draws`` batches (pooled masked frames / pooled runs, like the paper's numbers)."""
    g = _gen(seed)
    masks = torch.cat([compute_span_mask(lengths, num_frames, PROB, SPAN, generator=g) for _ in range(draws)])
    return span_mask_stats(masks, lengths.repeat(draws))


def _reference_mask(lengths, num_frames: int, mask_prob: float, mask_length: int, min_masks: int, rng) -> np.ndarray:
    """The wav2vec 2.0 recipe, one utterance and one span at a time: n = floor(mask_prob * L /
    mask_length + u), u ~ U[0, 1) per utterance; at least min_masks; at most num_frames // mask_length
    (spans side by side must fit the padded axis) and L - mask_length + 1 (the possible starts); n
    distinct starts drawn uniformly; each masks mask_length frames. (B, T) bool."""
    mask = np.zeros((len(lengths), num_frames), dtype=bool)
    for b, length in enumerate(int(x) for x in lengths):
        starts = length - mask_length + 1
        n = int(np.floor(mask_prob * length / mask_length + rng.random()))
        n = min(max(n, min_masks), num_frames // mask_length, max(starts, 0))
        for start in rng.choice(max(starts, 1), size=n, replace=False):
            mask[b, start : start + mask_length] = True
    return mask


def _reference_stats(lengths: torch.Tensor, num_frames: int, draws: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    masks = [_reference_mask(lengths, num_frames, PROB, SPAN, 2, rng) for _ in range(draws)]
    return span_mask_stats(torch.from_numpy(np.concatenate(masks)), lengths.repeat(draws))


def test_masked_fraction_and_span_length_match_paper_and_reference():
    lengths = torch.full((BATCH,), FRAMES)
    ours = _ours_stats(lengths, FRAMES, draws=200)
    ref = _reference_stats(lengths, FRAMES, draws=200)
    # wav2vec 2.0 paper: ~49% of frames masked, mean span ~14.7 frames at p=0.065 starts, M=10.
    assert ours["masked_fraction"] == pytest.approx(0.49, abs=0.03)
    assert ours["masked_fraction"] == pytest.approx(ref["masked_fraction"], abs=0.005)
    assert ours["masked_fraction"] == pytest.approx(expected_masked_fraction(PROB, SPAN, FRAMES), abs=0.003)
    assert ours["mean_span_length"] == pytest.approx(14.7, abs=0.5)
    assert ours["mean_span_length"] == pytest.approx(ref["mean_span_length"], abs=0.3)


def test_variable_lengths_match_reference_and_analytic_expectation():
    lengths = torch.tensor([780, 600, 451, 300, 203, 120, 57, 25])
    draws = 300
    ours = _ours_stats(lengths, FRAMES, draws)
    ref = _reference_stats(lengths, FRAMES, draws)
    assert ours["masked_fraction"] == pytest.approx(ref["masked_fraction"], abs=0.01)
    assert ours["mean_span_length"] == pytest.approx(ref["mean_span_length"], abs=0.5)

    # Per utterance: mean masked fraction over draws vs the exact expectation (within 5 standard
    # errors). Short utterances are where min_masks and the caps matter most.
    g = _gen(1)
    masks = torch.stack([compute_span_mask(lengths, FRAMES, PROB, SPAN, generator=g) for _ in range(draws)])
    per_draw = masks.sum(-1).double() / lengths.double()  # (draws, B)
    mean, sem = per_draw.mean(0), per_draw.std(0) / draws**0.5
    for b, length in enumerate(lengths.tolist()):
        expected = expected_masked_fraction(PROB, SPAN, length, num_frames=FRAMES, min_masks=2)
        assert abs(mean[b].item() - expected) < 5 * sem[b].item() + 1e-3, (length, mean[b].item(), expected)


def test_expected_masked_fraction_matches_monte_carlo_on_short_utterance():
    lengths = torch.full((4000,), 40)
    mask = compute_span_mask(lengths, 64, PROB, SPAN, generator=_gen(3))
    measured = span_mask_stats(mask, lengths)["masked_fraction"]
    assert measured == pytest.approx(expected_masked_fraction(PROB, SPAN, 40, num_frames=64), abs=0.005)
    assert expected_masked_fraction(PROB, SPAN, 9) == 0.0
    assert expected_masked_fraction(PROB, SPAN, 0) == 0.0


def test_padding_is_never_masked():
    lengths = torch.tensor([0, 3, 9, 10, 11, 57, 300, 500])
    frames = torch.arange(500)
    g = _gen(4)
    for _ in range(50):
        mask = compute_span_mask(lengths, 500, PROB, SPAN, generator=g)
        assert mask.shape == (8, 500) and mask.dtype == torch.bool
        assert not (mask & (frames[None, :] >= lengths[:, None])).any()
        assert mask[4:].any(-1).all()  # every utterance that can hold a span got one


def test_short_utterances():
    # Shorter than a span: nothing to mask (transformers masks the padded frame T - 1 instead).
    mask = compute_span_mask(torch.tensor([0, 3, 9]), 20, PROB, SPAN, generator=_gen(0))
    assert not mask.any()
    # Exactly one span fits: min_masks=2 is capped to the single possible start.
    mask = compute_span_mask(torch.tensor([10]), 20, PROB, SPAN, generator=_gen(0))
    assert mask[0, :10].all() and not mask[0, 10:].any()
    # Padded axis shorter than a span: empty mask, not an error (transformers raises).
    assert not compute_span_mask(torch.tensor([5, 0]), 5, PROB, SPAN).any()
    assert compute_span_mask(torch.tensor([], dtype=torch.long), 5, PROB, SPAN).shape == (0, 5)


def test_span_counts_rounding_and_min_masks():
    # mask_length=1 makes every start a distinct masked frame, so counts are exact span counts.
    lengths = torch.full((4000,), 10)
    counts = compute_span_mask(lengths, 10, 0.25, 1, min_masks=0, generator=_gen(5)).sum(-1)
    # x = 0.25 * 10 = 2.5 -> probabilistic rounding to 2 or 3, each with probability 1/2.
    assert set(counts.unique().tolist()) == {2, 3}
    assert counts.double().mean().item() == pytest.approx(2.5, abs=0.05)

    lengths = torch.tensor([100, 100, 20])
    counts = compute_span_mask(lengths, 100, 0.0, 1, min_masks=5, generator=_gen(6)).sum(-1)
    assert counts.tolist() == [5, 5, 5]
    assert not compute_span_mask(lengths, 100, 0.0, 1, min_masks=0, generator=_gen(6)).any()
    counts = compute_span_mask(lengths, 100, 0.5, 1, min_masks=0, generator=_gen(6)).sum(-1)
    assert counts.tolist() == [50, 50, 10]
    # min_masks above what fits: capped at the number of possible starts (all real frames).
    mask = compute_span_mask(torch.tensor([20]), 30, 0.0, 1, min_masks=50, generator=_gen(7))
    assert mask[0, :20].all() and not mask[0, 20:].any()

    # min_masks with real spans: mask_prob=0 still gives 2 spans -> between 10 and 20 frames.
    masked = compute_span_mask(torch.full((500,), 200), 200, 0.0, SPAN, generator=_gen(8)).sum(-1)
    assert ((masked >= SPAN) & (masked <= 2 * SPAN)).all()
    assert (masked == 2 * SPAN).any() and (masked < 2 * SPAN).any()  # overlaps happen


def test_span_count_caps_match_reference():
    # min_masks=8 spans of 2 frames on a 10-frame axis: the count is capped at T // span = 5
    # (spans would not fit side by side), not only at the 9 possible starts.
    ref = _reference_mask([10] * 4000, 10, 0.0, 2, 8, np.random.default_rng(0)).mean()
    lengths = torch.full((4000,), 10)
    ours = compute_span_mask(lengths, 10, 0.0, 2, min_masks=8, generator=_gen(9)).double().mean().item()
    assert ours == pytest.approx(ref, abs=0.01)
    assert ours == pytest.approx(expected_masked_fraction(0.0, 2, 10, min_masks=8), abs=0.01)
    assert expected_masked_fraction(0.0, 2, 10, min_masks=8) < 0.95  # 8 of 9 starts would give > 0.97


def test_mask_is_seeded_and_leaves_global_rng_alone():
    lengths = torch.tensor([780, 400, 123])
    state = torch.random.get_rng_state()
    a = compute_span_mask(lengths, FRAMES, PROB, SPAN, generator=_gen(11))
    b = compute_span_mask(lengths, FRAMES, PROB, SPAN, generator=_gen(11))
    c = compute_span_mask(lengths, FRAMES, PROB, SPAN, generator=_gen(12))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Without a generator the global RNG is used, so torch.manual_seed makes it reproducible.
    torch.manual_seed(0)
    d = compute_span_mask(lengths, FRAMES, PROB, SPAN)
    torch.manual_seed(0)
    assert torch.equal(d, compute_span_mask(lengths, FRAMES, PROB, SPAN))


def test_output_device_follows_inputs_on_cpu():
    lengths = torch.tensor([50, 30], device="cpu")
    g = torch.Generator(device="cpu").manual_seed(0)
    mask = compute_span_mask(lengths, 50, PROB, SPAN, generator=g)
    negatives = sample_negatives(mask, 4, generator=g)
    assert mask.device == lengths.device and negatives.device == mask.device
    assert negatives.dtype == torch.long and negatives.shape == (2, 50, 4)
    # A plain list of lengths is accepted as well.
    assert torch.equal(compute_span_mask([50, 30], 50, PROB, SPAN, generator=_gen(0)),
                       compute_span_mask(lengths, 50, PROB, SPAN, generator=_gen(0)))


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        compute_span_mask(torch.tensor([81]), 80, PROB, SPAN)
    with pytest.raises(ValueError):
        compute_span_mask(torch.tensor([-1]), 80, PROB, SPAN)
    with pytest.raises(ValueError):
        compute_span_mask(torch.tensor([80]), 80, PROB, 0)
    with pytest.raises(ValueError):
        sample_negatives(torch.ones(2, 5, dtype=torch.bool), 0)


def test_span_mask_stats_on_known_mask():
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    stats = span_mask_stats(mask, torch.tensor([6, 4]))  # row 1: frames 4, 5 are padding
    assert stats == {"masked_fraction": 0.6, "mean_span_length": 2.0, "num_spans": 3}
    empty = span_mask_stats(torch.zeros(2, 6, dtype=torch.bool), torch.tensor([6, 0]))
    assert empty == {"masked_fraction": 0.0, "mean_span_length": 0.0, "num_spans": 0}


def test_negatives_are_other_masked_frames_of_the_same_utterance():
    lengths = torch.tensor([780, 600, 301, 120, 57, 25, 12, 9])
    g = _gen(21)
    for _ in range(5):
        mask = compute_span_mask(lengths, FRAMES, PROB, SPAN, generator=g)
        negatives = sample_negatives(mask, 100, generator=g)
        assert negatives.shape == (8, FRAMES, 100) and negatives.dtype == torch.long
        assert ((negatives >= 0) & (negatives < FRAMES)).all()  # valid everywhere
        b, t = mask.nonzero(as_tuple=True)
        neg = negatives[b, t]  # (N, K) for masked frames
        assert (neg != t[:, None]).all()  # never the positive
        assert mask[b[:, None], neg].all()  # only masked frames (hence never padding)
        assert (neg < lengths[b][:, None]).all()
        assert (negatives[~mask] == 0).all()  # unmasked frames: index 0, as in transformers


def test_negatives_are_uniform_over_the_other_masked_frames():
    mask = torch.zeros(1, 30, dtype=torch.bool)
    mask[0, [2, 3, 7, 20, 29]] = True
    negatives = sample_negatives(mask, 20000, generator=_gen(22))
    counts = torch.bincount(negatives[0, 7], minlength=30)
    assert counts[7] == 0 and counts[[2, 3, 20, 29]].sum() == 20000
    # 5000 expected per candidate, binomial sd ~61: 4 sd.
    assert ((counts[[2, 3, 20, 29]] - 5000).abs() < 250).all()


def test_negatives_degenerate_utterances():
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, [1, 5]] = True  # two masked frames: each one's negatives are the other one
    mask[1, 4] = True  # one masked frame: no other frame exists -> itself (objective ignores)
    negatives = sample_negatives(mask, 6, generator=_gen(23))  # row 2: nothing masked
    assert (negatives[0, 1] == 5).all() and (negatives[0, 5] == 1).all()
    assert (negatives[1, 4] == 4).all()
    assert (negatives[2] == 0).all()
    assert (sample_negatives(torch.zeros(2, 0, dtype=torch.bool), 3)).shape == (2, 0, 3)


def test_negatives_are_seeded():
    mask = compute_span_mask(torch.tensor([780, 500]), FRAMES, PROB, SPAN, generator=_gen(0))
    a = sample_negatives(mask, 100, generator=_gen(31))
    b = sample_negatives(mask, 100, generator=_gen(31))
    c = sample_negatives(mask, 100, generator=_gen(32))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_masked_rows_gather_each_masked_frames_own_negatives():
    # The loss works on the masked frames as rows (masked_rows): row n of features.view(B*T, C)[positions] must be
    # masked frame (b, t), and its negative rows the frames negatives[b, t] of the same utterance.
    mask = compute_span_mask(torch.tensor([40, 33, 20]), 40, PROB, SPAN, generator=_gen(41))
    negatives = sample_negatives(mask, 7, generator=_gen(42))
    features = torch.randn(3, 40, 5)
    positions, rows = masked_rows(mask, negatives)
    masked = features[mask]  # (N, 5), row-major like positions
    assert torch.equal(features.view(-1, 5)[positions], masked)
    by_rows = masked[rows]  # (N, 7, 5)
    by_utterance = torch.stack([features[b][negatives[b, t]] for b, t in mask.nonzero().tolist()])
    assert rows.shape == (int(mask.sum()), 7) and torch.equal(by_rows, by_utterance)


def test_float32_rank_draw_stays_below_its_bound():
    # sample_negatives draws ranks as floor(u * n) in float32; this must stay <= n - 1 for the
    # largest u below 1 and every candidate count n a realistic T can produce.
    largest_u = torch.tensor(1.0).nextafter(torch.tensor(0.0))
    n = torch.arange(1, 2**20 + 1, dtype=torch.float32)
    assert ((largest_u * n).to(torch.int32) <= n.to(torch.int32) - 1).all()
