"""data2vec's schedule, targets and loss as pure functions (Baevski et al., 2022; fairseq examples/data2vec/models).

Shapes: B examples, T positions (tokens or frames), H hidden size, K teacher blocks, N regressed positions.

  tau(n)    = tau_e                                   if n >= tau_n
            = tau_e - (tau_e - tau_0) * (1 - n / tau_n) otherwise      (fairseq get_annealed_rate)
  target    = mean_k norm(f_k),  f_k = block k's feed-forward output before its last residual connection
              norm: 'instance' per example and channel over its real positions (speech), 'layer' per position
              over channels (text); both without affine parameters, eps 1e-5 (F.instance_norm / F.layer_norm)
  loss_sum  = scale * sum_n sum_h l(pred[n, h] - target[n, h]),  l = squared error (beta 0) or smooth L1(beta)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-5  # F.instance_norm / F.layer_norm default, what fairseq's targets use


def ema_decay(step: int, start: float, end: float, anneal_steps: int) -> float:
    """tau for the EMA update that follows optimizer update `step` (1-based; the teacher starts as a copy)."""
    if step >= anneal_steps:
        return end
    return end - (end - start) * (1 - step / anneal_steps)


def instance_norm(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Normalize each (example, channel) over the example's real positions; padded positions become 0.

    x: (B, T, H); real: (B, T) bool. Returns (B, T, H) float32. Equals F.instance_norm on (B, H, T) when
    nothing is padded (fairseq crops a batch to its shortest utterance, so its batches have no padding)."""
    x = x.float()
    keep = real[..., None].to(x.dtype)  # (B, T, 1)
    count = keep.sum(1, keepdim=True).clamp_min(1)  # (B, 1, 1)
    mean = (x * keep).sum(1, keepdim=True) / count  # (B, 1, H)
    var = ((x - mean).pow(2) * keep).sum(1, keepdim=True) / count  # biased, as F.instance_norm
    return (x - mean) * torch.rsqrt(var + EPS) * keep


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, T, H) float32, each position normalized over its H channels (no affine)."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=EPS)


def average_targets(layers: Sequence[torch.Tensor], how: str, real: torch.Tensor) -> torch.Tensor:
    """K tensors (B, T, H) -> (B, T, H) float32: the mean of the K normalized outputs ('instance' or 'layer')."""
    normed = [instance_norm(y, real) if how == "instance" else layer_norm(y) for y in layers]
    return sum(normed) / len(normed)


def regression_loss(pred: torch.Tensor, target: torch.Tensor, beta: float, scale: float) -> torch.Tensor:
    """Summed regression loss over the N positions.

    pred, target: (N, H). beta 0: squared error; beta > 0: smooth L1 (quadratic below beta, as
    F.smooth_l1_loss). Returns () float32 = scale * sum over positions and dimensions."""
    pred, target = pred.float(), target.float()
    if beta == 0:
        per_dim = F.mse_loss(pred, target, reduction="none")
    else:
        per_dim = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    return per_dim.sum() * scale


def mean_prediction_loss(target: torch.Tensor, beta: float, scale: float) -> torch.Tensor:
    """(N, H) -> (): the summed loss of predicting the targets' mean at every position, the loss a student that
    has learned only the average target gets (for beta 0: scale * N * the summed per-dimension variance)."""
    return regression_loss(target.mean(0, keepdim=True).expand_as(target), target, beta, scale)


def spread(x: torch.Tensor) -> torch.Tensor:
    """(N, H) -> (): mean over dimensions of the standard deviation over the N positions (fairseq's
    `compute_var`, logged as target_var / pred_var); 0 when N < 2. A collapsed target is constant: spread 0."""
    if x.shape[0] < 2:
        return x.new_zeros((), dtype=torch.float32)
    return torch.sqrt(x.float().var(dim=0) + 1e-6).mean()
