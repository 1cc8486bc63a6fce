"""Pure, seeded, vectorized masking functions (no model objects): tokens for MLM, time spans for speech."""

from hfssl.masking.tokens import (
    apply_replacements,
    masked_positions_of,
    select_spans,
    select_tokens,
    select_whole_words,
    span_start_probability,
    word_starts,
)
from hfssl.masking.spans import (
    compute_span_mask,
    expected_masked_fraction,
    masked_rows,
    sample_negatives,
    span_mask_stats,
)
