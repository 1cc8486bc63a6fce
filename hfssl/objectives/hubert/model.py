"""`HubertForMaskedPrediction`: transformers' HubertModel + projection + cluster embeddings.

The forward runs HubertModel's own submodules (conv feature encoder, feature projection, encoder) in
HubertModel's order, because fairseq's HuBERT recipe needs the conv features themselves: the gradient into
the conv encoder is scaled by `feature_grad_scale` (GradMultiply, fairseq's feature_grad_mult) and their
mean square is the feature penalty (fairseq's `features_pen`, weight `loss_weights: [10]` in
hubert_base_librispeech.yaml). The weights and checkpoints stay transformers' (`HubertModel.from_pretrained`).
"""

from __future__ import annotations

import torch

from hfssl.data.audio.geometry import num_frames
from hfssl.objectives.hubert.loss import hubert_loss
from hfssl.objectives.wav2vec2.loss import feature_penalty
from hfssl.objectives.wav2vec2.model import GradMultiply


class HubertForMaskedPrediction(torch.nn.Module):
    """HubertModel + projection + cluster embeddings; forward returns the loop's dict (sums and metrics).

    loss_sum = masked/unmasked CE sums (`hubert_loss`) + feature_penalty_weight * penalty * targets, with
    penalty = mean squared conv-feature output over the frames that carry a label (fairseq scales its extra
    losses by the sample size in the same way, so after the loop divides by the global target count the
    penalty keeps its weight).

    Metrics (per micro-batch, averaged by the loop): ``accuracy`` (masked-prediction accuracy),
    ``unmasked_accuracy``, ``masked_loss`` / ``unmasked_loss`` (mean CE per frame), ``feature_penalty``
    (unweighted), ``masked_fraction`` (masked / real frames), ``pred_clusters_used`` (distinct clusters
    predicted on masked frames: a collapse shows up as a small number) and ``padding_fraction`` (padded /
    all frames of the batch).
    """

    def __init__(self, hubert: torch.nn.Module, num_clusters: int, final_dim: int, logit_temperature: float,
                 masked_loss_weight: float = 1.0, unmasked_loss_weight: float = 0.0, feature_grad_scale: float = 1.0,
                 feature_penalty_weight: float = 0.0):
        super().__init__()
        self.hubert = hubert
        self.final_proj = torch.nn.Linear(hubert.config.hidden_size, final_dim)
        # fairseq's init, U[0, 1): the embeddings start close together, so the initial cosine logits are
        # nearly flat (loss ~ ln K); a zero-mean init starts at ln K + var/2 (about 1.6 nats more at 0.1).
        self.label_embeddings = torch.nn.Parameter(torch.rand(num_clusters, final_dim))
        self.logit_temperature = logit_temperature
        self.masked_loss_weight, self.unmasked_loss_weight = masked_loss_weight, unmasked_loss_weight
        self.feature_grad_scale, self.feature_penalty_weight = float(feature_grad_scale), float(feature_penalty_weight)

    def forward(self, input_values, labels, mask_time_indices, attention_mask=None):
        h = self.hubert
        features = h.feature_extractor(input_values)  # (B, C, F)
        if self.feature_grad_scale != 1.0:
            features = GradMultiply.apply(features, self.feature_grad_scale)
        features = features.transpose(1, 2)  # (B, F, C)
        if features.shape[1] != labels.shape[1]:
            raise ValueError(f"The model produced {features.shape[1]} frames but the batch has labels for {labels.shape[1]}: "
                             "the collator and the model disagree on the conv geometry.")
        penalty = feature_penalty(features, labels >= 0)  # (); labels are -100 exactly on padding
        frame_mask = None
        if attention_mask is not None:  # layer-norm models: the encoder attends to real frames only
            lengths = num_frames(attention_mask.sum(-1), h.config.conv_kernel, h.config.conv_stride)
            frame_mask = torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]  # (B, F)
        hidden = h.feature_projection(features)  # (B, F, H)
        hidden = torch.where(mask_time_indices[..., None], h.masked_spec_embed.to(hidden.dtype), hidden)
        hidden = h.encoder(hidden, attention_mask=frame_mask).last_hidden_state
        r = hubert_loss(self.final_proj(hidden), self.label_embeddings, labels, mask_time_indices, self.logit_temperature,
                        self.masked_loss_weight, self.unmasked_loss_weight)
        n_m, n_u = r["masked_count"].clamp_min(1), r["unmasked_count"].clamp_min(1)
        targets = (r["masked_count"] if self.masked_loss_weight > 0 else 0) + (r["unmasked_count"] if self.unmasked_loss_weight > 0 else 0)
        return {
            "loss_sum": r["loss_sum"] + self.feature_penalty_weight * penalty * targets,
            "accuracy": r["masked_correct"].float() / n_m,
            "unmasked_accuracy": r["unmasked_correct"].float() / n_u,
            "masked_loss": r["masked_ce_sum"] / n_m,
            "unmasked_loss": r["unmasked_ce_sum"] / n_u,
            "feature_penalty": penalty.detach(),
            "masked_fraction": r["masked_count"].float() / (r["masked_count"] + r["unmasked_count"]).clamp_min(1),
            "pred_clusters_used": r["masked_predictions"].unique().numel() * torch.ones((), device=labels.device),
            "padding_fraction": (labels < 0).float().mean(),  # padded frames / frames the encoder computes
        }
