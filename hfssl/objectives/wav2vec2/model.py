"""`Wav2Vec2Pretraining`: transformers' `Wav2Vec2ForPreTraining` weights with our forward and loss.

The model's weights, layout and checkpoints are transformers' own (the output folder loads with
`Wav2Vec2Model.from_pretrained` / `AutoModel`); the forward pass is ours, because the paper's recipe
needs what the stock forward does not do: feature-encoder gradient scaling (x0.1 for base:
`GradMultiply` on the conv output), the L2 penalty on the conv features, and a Gumbel temperature
that is part of the resumable state. It also quantizes and scores only the masked frames (the
contrastive loss is zero elsewhere), where transformers quantizes every frame and builds
(K+1, B, T, D) logits. The loss terms are in `loss.py`.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import Wav2Vec2ForPreTraining

from hfssl.data.audio.geometry import num_frames
from hfssl.errors import ConfigError
from hfssl.masking.spans import masked_rows
from hfssl.objectives.wav2vec2.loss import contrastive_accuracy, contrastive_loss, diversity_loss, feature_penalty, perplexity_of


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` backward (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class Wav2Vec2Pretraining(torch.nn.Module):
    """Wraps a `Wav2Vec2ForPreTraining`; forward returns the summed loss and per-batch metrics.

    Args:
        model: the transformers model (its submodules are used as they are; nothing is copied).
        feature_grad_scale: gradient multiplier into the feature encoder (1.0 = off).
        feature_penalty_weight / diversity_loss_weight: weights of the extra losses.
        logits_temperature: kappa of the cosine logits.
    """

    def __init__(self, model: Wav2Vec2ForPreTraining, feature_grad_scale: float = 0.1, feature_penalty_weight: float = 10.0,
                 diversity_loss_weight: float = 0.1, logits_temperature: float = 0.1, gumbel_temperature: float = 2.0):
        super().__init__()
        if model.config.add_adapter:
            raise ConfigError("add_adapter is a fine-tuning option; pretraining needs add_adapter=false.")
        self.model = model
        self.feature_grad_scale = float(feature_grad_scale)
        self.feature_penalty_weight = float(feature_penalty_weight)
        self.diversity_loss_weight = float(diversity_loss_weight)
        self.logits_temperature = float(logits_temperature)
        # A buffer, not a Python float: a compiled graph reads it instead of recompiling each update.
        # Not persistent: the objective's state_dict carries it (the model weights stay transformers').
        self.register_buffer("gumbel_temperature", torch.tensor(float(gumbel_temperature)), persistent=False)

    def set_gumbel_temperature(self, value: float) -> None:
        self.gumbel_temperature.fill_(value)

    def _quantize(self, features: torch.Tensor):
        """(N, C) -> codevectors (N, G*d), per-group perplexity (G,), code perplexity ().

        Training: straight-through hard Gumbel-softmax; perplexity of the mean softmax (as
        transformers and fairseq's prob_perplexity). Eval: argmax codes, perplexity of their
        histogram (transformers' eval mode). Codevectors are gathered with a (G, N, V) @ (G, V, d)
        product instead of materializing (N, G*V, d).
        """
        q = self.model.quantizer
        n = features.shape[0]
        groups, num_vars = q.num_groups, q.num_vars
        logits = q.weight_proj(features).view(n * groups, num_vars).float()
        hard_idx = logits.argmax(-1)
        if self.training:
            gumbels = -torch.empty_like(logits).exponential_().log()  # same draw as F.gumbel_softmax
            soft_sample = ((logits + gumbels) / self.gumbel_temperature).softmax(-1)
            idx = soft_sample.argmax(-1)
            hard = torch.zeros_like(logits).scatter_(-1, idx[:, None], 1.0)
            probs = hard - soft_sample.detach() + soft_sample
            marginal = logits.view(n, groups, num_vars).softmax(-1).sum(0) / max(n, 1)  # (G, V); no NaN when n == 0
        else:
            probs = torch.zeros_like(logits).scatter_(-1, hard_idx[:, None], 1.0)
            marginal = probs.view(n, groups, num_vars).sum(0) / max(n, 1)
        perplexity = perplexity_of(marginal)  # (G,)
        counts = torch.zeros(groups * num_vars, device=logits.device).index_add_(
            0, (hard_idx.view(n, groups) + torch.arange(groups, device=logits.device) * num_vars).view(-1),
            torch.ones(n * groups, device=logits.device)).view(groups, num_vars) / max(n, 1)
        code_perplexity = torch.exp(-torch.xlogy(counts, counts).sum(-1)).sum()
        codebook = q.codevectors.view(groups, num_vars, -1)  # (G, V, d)
        codes = torch.bmm(probs.view(n, groups, num_vars).transpose(0, 1).to(codebook.dtype), codebook)  # (G, N, d)
        return codes.transpose(0, 1).reshape(n, groups * codebook.shape[-1]), perplexity, code_perplexity

    def forward(self, input_values: torch.Tensor, mask_time_indices: torch.Tensor, sampled_negative_indices: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None, frame_lengths: Optional[torch.Tensor] = None,
                masked_positions: Optional[torch.Tensor] = None, negative_rows: Optional[torch.Tensor] = None) -> dict:
        """
        Args:
            input_values: (B, S) float audio, right-padded with zeros.
            mask_time_indices: (B, F) bool, masked frames (only real frames).
            sampled_negative_indices: (B, F, K) long, per-utterance time indices of the negatives of
                each masked frame (other masked frames of the same utterance).
            attention_mask: (B, S) 1 on real samples; only for models that use one (layer norm).
            frame_lengths: (B,) real frames per utterance (default: from attention_mask, else all).
            masked_positions, negative_rows: (N,), (N, K) the masked frames and their negatives as rows
                (`hfssl.masking.spans.masked_rows`, from the collator: then nothing is read back from
                the device; derived here from the mask when not given).
        Returns:
            dict of scalars: loss_sum, contrastive_loss / diversity_loss / feature_penalty (per
            masked frame, unweighted), accuracy, codebook_perplexity (sum over groups), perplexity_g{i}, code_perplexity,
            masked_fraction, padding_fraction.
        """
        m = self.model
        w = m.wav2vec2
        features = w.feature_extractor(input_values)  # (B, C, F)
        if self.feature_grad_scale != 1.0:
            features = GradMultiply.apply(features, self.feature_grad_scale)
        features = features.transpose(1, 2)  # (B, F, C)
        batch, frames = features.shape[:2]
        if frame_lengths is None:
            frame_lengths = (num_frames(attention_mask.sum(-1), m.config.conv_kernel, m.config.conv_stride)
                             if attention_mask is not None else torch.full((batch,), frames, device=features.device))
        real = torch.arange(frames, device=features.device)[None, :] < frame_lengths[:, None]  # (B, F)
        n_real = real.sum().clamp_min(1)
        penalty = feature_penalty(features, real)  # fairseq: over the conv output (here: real frames only)

        hidden, normed = w.feature_projection(features)  # (B, F, H), (B, F, C) layer-normed conv features
        mask = mask_time_indices.bool()
        hidden = torch.where(mask[..., None], w.masked_spec_embed.to(hidden.dtype), hidden)
        encoded = w.encoder(hidden, attention_mask=real if attention_mask is not None else None).last_hidden_state

        if masked_positions is None:
            masked_positions, negative_rows = masked_rows(mask, sampled_negative_indices)
        n = masked_positions.numel()  # N masked frames, in batch order
        context = m.project_hid(encoded.reshape(-1, encoded.shape[-1]).index_select(0, masked_positions))  # (N, D)
        masked_features = normed.reshape(-1, normed.shape[-1]).index_select(0, masked_positions)  # (N, C)
        codes, perplexity, code_perplexity = self._quantize(m.dropout_features(masked_features))
        targets = m.project_q(codes.to(m.project_q.weight.dtype))  # (N, D)
        negatives = targets[negative_rows]  # (N, K, D)
        contrastive, logits = contrastive_loss(context, targets, negatives, self.logits_temperature)
        diversity = diversity_loss(perplexity, self.model.config.num_codevector_groups * self.model.config.num_codevectors_per_group)
        loss_sum = contrastive + n * (self.diversity_loss_weight * diversity + self.feature_penalty_weight * penalty)

        denom = max(n, 1)
        correct = contrastive_accuracy(logits)
        out = {
            "loss_sum": loss_sum,
            "contrastive_loss": contrastive.detach() / denom,
            "diversity_loss": diversity.detach(),
            "feature_penalty": penalty.detach(),
            "accuracy": correct / denom,
            "codebook_perplexity": perplexity.detach().sum(),
            "code_perplexity": code_perplexity,
            "masked_fraction": mask.sum() / n_real,
            "padding_fraction": 1.0 - real.float().mean(),  # padded frames / frames the encoder computes
        }
        for g in range(perplexity.shape[0]):
            out[f"perplexity_g{g}"] = perplexity[g].detach()
        return out
