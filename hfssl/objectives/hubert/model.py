"""`HubertForMaskedPrediction`: transformers' HubertModel + projection + cluster embeddings."""

from __future__ import annotations

import torch

from hfssl.objectives.hubert.loss import hubert_loss


class HubertForMaskedPrediction(torch.nn.Module):
    """HubertModel + projection + cluster embeddings; forward returns the loop's dict (sums and metrics).

    Metrics (per micro-batch, averaged by the loop): ``accuracy`` (masked-prediction accuracy),
    ``unmasked_accuracy``, ``masked_loss`` / ``unmasked_loss`` (mean CE per frame), ``masked_fraction``
    (masked / real frames) and ``pred_clusters_used`` (distinct clusters predicted on masked frames: a
    collapse shows up as a small number) and ``padding_fraction`` (padded / all frames of the batch).
    """

    def __init__(self, hubert: torch.nn.Module, num_clusters: int, final_dim: int, logit_temperature: float,
                 masked_loss_weight: float = 1.0, unmasked_loss_weight: float = 0.0, feature_grad_scale: float = 1.0):
        super().__init__()
        self.hubert = hubert
        self.final_proj = torch.nn.Linear(hubert.config.hidden_size, final_dim)
        # fairseq's init, U[0, 1): the embeddings start close together, so the initial cosine logits are
        # nearly flat (loss ~ ln K); a zero-mean init starts at ln K + var/2 (about 1.6 nats more at 0.1).
        self.label_embeddings = torch.nn.Parameter(torch.rand(num_clusters, final_dim))
        self.logit_temperature = logit_temperature
        self.masked_loss_weight, self.unmasked_loss_weight = masked_loss_weight, unmasked_loss_weight
        self.feature_grad_scale = feature_grad_scale
        if feature_grad_scale != 1.0:
            hubert.feature_extractor.register_forward_hook(self._scale_feature_grad)

    def _scale_feature_grad(self, module, inputs, output):
        # Same value forward; the gradient into the conv encoder is multiplied by feature_grad_scale.
        s = self.feature_grad_scale
        return output * s + output.detach() * (1.0 - s) if output.requires_grad else output

    def forward(self, input_values, labels, mask_time_indices, attention_mask=None):
        hidden = self.hubert(input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices).last_hidden_state
        if hidden.shape[1] != labels.shape[1]:
            raise ValueError(f"The model produced {hidden.shape[1]} frames but the batch has labels for {labels.shape[1]}: "
                             "the collator and the model disagree on the conv geometry.")
        r = hubert_loss(self.final_proj(hidden), self.label_embeddings, labels, mask_time_indices, self.logit_temperature,
                        self.masked_loss_weight, self.unmasked_loss_weight)
        n_m, n_u = r["masked_count"].clamp_min(1), r["unmasked_count"].clamp_min(1)
        return {
            "loss_sum": r["loss_sum"],
            "accuracy": r["masked_correct"].float() / n_m,
            "unmasked_accuracy": r["unmasked_correct"].float() / n_u,
            "masked_loss": r["masked_ce_sum"] / n_m,
            "unmasked_loss": r["unmasked_ce_sum"] / n_u,
            "masked_fraction": r["masked_count"].float() / (r["masked_count"] + r["unmasked_count"]).clamp_min(1),
            "pred_clusters_used": r["masked_predictions"].unique().numel() * torch.ones((), device=labels.device),
            "padding_fraction": (labels < 0).float().mean(),  # padded frames / frames the encoder computes
        }
