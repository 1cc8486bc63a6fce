"""Token masking for masked language modeling: pure, vectorized, seeded.

Every function takes a `torch.Generator` and returns new tensors; nothing here knows about models.
Shapes: B = batch, T = tokens per example.
"""

from __future__ import annotations

import functools

import torch


def select_tokens(candidates: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick each candidate token independently with `probability`.

    candidates: (B, T) bool, False at special tokens and padding (never selected).
    Returns (B, T) bool.
    """
    draw = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    return (draw < probability) & candidates


def word_starts(word_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) long word index per token (-1 at special/padding) -> (B, T) bool, True at each word's first token."""
    previous = torch.nn.functional.pad(word_ids[:, :-1], (1, 0), value=-1)
    return (word_ids >= 0) & (word_ids != previous)


def _word_number(word_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T) long: running count of words in the row (0-based), -1 at special/padding.

    Word ids from a tokenizer restart per document; counting starts instead of trusting the ids
    makes packed blocks (several documents per row) work.
    """
    number = torch.cumsum(word_starts(word_ids).long(), dim=1) - 1
    return torch.where(word_ids >= 0, number, torch.full_like(number, -1))


def select_whole_words(word_ids: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick each word with `probability`; every token of a picked word is selected.

    word_ids: (B, T) long, the word each token belongs to (from a fast tokenizer's `word_ids()`),
    -1 at special tokens and padding. Works for any fast tokenizer: no '##' or 'Ġ' conventions.
    Returns (B, T) bool.
    """
    number = _word_number(word_ids)
    per_word = torch.rand(word_ids.shape, generator=generator, device=word_ids.device) < probability  # (B, W<=T)
    picked = torch.gather(per_word, 1, number.clamp(min=0))
    return picked & (word_ids >= 0)


@functools.lru_cache(maxsize=64)
def span_start_probability(probability: float, geometric_p: float, max_length: int) -> float:
    """Per-word chance q of starting a span so that a fraction `probability` of words ends up covered.

    With span lengths L ~ Geometric(geometric_p) clipped to max_length, a word is uncovered when no
    span starting at it or up to max_length-1 words before reaches it:
    P(uncovered) = prod_k (1 - q * P(L > k)), k = 0..max_length-1. Solved for q by bisection.
    """
    lengths = torch.arange(1, max_length + 1, dtype=torch.float64)
    pmf = geometric_p * (1 - geometric_p) ** (lengths - 1)
    pmf[-1] += 1 - pmf.sum()  # clipping puts the tail mass on max_length
    survival = 1 - torch.cumsum(pmf, 0) + pmf  # P(L > k) for k = 0..max_length-1
    lo, hi = 0.0, 1.0
    for _ in range(60):
        q = (lo + hi) / 2
        covered = 1 - torch.prod(1 - q * survival).item()
        lo, hi = (q, hi) if covered < probability else (lo, q)
    return (lo + hi) / 2


def select_spans(
    word_ids: torch.Tensor,
    probability: float,
    geometric_p: float = 0.2,
    max_length: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpanBERT-style masking: spans of whole words, lengths ~ Geometric(geometric_p) clipped to max_length.

    Every word is covered with probability `probability` (overlaps accounted for in
    `span_start_probability`), whatever its position and its number of tokens, so the expected
    fraction of (non-special) TOKENS selected is `probability`, as with token masking. Spans may
    start up to max_length-1 words before the row: without them the first words of a row, which
    fewer spans can reach, would be covered less (14% of tokens instead of 15% on 64-token rows).
    word_ids: (B, T) long, -1 at special/padding. Returns (B, T) bool.
    """
    number = _word_number(word_ids)  # (B, T)
    B, T = word_ids.shape
    lead = max_length - 1  # start slots before the row's first word
    q = span_start_probability(probability, geometric_p, max_length)
    starts = torch.rand((B, lead + T), generator=generator, device=word_ids.device) < q  # slot j starts at word j - lead
    u = torch.rand((B, lead + T), generator=generator, device=word_ids.device).clamp_min(1e-12)
    # Inverse-CDF geometric sample: L = 1 + floor(log(u) / log(1 - p)), clipped.
    if geometric_p >= 1:
        lengths = torch.ones((B, lead + T), dtype=torch.long, device=word_ids.device)
    else:
        lengths = (1 + torch.floor(torch.log(u) / torch.log1p(torch.tensor(-geometric_p)))).long().clamp(max=max_length)
    slot_word = torch.arange(-lead, T, device=word_ids.device).expand(B, lead + T)
    # A word is covered if some span starting at or before it reaches past it: running max of the
    # spans' exclusive ends (-lead-1 where no span starts) compared with the word's index.
    ends = torch.where(starts, slot_word + lengths, torch.full_like(lengths, -lead - 1))
    reach = torch.cummax(ends, dim=1).values[:, lead:]  # (B, W) for words 0..T-1
    covered_word = reach > slot_word[:, lead:]  # (B, W)
    return torch.gather(covered_word, 1, number.clamp(min=0)) & (word_ids >= 0)


def apply_replacements(
    input_ids: torch.Tensor,
    selected: torch.Tensor,
    mask_token_id: int,
    replacement_ids: torch.Tensor,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of the selected tokens: [MASK] / random token / unchanged.

    input_ids: (B, T) long; selected: (B, T) bool; replacement_ids: (V',) long, the vocabulary
    random replacements are drawn from (special tokens excluded by the caller).
    Returns (corrupted inputs (B, T), labels (B, T) with -100 where not selected).
    """
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    to_mask = selected & (draw < mask_replace_prob)
    to_random = selected & (draw >= mask_replace_prob) & (draw < mask_replace_prob + random_replace_prob)
    random_tokens = replacement_ids[
        torch.randint(len(replacement_ids), input_ids.shape, generator=generator, device=input_ids.device)
    ]
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    corrupted = torch.where(to_random, random_tokens, corrupted)
    return corrupted, labels


def masked_positions_of(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels (-100 where not masked) -> (N,) long flat indices of the masked tokens, row-major.

    On a GPU this reads the mask back to the host (a sync, and a data-dependent shape for torch.compile):
    collators compute it on the CPU and pass it to the model as `masked_positions`."""
    return (labels.reshape(-1) != -100).nonzero().squeeze(1)
