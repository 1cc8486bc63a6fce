"""The masked-LM loss, with the prediction head run on the masked positions only.

Running the head (hidden -> vocabulary logits) on the N masked positions instead of all B*T saves
the (tokens x vocab) logits everywhere else (70-85% of the head's FLOPs at 15-30% masking).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from hfssl.attention import forward_kwargs, real_tokens
from hfssl.masking.tokens import masked_positions_of

# How each architecture turns hidden states (N, H) into vocabulary logits (N, V). Models not listed
# fall back to the full forward (all positions), which is correct but slower.
HEADS: dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = {
    "bert": lambda m, h: m.cls(h),
    "roberta": lambda m, h: m.lm_head(h),
    "xlm-roberta": lambda m, h: m.lm_head(h),
    "camembert": lambda m, h: m.lm_head(h),
    "data2vec-text": lambda m, h: m.lm_head(h),
    "electra": lambda m, h: m.generator_lm_head(m.generator_predictions(h)),
    "modernbert": lambda m, h: m.decoder(m.head(h)),
    "distilbert": lambda m, h: m.vocab_projector(m.vocab_layer_norm(m.activation(m.vocab_transform(h)))),
}


def masked_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and accuracy of the masked positions.

    Args:
        logits: (N, V) vocabulary logits of the N masked positions (any float dtype; computed in fp32).
        targets: (N,) long, the original token ids.
    Returns:
        (loss_sum: () float32, accuracy: () fraction of argmax == target, 0 when N == 0).
    """
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    accuracy = (logits.argmax(-1) == targets).float().mean() if targets.numel() else loss_sum.new_zeros(())
    return loss_sum, accuracy


def masked_logits(mlm: torch.nn.Module, input_ids: torch.Tensor, positions: torch.Tensor, **batch) -> torch.Tensor:
    """(N, V) logits of the masked tokens of an AutoModelForMaskedLM.

    input_ids: (B, T); positions: (N,) flat indices into the B * T tokens; batch: attention_mask (padded) or
    position_ids, sequence_ids, cu_seqlens (packed; `hfssl.attention.forward_kwargs`). Uses the sparse head
    when the architecture is in HEADS. Gathers by index: no host read, N known from the shape."""
    head = HEADS.get(mlm.config.model_type)
    kwargs = forward_kwargs(mlm, input_ids, **batch)
    if head is None:
        logits = mlm(**kwargs).logits
        return logits.reshape(-1, logits.shape[-1]).index_select(0, positions)
    hidden = mlm.base_model(**kwargs).last_hidden_state  # (B, T, H), or (1, B * T, H) with flash_attention_2
    return head(mlm, hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions))  # (N, V)


class SparseMaskedLM(torch.nn.Module):
    """Wraps an AutoModelForMaskedLM; forward returns the summed loss over masked positions, the accuracy
    and the batch's padding_fraction (padded positions / all positions the encoder computes).

    Takes a padded batch (input_ids, attention_mask, labels: (B, T)) or a packed one (input_ids, labels,
    position_ids, sequence_ids: (R, W), cu_seqlens; `hfssl.collators.packing`), and the collator's
    masked_positions (N,) (`masked_positions_of(labels)`, derived here when not given).

    Wrapping (instead of calling parts of the model from the loop) keeps DDP/FSDP and
    torch.compile seeing one module with one forward.
    """

    def __init__(self, mlm: torch.nn.Module):
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids, attention_mask=None, labels=None, *, masked_positions=None, position_ids=None, sequence_ids=None,
                cu_seqlens=None):
        # attention_mask: padded batches; position_ids, sequence_ids, cu_seqlens: packed ones (keywords, as the loop passes them)
        positions = masked_positions_of(labels) if masked_positions is None else masked_positions  # (N,)
        logits = masked_logits(self.mlm, input_ids, positions, attention_mask=attention_mask, position_ids=position_ids,
                               sequence_ids=sequence_ids, cu_seqlens=cu_seqlens)
        loss_sum, accuracy = masked_lm_loss(logits, labels.reshape(-1).index_select(0, positions))
        padding = 1.0 - real_tokens(attention_mask, sequence_ids).float().mean()
        return {"loss_sum": loss_sum, "accuracy": accuracy, "padding_fraction": padding}
