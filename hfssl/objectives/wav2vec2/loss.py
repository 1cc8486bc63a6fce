"""wav2vec 2.0's loss terms as pure functions (Baevski et al., 2020), summed the way the loop expects.

Per micro-batch with N masked frames:
  contrastive = sum_t CE(cos(c_t, [q_t, q~_1..K]) / kappa, 0), negatives equal to q_t -> -inf
  diversity   = (G*V - sum_g perplexity_g) / (G*V)          (transformers' definition; x N in the total)
  penalty     = mean over real frames of mean(features**2)   (fairseq; x N in the total)
  loss_sum    = contrastive + N * (diversity_weight * diversity + penalty_weight * penalty)
The extra terms are scaled by N like fairseq scales them by the sample size, so that after the loop
divides by the global N they keep their weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(context: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed InfoNCE over masked frames.

    Args:
        context: (N, D) transformer outputs at the masked frames (projected).
        targets: (N, D) quantized targets of the same frames (projected).
        negatives: (N, K, D) distractors for each frame.
        temperature: kappa of the cosine logits.
    Returns:
        (loss_sum () float32, logits (N, 1+K) with the target first and negatives that equal the target
        set to -inf, as fairseq does: a distractor identical to the answer carries no signal).
    """
    candidates = torch.cat([targets[:, None], negatives], dim=1)  # (N, 1+K, D)
    logits = torch.cosine_similarity(context[:, None].float(), candidates.float(), dim=-1) / temperature
    neg_is_pos = (targets[:, None] == negatives).all(-1)  # (N, K)
    logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(neg_is_pos, float("-inf"))], dim=1)
    loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device), reduction="sum")
    return loss, logits


def contrastive_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1+K) logits -> number of frames whose target beats every negative (a sum, not a mean)."""
    return (logits[:, :1] > logits[:, 1:]).all(-1).float().sum()


def perplexity_of(probs: torch.Tensor) -> torch.Tensor:
    """(..., V) distributions -> (...) perplexity exp(entropy), with a finite gradient where a probability is 0.

    A code whose softmax underflows to exactly 0 is common (large logits; bf16 activations make it happen
    within a few updates). xlogy(p, p) has the right value there (0) but its gradient is 0/0 = NaN, which
    poisons every parameter through the softmax; clamping the log's argument keeps the value and gives the
    0 entries a finite gradient."""
    return torch.exp(-torch.xlogy(probs, probs.clamp_min(torch.finfo(probs.dtype).tiny)).sum(-1))


def diversity_loss(perplexity: torch.Tensor, num_codes: int) -> torch.Tensor:
    """(G,) per-group perplexity of the mean code distribution -> () in [0, 1): 0 when every code is used
    equally; `num_codes` = G * V."""
    return (num_codes - perplexity.sum()) / num_codes


def feature_penalty(features: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean squared conv-encoder output over real frames.

    features: (B, F, C); real: (B, F) bool. Returns () float32."""
    return (features.float().pow(2).mean(-1) * real).sum() / real.sum().clamp_min(1)


def gumbel_temperature(cfg, updates_done: int) -> float:
    """Temperature used by update number `updates_done` (0-based): max(end, start * decay**updates)."""
    return max(cfg.gumbel_temperature_end, cfg.gumbel_temperature_start * cfg.gumbel_temperature_decay ** updates_done)
