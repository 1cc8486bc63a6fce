"""BEST-RQ's loss and codebook-usage figures as pure functions, summed as the loop expects."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def count_targets(labels: torch.Tensor, mask: torch.Tensor) -> int:
    """Predictions the loss sums over: masked real frames x codebooks.

    Args:
        labels: (B, F, N) long, -100 on padding; mask: (B, F) bool.
    """
    return int((mask & (labels[..., 0] >= 0)).sum()) * labels.shape[-1]


def best_rq_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy of each codebook's softmax against its label, SUMMED over frames and codebooks.

    Args:
        logits: (M, N, V) scores of the M masked frames (N codebooks of V codewords).
        labels: (M, N) long codeword indices.
    Returns:
        ``loss_sum`` (scalar), ``correct`` (scalar long: right predictions over the M x N), ``predictions`` (M, N) long.
    """
    m, n, v = logits.shape
    loss = F.cross_entropy(logits.reshape(m * n, v).float(), labels.reshape(m * n), reduction="sum")
    pred = logits.detach().argmax(-1)
    return {"loss_sum": loss, "correct": (pred == labels).sum(), "predictions": pred}


def code_perplexity(labels: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """exp(entropy) of each codebook's label histogram, averaged over codebooks: the number of equally used
    codewords with the same entropy (1 = one codeword everywhere, at most min(V, frames)).

    Args:
        labels: (M, N) long codeword indices (no padding).
    Returns:
        scalar float tensor (0 when M == 0).
    """
    m, n = labels.shape
    if m == 0:
        return torch.zeros((), device=labels.device)
    offsets = torch.arange(n, device=labels.device) * codebook_size
    counts = torch.bincount((labels + offsets).reshape(-1), minlength=n * codebook_size).view(n, codebook_size).float()
    p = counts / m
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # (N,), 0 * log 0 = 0
    return entropy.exp().mean()
