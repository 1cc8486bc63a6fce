"""HuBERT's masked-prediction loss (Hsu et al., 2021) as pure functions, summed as the loop expects."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def count_targets(labels: torch.Tensor, mask: torch.Tensor, masked_weight: float, unmasked_weight: float) -> int:
    """Frames that carry loss: masked real frames (if masked_weight > 0) + unmasked real frames (if unmasked_weight > 0).

    Args:
        labels: (B, F) long, -100 on padding; mask: (B, F) bool.
    """
    real = labels >= 0
    n = 0
    if masked_weight > 0:
        n += int((mask & real).sum())
    if unmasked_weight > 0:
        n += int((~mask & real).sum())
    return n


def hubert_loss(projected: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                temperature: float, masked_weight: float, unmasked_weight: float) -> dict[str, torch.Tensor]:
    """HuBERT's masked-prediction loss, summed (the loop divides by `count_targets`).

    logits(t, c) = cos(projected[t], embeddings[c]) / temperature; cross-entropy against the frame's cluster.
    A set whose weight is 0 is still scored (accuracy, CE) but without gradient.

    Args:
        projected: (B, F, D) projected encoder outputs.
        embeddings: (K, D) cluster embeddings.
        labels: (B, F) long cluster ids, -100 on padding (never scored).
        mask: (B, F) bool, True = masked frame (only its real frames count).
    Returns:
        ``loss_sum`` (scalar), and per set (``masked_*`` / ``unmasked_*``): ``ce_sum``, ``correct``, ``count``
        (scalar tensors), and ``masked_predictions`` (N_masked,) long.
    """
    real = labels >= 0
    emb = F.normalize(embeddings.float(), dim=-1)
    out: dict[str, torch.Tensor] = {}
    loss_sum = projected.new_zeros((), dtype=torch.float32)
    for name, sel, weight in (("masked", mask & real, masked_weight), ("unmasked", ~mask & real, unmasked_weight)):
        with contextlib.nullcontext() if weight > 0 else torch.no_grad():
            y = labels[sel]  # (N,)
            logits = F.normalize(projected[sel].float(), dim=-1) @ emb.T / temperature  # (N, K)
            ce = F.cross_entropy(logits, y, reduction="sum")
        if weight > 0:
            loss_sum = loss_sum + weight * ce
        pred = logits.detach().argmax(-1)
        out[f"{name}_ce_sum"] = ce.detach()
        out[f"{name}_correct"] = (pred == y).sum()
        out[f"{name}_count"] = torch.tensor(y.numel(), device=labels.device)
        if name == "masked":
            out["masked_predictions"] = pred
    out["loss_sum"] = loss_sum
    return out
