"""Tests for hfssl.masking.tokens and MLMCollator (token, whole-word and span masking for MLM).

Every draw is seeded, so the statistical checks are deterministic; their tolerances are set at
Z standard errors of the measured quantity (binomial for independent choices, the spread over
independent rows for span coverage), so a change of seed would not break a correct implementation
while a wrong rate, split or coverage formula fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from hfssl.collators import MLMCollator
from hfssl.masking.tokens import (
    _word_number,
    apply_replacements,
    select_spans,
    select_tokens,
    select_whole_words,
    span_start_probability,
    word_starts,
)

Z = 5.0  # standard errors allowed in statistical checks

# A fake vocabulary: ids 0..4 are special, 5..V-1 are real tokens.
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = torch.tensor([PAD, UNK, CLS, SEP, MASK])
V = 1000
REPLACEMENT = torch.arange(5, V)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_binomial(successes: int, trials: int, p: float, what: str) -> None:
    assert trials > 0, f"{what}: no trials"
    se = math.sqrt(p * (1 - p) / trials)
    rate = successes / trials
    assert abs(rate - p) <= Z * se, f"{what}: {rate:.4f} over {trials} trials, expected {p:.4f} +- {Z * se:.4f}"


def _collator(**kw) -> MLMCollator:
    return MLMCollator(PAD, MASK, SPECIAL, REPLACEMENT, **kw)


def _examples(n: int, seed: int, min_len: int = 20, max_len: int = 120, words: bool = False) -> list[dict]:
    """Variable-length rows [CLS] tokens [SEP] (so batches have padding); with `words`, 1-3 tokens
    per word and word_ids (-1 at [CLS]/[SEP])."""
    g = _gen(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(5, V, (length,), generator=g).tolist()
        ex = {"input_ids": [CLS, *ids, SEP]}
        if words:
            sizes = torch.randint(1, 4, (length,), generator=g).tolist()
            wids: list[int] = []
            w = 0
            while len(wids) < length:
                wids.extend([w] * sizes[w])
                w += 1
            ex["word_ids"] = [-1, *wids[:length], -1]
        out.append(ex)
    return out


def _packed_rows(n_rows: int, seed: int, docs_per_row: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows [CLS] doc [SEP] doc [SEP] ... whose word ids RESTART at 0 in every document (as a tokenizer
    gives them), words of 1-3 tokens. Returns input_ids, word_ids (-1 at special), doc index (-1 at special),
    all (B, T)."""
    g = _gen(seed)
    rows_ids, rows_w, rows_d = [], [], []
    for _ in range(n_rows):
        ids, wids, docs = [CLS], [-1], [-1]
        for d in range(docs_per_row):
            n_words = int(torch.randint(5, 30, (1,), generator=g))
            for w in range(n_words):
                size = int(torch.randint(1, 4, (1,), generator=g))
                ids += torch.randint(5, V, (size,), generator=g).tolist()
                wids += [w] * size
                docs += [d] * size
            ids.append(SEP)
            wids.append(-1)
            docs.append(-1)
        rows_ids.append(ids)
        rows_w.append(wids)
        rows_d.append(docs)
    T = max(len(r) for r in rows_ids)
    pad = lambda rows, v: torch.tensor([r + [v] * (T - len(r)) for r in rows])  # noqa: E731
    return pad(rows_ids, PAD), pad(rows_w, -1), pad(rows_d, -1)


def _word_level(selected: torch.Tensor, word_ids: torch.Tensor) -> tuple[list[list[bool]], int]:
    """Collapse a token selection to one flag per word (words = maximal runs of equal word ids >= 0).
    Asserts that every word is selected entirely or not at all. Returns per-row word flags and the
    number of words."""
    rows = []
    for sel_row, w_row in zip(selected.tolist(), word_ids.tolist()):
        flags: list[bool] = []
        prev = -1
        for s, w in zip(sel_row, w_row):
            if w < 0:
                assert not s, "a token outside any word (special/padding) was selected"
                prev = -1
                continue
            if w != prev:
                flags.append(s)
                prev = w
            else:
                assert s == flags[-1], "a word was only partly selected"
        rows.append(flags)
    return rows, sum(len(r) for r in rows)


def _inner_runs(selected: torch.Tensor) -> torch.Tensor:
    """(B, W) bool at word level -> 1-D lengths of the runs of True, leaving out runs that touch either
    end of a row (cut short by the edge). Runs are i.i.d.: once a word is uncovered, the next run
    depends only on later span starts."""
    B, W = selected.shape
    padded = torch.nn.functional.pad(selected, (1, 1), value=False).int()  # (B, W+2)
    change = padded[:, 1:] - padded[:, :-1]  # +1 at a run's first word, -1 one past its last
    starts = (change == 1).nonzero()
    ends = (change == -1).nonzero()  # same order: row-major, one end per start
    assert torch.equal(starts[:, 0], ends[:, 0])
    inner = (starts[:, 1] > 0) & (ends[:, 1] < W)
    return (ends[:, 1] - starts[:, 1])[inner]


# ------------------------------------------------------------------------------- token masking

def test_token_masking_rate_and_80_10_10_split():
    collator = _collator(mlm_probability=0.15)
    n_cand = n_sel = n_mask = n_rand = n_same = 0
    for seed in range(30):
        examples = _examples(64, seed=1000 + seed)
        batch = collator(examples, seed=seed)
        original = torch.full_like(batch["input_ids"], PAD)
        for i, e in enumerate(examples):
            original[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        selected = batch["labels"] != -100
        candidates = batch["attention_mask"].bool() & ~torch.isin(original, SPECIAL)
        # Labels hold the original token at selected positions; everything else is untouched.
        assert torch.equal(batch["labels"][selected], original[selected])
        assert torch.equal(batch["input_ids"][~selected], original[~selected])
        assert batch["num_targets"] == int(selected.sum())
        assert batch["num_inputs"] == sum(len(e["input_ids"]) for e in examples)
        n_cand += int(candidates.sum())
        n_sel += int(selected.sum())
        got = batch["input_ids"][selected]
        n_mask += int((got == MASK).sum())
        n_rand += int(((got != MASK) & (got != original[selected])).sum())
        n_same += int((got == original[selected]).sum())
    assert_binomial(n_sel, n_cand, 0.15, "masked fraction")
    # A random replacement equals the original token with chance 1/V'.
    v = len(REPLACEMENT)
    assert_binomial(n_mask, n_sel, 0.8, "[MASK] share")
    assert_binomial(n_rand, n_sel, 0.1 * (1 - 1 / v), "random share")
    assert_binomial(n_same, n_sel, 0.1 + 0.1 / v, "unchanged share")


def test_select_tokens_rate_and_candidates_only():
    candidates = torch.rand((200, 300), generator=_gen(1)) < 0.7
    selected = select_tokens(candidates, 0.3, _gen(2))
    assert not (selected & ~candidates).any()
    assert_binomial(int(selected.sum()), int(candidates.sum()), 0.3, "select_tokens rate")


@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
def test_special_tokens_and_padding_never_selected(strategy):
    # A high rate and special tokens in the middle of rows (packed [SEP]s, [UNK], a stray [MASK]/[CLS]);
    # the word ids there are deliberately NOT -1: the collator must exclude them on its own.
    examples = _examples(48, seed=7, min_len=10, max_len=80, words=True)
    g = _gen(8)
    for e in examples:
        ids, wids = e["input_ids"], e["word_ids"]
        for _ in range(5):
            pos = int(torch.randint(1, len(ids) - 1, (1,), generator=g))
            ids[pos] = int(SPECIAL[int(torch.randint(0, 5, (1,), generator=g))])
        e["word_ids"] = [max(w, 0) for w in wids]
    collator = _collator(mlm_probability=0.9, mask_strategy=strategy)
    for seed in range(5):
        batch = collator(examples, seed=seed)
        original = torch.full_like(batch["input_ids"], PAD)
        for i, e in enumerate(examples):
            original[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        selected = batch["labels"] != -100
        forbidden = torch.isin(original, SPECIAL) | ~batch["attention_mask"].bool()
        assert forbidden.any() and selected.any()
        assert not (selected & forbidden).any(), f"{strategy}: a special/padding position was selected"
        # Unselected special tokens and padding pass through unchanged.
        assert torch.equal(batch["input_ids"][forbidden], original[forbidden])
        assert (batch["attention_mask"] == (torch.arange(original.shape[1])[None] < torch.tensor([len(e["input_ids"]) for e in examples])[:, None]).long()).all()
        assert batch["input_ids"].shape[1] % 8 == 0


def test_random_replacements_are_real_non_special_tokens_spread_over_vocabulary():
    small = torch.arange(5, 55)  # 50 real tokens
    collator = MLMCollator(PAD, MASK, SPECIAL, small, mlm_probability=0.5, mask_replace_prob=0.0, random_replace_prob=1.0)
    examples = [{"input_ids": [CLS, *([7] * 100), SEP]} for _ in range(40)]
    counts = torch.zeros(V, dtype=torch.long)
    for seed in range(10):
        batch = collator(examples, seed=seed)
        got = batch["input_ids"][batch["labels"] != -100]
        assert not torch.isin(got, SPECIAL).any()
        assert torch.isin(got, small).all(), "random replacement outside the replacement vocabulary"
        counts += torch.bincount(got, minlength=V)
    n = int(counts.sum())
    for tok in small.tolist():  # uniform over the 50 real tokens
        assert_binomial(int(counts[tok]), n, 1 / len(small), f"share of random token {tok}")


def test_from_tokenizer_replacements_are_the_real_vocabulary_without_specials():
    from hfssl.data.text.tokenizer import train_tokenizer

    sentences = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"] * 10
    tok = train_tokenizer(sentences, "wordpiece", 150)
    collator = MLMCollator.from_tokenizer(tok, mlm_probability=0.15)
    special = set(tok.all_special_ids)
    assert set(collator.special_token_ids.tolist()) == special
    assert collator.mask_token_id == tok.mask_token_id and collator.pad_token_id == tok.pad_token_id
    assert sorted(collator.replacement_ids.tolist()) == [i for i in range(len(tok)) if i not in special]
    # Random replacements only ever come from that set.
    corrupted, _ = apply_replacements(
        torch.full((50, 100), 10), torch.ones((50, 100), dtype=torch.bool), tok.mask_token_id,
        collator.replacement_ids, 0.0, 1.0, _gen(0))
    assert not torch.isin(corrupted, torch.tensor(sorted(special))).any()
    assert int(corrupted.max()) < len(tok)


@pytest.mark.parametrize(
    "mask_p, random_p",
    [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.5, 0.5), (0.6, 0.2)],
)
def test_configurable_replacement_split(mask_p, random_p):
    input_ids = torch.randint(5, V, (100, 200), generator=_gen(3))
    selected = torch.rand((100, 200), generator=_gen(4)) < 0.2
    corrupted, labels = apply_replacements(input_ids, selected, MASK, REPLACEMENT, mask_p, random_p, _gen(5))
    assert torch.equal(labels, torch.where(selected, input_ids, torch.full_like(input_ids, -100)))
    assert torch.equal(corrupted[~selected], input_ids[~selected])
    got, orig = corrupted[selected], input_ids[selected]
    n = len(got)
    n_mask = int((got == MASK).sum())
    n_rand = int(((got != MASK) & (got != orig)).sum())
    v = len(REPLACEMENT)
    if mask_p == 1.0:
        assert n_mask == n, "1.0/0.0 must give only [MASK]"
    elif mask_p == 0.0 and random_p == 0.0:
        assert n_mask == 0 and n_rand == 0, "0.0/0.0 must leave the selected tokens unchanged"
    else:
        assert_binomial(n_mask, n, mask_p, "[MASK] share")
        assert_binomial(n_rand, n, random_p * (1 - 1 / v), "random share")
    if mask_p == 0.0:
        assert n_mask == 0


# ------------------------------------------------------------------------------- whole words

def test_whole_word_masking_masks_whole_words_at_word_rate():
    collator = _collator(mlm_probability=0.2, mask_strategy="whole_word")
    picked = words = 0
    for seed in range(20):
        examples = _examples(64, seed=2000 + seed, words=True)
        batch = collator(examples, seed=seed)
        word_ids = torch.full_like(batch["input_ids"], -1)
        for i, e in enumerate(examples):
            word_ids[i, : len(e["word_ids"])] = torch.tensor(e["word_ids"])
        flags, n = _word_level(batch["labels"] != -100, word_ids)
        picked += sum(sum(r) for r in flags)
        words += n
    assert_binomial(picked, words, 0.2, "whole-word rate (per word)")


def test_word_number_counts_words_across_documents_that_restart_ids():
    word_ids = torch.tensor([[-1, 0, 0, 1, -1, 0, 1, 1, -1, 0, -1, -1]])
    assert _word_number(word_ids).tolist() == [[-1, 0, 0, 1, -1, 2, 3, 3, -1, 4, -1, -1]]
    assert word_starts(word_ids).tolist() == [[False, True, False, True, False, True, True, False, False, True, False, False]]


def test_whole_word_masking_in_packed_rows_where_word_ids_restart():
    _, word_ids, docs = _packed_rows(200, seed=11)
    p = 0.3
    selected = select_whole_words(word_ids, p, _gen(12))
    flags, n_words = _word_level(selected, word_ids)  # all-or-none per word
    assert_binomial(sum(sum(r) for r in flags), n_words, p, "whole-word rate in packed rows")
    # Word 0 of document 0 and word 0 of document 1 share an id but are different words: they must be
    # drawn independently (disagree with chance 2p(1-p)), not masked together.
    disagree = total = 0
    for r in range(word_ids.shape[0]):
        for w in range(5):
            a = selected[r][(docs[r] == 0) & (word_ids[r] == w)]
            b = selected[r][(docs[r] == 1) & (word_ids[r] == w)]
            disagree += int(a[0] != b[0])
            total += 1
    assert_binomial(disagree, total, 2 * p * (1 - p), "independence of same-id words in different documents")


# ------------------------------------------------------------------------------- spans

def test_span_start_probability_solves_the_overlap():
    for p in (0.15, 0.3):
        for geometric_p, max_length in ((0.2, 10), (0.5, 5)):
            q = span_start_probability(p, geometric_p, max_length)
            lengths = torch.arange(1, max_length + 1, dtype=torch.float64)
            pmf = geometric_p * (1 - geometric_p) ** (lengths - 1)
            pmf[-1] += 1 - pmf.sum()
            survival = torch.tensor([float(pmf[k:].sum()) for k in range(max_length)], dtype=torch.float64)
            assert 1 - float(torch.prod(1 - q * survival)) == pytest.approx(p, abs=1e-9)
            expected_length = float((lengths * pmf).sum())
            assert p / expected_length < q < p  # overlaps need more starts than p / E[L]
    # Length-1 spans are plain per-word choices.
    assert span_start_probability(0.15, 1.0, 10) == pytest.approx(0.15, abs=1e-9)
    assert span_start_probability(0.3, 0.2, 1) == pytest.approx(0.3, abs=1e-9)


@pytest.mark.parametrize("p", [0.15, 0.3])
def test_span_masking_covers_p_of_words(p):
    geometric_p, max_length = 0.2, 10
    B, W = 512, 400
    word_ids = torch.arange(W).expand(B, W).contiguous()  # one token per word
    selected = select_spans(word_ids, p, geometric_p, max_length, _gen(int(p * 100)))
    # Every word counts, the first ones of a row too (spans may start before the row).
    per_row = selected.float().mean(1)  # rows are independent
    se = float(per_row.std()) / math.sqrt(B)
    coverage = float(per_row.mean())
    assert abs(coverage - p) <= Z * se, f"span coverage {coverage:.4f}, expected {p} +- {Z * se:.4f}"


def test_spans_are_contiguous_whole_words_with_geometric_lengths():
    geometric_p, max_length = 0.2, 10
    expected_length = sum((1 - geometric_p) ** k for k in range(max_length))  # E[min(Geom(p), max)] = 4.46
    # Multi-token words in packed rows: each span covers whole words.
    _, word_ids, _ = _packed_rows(100, seed=21)
    selected = select_spans(word_ids, 0.15, geometric_p, max_length, _gen(22))
    _word_level(selected, word_ids)  # asserts all-or-none per word and nothing outside words

    # Run lengths at word level (one token per word, long rows). With independent starts at rate q,
    # runs start at rate q(1-p), so merged runs have mean p / (q (1-p)), a bit above E[L].
    W = 512
    for p, B in ((0.15, 512), (0.01, 4096)):
        words = torch.arange(W).expand(B, W).contiguous()
        runs = _inner_runs(select_spans(words, p, geometric_p, max_length, _gen(23))).double()
        mean, se = float(runs.mean()), float(runs.std()) / math.sqrt(len(runs))
        q = span_start_probability(p, geometric_p, max_length)
        merged = p / (q * (1 - p))
        assert abs(mean - merged) <= Z * se, f"p={p}: mean run {mean:.3f}, expected {merged:.3f} +- {Z * se:.3f}"
        assert merged == pytest.approx(expected_length, rel=0.12)
    # At a low rate spans rarely touch: run lengths follow the clipped geometric itself.
    assert abs(mean - expected_length) <= Z * se
    assert int(runs.max()) <= 2 * max_length
    n = len(runs)
    assert_binomial(int((runs == 1).sum()), n, geometric_p, "share of length-1 spans at a low rate")
    # Clipping puts the geometric tail on max_length; longer runs only come from rare merges.
    assert_binomial(int((runs == max_length).sum()), n, (1 - geometric_p) ** (max_length - 1), "share of clipped spans")
    assert float((runs > max_length).double().mean()) < 0.01


def test_span_strategy_in_collator_covers_whole_words_at_rate():
    collator = _collator(mlm_probability=0.3, mask_strategy="span")
    covered = words = 0
    for seed in range(10):
        examples = _examples(64, seed=3000 + seed, min_len=300, max_len=400, words=True)
        batch = collator(examples, seed=seed)
        word_ids = torch.full_like(batch["input_ids"], -1)
        for i, e in enumerate(examples):
            word_ids[i, : len(e["word_ids"])] = torch.tensor(e["word_ids"])
        flags, _ = _word_level(batch["labels"] != -100, word_ids)
        covered += sum(sum(r) for r in flags)
        words += sum(len(r) for r in flags)
    # Loose: spans make words correlated, so allow 10% relative (exact coverage is tested above).
    assert covered / words == pytest.approx(0.3, rel=0.1)


# ------------------------------------------------------------------------------- seeding, schedule

@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
def test_same_seed_same_masks_different_seed_different(strategy):
    examples = _examples(16, seed=5, words=True)
    collator = _collator(mask_strategy=strategy)
    a, b, c = collator(examples, seed=123), collator(examples, seed=123), collator(examples, seed=124)
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(a[key], b[key]), key
    assert a["num_targets"] == b["num_targets"]
    assert not torch.equal(a["labels"], c["labels"])
    assert not torch.equal(a["input_ids"], c["input_ids"])


def test_masking_functions_are_reproducible_from_the_generator():
    _, word_ids, _ = _packed_rows(8, seed=1)
    for fn in (lambda g: select_whole_words(word_ids, 0.2, g), lambda g: select_spans(word_ids, 0.2, generator=g),
               lambda g: select_tokens(word_ids >= 0, 0.2, g)):
        assert torch.equal(fn(_gen(9)), fn(_gen(9)))
        assert not torch.equal(fn(_gen(9)), fn(_gen(10)))


def test_masking_rate_schedule_interpolates_with_progress():
    collator = _collator(mlm_probability=0.1, mlm_probability_final=0.4)
    assert collator.probability(0.0) == pytest.approx(0.1)
    assert collator.probability(0.5) == pytest.approx(0.25)
    assert collator.probability(0.25) == pytest.approx(0.175)
    assert collator.probability(1.0) == pytest.approx(0.4)
    assert collator.probability(1.5) == pytest.approx(0.4)  # clamped
    assert collator.probability(-0.1) == pytest.approx(0.1)
    assert _collator(mlm_probability=0.2).probability(0.9) == pytest.approx(0.2)  # no schedule: constant

    examples = _examples(64, seed=77)
    n_cand = sum(len(e["input_ids"]) - 2 for e in examples)
    for progress, rate in ((0.0, 0.1), (0.5, 0.25), (1.0, 0.4)):
        selected = sum(collator(examples, seed=s, progress=progress)["num_targets"] for s in range(5))
        assert_binomial(selected, 5 * n_cand, rate, f"masking rate at progress {progress}")


def _blocks(n_rows: int, length: int, seed: int) -> torch.Tensor:
    """(B, T) word ids of packed blocks [CLS] words [SEP], words of 1-3 tokens cut at the block end."""
    sizes = torch.randint(1, 4, (n_rows, length), generator=_gen(seed))  # tokens per word
    inner = torch.arange(length - 2).expand(n_rows, -1).contiguous()
    word_ids = torch.full((n_rows, length), -1)
    word_ids[:, 1:-1] = torch.searchsorted(sizes.cumsum(1), inner, right=True)
    return word_ids


@pytest.mark.parametrize("p", [0.15, 0.3])
def test_span_masking_selects_the_requested_share_of_tokens_on_short_blocks(p):
    # 64-token blocks: every row edge counts. One or two spans per row make row rates spread widely
    # (sd ~0.2), hence many rows.
    B, T = 65536, 64
    word_ids = _blocks(B, T, seed=int(p * 1000))
    candidates = word_ids >= 0
    spans = select_spans(word_ids, p, 0.2, 10, _gen(31))
    _word_level(spans[:64], word_ids[:64])  # still whole words
    per_row = spans.sum(1).double() / candidates.sum(1)  # rows are independent
    se = float(per_row.std()) / math.sqrt(B)
    rate = float(spans.sum() / candidates.sum())
    assert Z * se < 0.005  # tight enough to see a shortfall of half a point
    assert abs(rate - p) <= Z * se, f"span token rate {rate:.4f}, expected {p} +- {Z * se:.4f}"
    # ... the tolerance the token strategy meets on the same blocks:
    assert_binomial(int(select_tokens(candidates, p, _gen(32)).sum()), int(candidates.sum()), p, "token rate")
    # The first words of a row are covered like the rest (spans may start before the row).
    first = spans[:, 1:9].float().mean().item()
    assert abs(first - p) < 0.01
