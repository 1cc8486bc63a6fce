"""ELECTRA's pieces as pure functions (Clark et al., 2020).

The generator is a masked LM (its loss: `hfssl.objectives.mlm.loss.masked_lm_loss`, summed over the
masked tokens). Its samples replace the masked tokens; the discriminator labels every real token as
original (0) or replaced (1). A sample that happens to equal the original token counts as original,
as in the paper. Loss = generator MLM sum / masked tokens + lambda * BCE sum / real tokens: each term
is divided by its own count by the loop (two loss terms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_replacements(logits: torch.Tensor, disallowed: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """One token per row from softmax(logits / temperature), never a disallowed id (special tokens).

    Gumbel-max sampling on the global torch RNG (the loop seeds it per micro-batch), no gradient.
    Args:
        logits: (N, V) generator logits at the masked positions.
        disallowed: (V,) bool, True for ids that must never be sampled.
    Returns:
        (N,) long sampled ids.
    """
    with torch.no_grad():
        scores = logits.float() / temperature
        scores = scores.masked_fill(disallowed.to(scores.device), float("-inf"))
        gumbel = -torch.empty_like(scores).exponential_().log()  # -log(Exp(1)) ~ Gumbel(0, 1)
        return (scores + gumbel).argmax(-1)


def replaced_labels(original: torch.Tensor, corrupted: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) float: 1 where the discriminator's input differs from the original token, 0 elsewhere
    (including a sampled token equal to the original), on real tokens; padding is 0 (and not scored)."""
    return ((corrupted != original) & attention_mask.bool()).float()


def discriminator_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed binary cross-entropy of replaced-token detection over real tokens.

    Args:
        logits: (B, T) discriminator logits (> 0: "replaced").
        labels: (B, T) float 0/1 from `replaced_labels`.
        attention_mask: (B, T), 1 on real tokens.
    Returns:
        (loss_sum () float32, correct () number of real tokens classified right).
    """
    # Padding masked out by where, not by boolean indexing: an index is a device sync and a data-dependent shape
    # (a graph break under torch.compile) on every micro-batch.
    real = attention_mask.bool()
    per_token = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")  # (B, T)
    bce = torch.where(real, per_token, 0.0).sum()
    correct = (((logits > 0).float() == labels) & real).float().sum()
    return bce, correct


def prior_entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy in nats of a () replaced share p: the per-token BCE of a discriminator that ignores its
    input and always answers p, the best it can do without looking (0 at p = 0 or 1)."""
    p = p.float().clamp(1e-12, 1 - 1e-12)
    return -(p * p.log() + (1 - p) * (1 - p).log())
