"""The trained modules: the student encoder (a transformers model, saved as it is) + a regression head, with
the EMA teacher held beside them (`teacher.EMATeacher`, not a submodule: see there).

Text (`Data2VecTextPretraining`): the student encodes the MLM-masked tokens; the teacher the original tokens;
the loss is taken at the positions the student sees as the mask token (fairseq `src_tokens.eq(mask_idx)`).
Speech (`Data2VecAudioPretraining`): one conv feature encoder (the student's) computes the features; the teacher
transformer gets them unmasked (no gradient), the student with the masked frames replaced by its mask
embedding (fairseq `ema_transformer_only`); the loss is taken at the masked frames.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from hfssl.objectives.data2vec.targets import average_targets, mean_prediction_loss, regression_loss, spread
from hfssl.objectives.data2vec.teacher import EMATeacher


def regression_head(hidden: int, layers: int) -> torch.nn.Sequential:
    """fairseq's head: (layers - 1) x [linear (first to 2 x hidden), GELU], then linear back to hidden."""
    parts, width = [], hidden
    for i in range(layers - 1):
        wider = 2 * hidden if i == 0 else width
        parts += [torch.nn.Linear(width, wider), torch.nn.GELU()]
        width = wider
    return torch.nn.Sequential(*parts, torch.nn.Linear(width, hidden))


class _Regression(torch.nn.Module):
    """What both modalities share: the head, the loss settings and the output dict."""

    def __init__(self, hidden: int, teacher: EMATeacher, head_layers: int, target_norm: str, loss_beta: float,
                 loss_scale: Optional[float]):
        super().__init__()
        self.head = regression_head(hidden, head_layers)
        self.teacher = teacher  # a plain object: not a submodule, so no parameters, no gradients, no DDP/FSDP
        self.target_norm, self.loss_beta = target_norm, float(loss_beta)
        self.loss_scale = float(loss_scale) if loss_scale is not None else 1.0 / math.sqrt(hidden)

    def _outputs(self, hidden: torch.Tensor, layers: list[torch.Tensor], where: torch.Tensor, real: torch.Tensor) -> dict:
        """hidden: (B, T, H) student output; layers: K teacher outputs (B, T, H); where: (B, T) bool positions to
        regress; real: (B, T) bool non-padding positions.

        Metrics: target_var / pred_var (fairseq's names: mean per-dimension standard deviation); baseline_loss, the
        loss of predicting the micro-batch's mean target everywhere: the loss falls below it only once the student
        predicts more than the average target (data2vec's loss itself moves with the targets, so its level alone
        does not say that); masked_fraction (regressed / real positions)."""
        n = where.sum().clamp_min(1)
        with torch.no_grad():
            targets = average_targets(layers, self.target_norm, real)[where]  # (N, H)
            baseline = mean_prediction_loss(targets, self.loss_beta, self.loss_scale) / n
        preds = self.head(hidden[where])  # (N, H)
        loss_sum = regression_loss(preds, targets, self.loss_beta, self.loss_scale)
        return {"loss_sum": loss_sum, "target_var": spread(targets), "pred_var": spread(preds.detach()),
                "baseline_loss": baseline, "masked_fraction": where.sum() / real.sum().clamp_min(1)}


class Data2VecTextPretraining(_Regression):
    """forward(input_ids, attention_mask, labels) -> {"loss_sum", "target_var", "pred_var", "masked_fraction"}.

    input_ids: (B, T) the collator's masked tokens; labels: (B, T) the original ids at the selected positions,
    -100 elsewhere. `encoder` is a Data2VecTextModel (or a BERT/RoBERTa-layout model) without pooler."""

    def __init__(self, encoder: torch.nn.Module, teacher: EMATeacher, mask_token_id: int, **loss):
        super().__init__(encoder.config.hidden_size, teacher, **loss)
        self.encoder = encoder
        self.mask_token_id = int(mask_token_id)

    def forward(self, input_ids, attention_mask, labels):
        selected = labels != -100  # (B, T)
        where = selected & (input_ids == self.mask_token_id)  # (B, T) what the student sees as [MASK]
        original = torch.where(selected, labels, input_ids)  # (B, T) the unmasked text
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        layers = self.teacher.top_outputs(input_ids=original, attention_mask=attention_mask)
        return self._outputs(hidden, layers, where, attention_mask.bool())


class Data2VecAudioPretraining(_Regression):
    """forward(input_values, mask_time_indices, frame_lengths) -> {"loss_sum", "target_var", "pred_var", "masked_fraction"}.

    input_values: (B, S) audio, right-padded with zeros; mask_time_indices: (B, F) bool masked frames (real
    frames only); frame_lengths: (B,) real frames per utterance. `student` is a Data2VecAudioModel; the
    teacher is an EMA copy of its `encoder` (the transformer)."""

    def __init__(self, student: torch.nn.Module, teacher: EMATeacher, feature_grad_scale: float = 1.0, **loss):
        super().__init__(student.config.hidden_size, teacher, **loss)
        self.student = student
        self.feature_grad_scale = float(feature_grad_scale)

    def forward(self, input_values, mask_time_indices, frame_lengths):
        s = self.student
        features = s.feature_extractor(input_values).transpose(1, 2)  # (B, F, C)
        if self.feature_grad_scale != 1.0:  # same value forward; the gradient into the conv encoder is scaled
            features = features * self.feature_grad_scale + features.detach() * (1.0 - self.feature_grad_scale)
        real = torch.arange(features.shape[1], device=features.device)[None, :] < frame_lengths[:, None]  # (B, F)
        projected = s.feature_projection.projection(s.feature_projection.layer_norm(features))  # (B, F, H)
        mask = mask_time_indices.bool()
        student_in = torch.where(mask[..., None], s.masked_spec_embed.to(projected.dtype), s.feature_projection.dropout(projected))
        hidden = s.encoder(student_in, attention_mask=real).last_hidden_state  # (B, F, H)
        # The encoder zeroes padded frames of its input in place: the teacher gets its own copy.
        layers = self.teacher.top_outputs(hidden_states=projected.detach().clone(), attention_mask=real)
        return self._outputs(hidden, layers, mask, real)
