"""Collators: turn a list of examples into a padded batch and draw its masks.

A collator is called as `collator(examples, seed, progress)`: `seed` is unique to the micro-batch
(derived from the run seed and the batch's global position), so masks are dynamic (a fresh mask
every time an example is seen) yet exactly reproducible on resume and across process counts.
`progress` in [0, 1] is the fraction of training done, for masking-rate schedules.

Every collator returns the model inputs plus two counts the loop needs:
  num_targets: predictions the loss is summed over (masked tokens / masked frames),
  num_inputs:  real (non-padding) tokens or audio samples, for throughput logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from hfssl.collators.packing import PackedLayout, pack
from hfssl.masking import apply_replacements, masked_positions_of, select_spans, select_tokens, select_whole_words


def pad_int_sequences(sequences: list[Any], pad_value: int, multiple_of: int = 1) -> torch.Tensor:
    """List of 1-D int sequences -> (B, T) long tensor padded on the right to the longest (rounded up)."""
    lengths = [len(s) for s in sequences]
    T = max(lengths)
    T = -(-T // multiple_of) * multiple_of
    if min(lengths) == T:  # packed blocks: one copy instead of one per row
        return torch.as_tensor(np.stack([np.asarray(s) for s in sequences]), dtype=torch.long)
    out = torch.full((len(sequences), T), pad_value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : lengths[i]] = torch.as_tensor(np.asarray(s), dtype=torch.long)
    return out


@dataclass
class MLMCollator:
    """Pads token blocks and masks them for MLM (token, whole-word or span masking).

    Examples are dicts with `input_ids` (and `word_ids`, -1 at special tokens, for word-level
    strategies). Special tokens and padding are never selected; random replacements come from the
    real vocabulary without special tokens.

    `masked_positions` (N,) gives the flat indices of the masked tokens (`masked_positions_of(labels)`).
    With `packing`, the masked batch is then packed without padding (`hfssl.collators.packing`): the
    output has input_ids, labels, position_ids, sequence_ids (R, W) and cu_seqlens instead of
    attention_mask, with the same tokens, masks and labels.
    """

    pad_token_id: int
    mask_token_id: int
    special_token_ids: torch.Tensor  # (S,) long
    replacement_ids: torch.Tensor  # (V',) long
    mlm_probability: float = 0.15
    mlm_probability_final: Optional[float] = None
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    mask_strategy: str = "token"
    span_geometric_p: float = 0.2
    span_max_length: int = 10
    pad_to_multiple_of: int = 8
    packing: Optional[PackedLayout] = None

    @classmethod
    def from_tokenizer(cls, tokenizer, **kw) -> "MLMCollator":
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError(f"Tokenizer {tokenizer.name_or_path!r} needs a mask and a pad token for MLM.")
        special = sorted(set(tokenizer.all_special_ids))
        vocab = torch.arange(len(tokenizer))
        replacement = vocab[~torch.isin(vocab, torch.tensor(special))]
        return cls(tokenizer.pad_token_id, tokenizer.mask_token_id, torch.tensor(special), replacement, **kw)

    def probability(self, progress: float) -> float:
        if self.mlm_probability_final is None:
            return self.mlm_probability
        return self.mlm_probability + (self.mlm_probability_final - self.mlm_probability) * min(max(progress, 0.0), 1.0)

    def __call__(self, examples: list[dict], seed: int, progress: float = 0.0) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(seed)
        input_ids = pad_int_sequences([e["input_ids"] for e in examples], self.pad_token_id, self.pad_to_multiple_of)
        lengths = torch.tensor([len(e["input_ids"]) for e in examples])
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()  # (B, T)
        candidates = attention_mask.bool() & ~torch.isin(input_ids, self.special_token_ids)
        p = self.probability(progress)
        if self.mask_strategy == "token":
            selected = select_tokens(candidates, p, generator)
        else:
            word_ids = pad_int_sequences([e["word_ids"] for e in examples], -1, self.pad_to_multiple_of)
            word_ids = torch.where(candidates, word_ids, torch.full_like(word_ids, -1))
            if self.mask_strategy == "whole_word":
                selected = select_whole_words(word_ids, p, generator)
            else:
                selected = select_spans(word_ids, p, self.span_geometric_p, self.span_max_length, generator)
        inputs, labels = apply_replacements(
            input_ids, selected, self.mask_token_id, self.replacement_ids,
            self.mask_replace_prob, self.random_replace_prob, generator,
        )
        counts = {"num_targets": int(selected.sum()), "num_inputs": int(lengths.sum())}
        if self.packing is None:
            batch = {"input_ids": inputs, "attention_mask": attention_mask, "labels": labels}
        else:
            batch = pack({"input_ids": inputs, "labels": labels}, lengths, self.packing, {"input_ids": self.pad_token_id, "labels": -100})
            del batch["sequence_starts"]  # for sequence classification only
        # Found here, on the CPU: the model then gathers the masked tokens without reading anything back from the GPU.
        batch["masked_positions"] = masked_positions_of(batch["labels"])
        return {**batch, **counts}
