"""`BestRQForPretraining`: an encoder (transformers' Wav2Vec2BertModel, a conformer on stacked log-mel frames, or a
Wav2Vec2Model reading the waveform through its conv front end) + one softmax head per codebook, predicting the
quantizer's labels of the masked frames."""

from __future__ import annotations

import torch

from hfssl.objectives.best_rq.loss import best_rq_loss, code_perplexity


class BestRQForPretraining(torch.nn.Module):
    """Encoder + a linear head (hidden -> N x V); forward returns the loop's dict (sums and metrics).

    The collator has already replaced the masked frames of the input (``input_features``, or the samples of
    ``input_values`` under them) with noise and labelled every real frame with the frozen quantizer (computed on
    the clean audio). The encoder's own time masking (``masked_spec_embed`` after the feature projection) is not
    BEST-RQ's, so an all-False mask is passed to keep it from drawing masks of its own.

    Metrics (per micro-batch, averaged by the loop over masked frames x codebooks): ``accuracy`` (masked
    prediction accuracy over frames and codebooks), ``masked_fraction`` (masked / real frames),
    ``code_perplexity`` (usage of the codewords by the labels of the real frames; see `code_perplexity`),
    ``code_usage`` (that perplexity / its maximum min(V, frames): near 0 = the targets collapsed) and
    ``pred_perplexity`` (usage by the predictions on masked frames: near 1 = the model predicts one code).
    """

    def __init__(self, encoder: torch.nn.Module, num_codebooks: int, codebook_size: int):
        super().__init__()
        self.encoder = encoder
        self.num_codebooks, self.codebook_size = num_codebooks, codebook_size
        self.head = torch.nn.Linear(encoder.config.hidden_size, num_codebooks * codebook_size)

    def forward(self, mask_time_indices, labels, frame_lengths=None, **inputs):
        """inputs: ``input_features`` (B, F, D) or ``input_values`` (B, S), and ``attention_mask`` when the encoder
        uses one; mask_time_indices (B, F) bool; labels (B, F, N) long, -100 where not scored; frame_lengths unused
        (the real frames are those with labels)."""
        no_model_mask = torch.zeros_like(mask_time_indices)
        hidden = self.encoder(**inputs, mask_time_indices=no_model_mask).last_hidden_state  # (B, F, H)
        if hidden.shape[1] != labels.shape[1]:
            raise ValueError(f"The encoder produced {hidden.shape[1]} frames but the batch has labels for {labels.shape[1]}: "
                             "BEST-RQ needs an encoder without adapter (add_adapter false).")
        real = labels[..., 0] >= 0  # (B, F)
        selected = mask_time_indices & real
        y = labels[selected]  # (M, N)
        logits = self.head(hidden[selected]).view(-1, self.num_codebooks, self.codebook_size)  # (M, N, V): masked frames only
        r = best_rq_loss(logits, y)
        targets = max(y.numel(), 1)
        n_real = int(real.sum())
        perplexity = code_perplexity(labels[real], self.codebook_size)
        return {
            "loss_sum": r["loss_sum"],
            "accuracy": r["correct"].float() / targets,
            "masked_fraction": selected.sum().float() / max(n_real, 1),
            "code_perplexity": perplexity,
            "code_usage": perplexity / max(min(self.codebook_size, n_real), 1),
            "pred_perplexity": code_perplexity(r["predictions"], self.codebook_size),
        }
