"""Loss wrappers the training loop calls, and the frozen-upstream probe.

Each wrapper's `forward(**batch)` returns {"loss_sum": SUM over examples (utterances for CTC),
"accuracy": ...} for `hfssl.trainer.train`; `predict_step(**batch)` returns (loss_sum or None,
per-example numpy outputs) for the evaluation that computes accuracy/F1/WER afterwards. The
wrapped model stays a plain transformers model, saved with its own `save_pretrained`.
"""

from __future__ import annotations

import contextlib

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from hfssl.attention import forward_kwargs
from hfssl.data.audio.geometry import ConvFrames


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Summed over examples. Single-label: cross-entropy; multi-label: per-example mean of the
    per-label binary cross-entropies (so a batch mean equals transformers' BCEWithLogits mean)."""
    logits = logits.float()
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(-1).sum()
    return F.cross_entropy(logits, labels, reduction="sum")


def ctc_loss_sum(logits: torch.Tensor, labels: torch.Tensor, frame_lengths: torch.Tensor, blank_id: int,
                 zero_infinity: bool) -> torch.Tensor:
    """CTC loss SUMMED over utterances (the loop divides by their count), for the CTC head and the probe.

    logits: (B, T, V); labels: (B, U) token ids, -100 (any negative) after each transcript's end;
    frame_lengths: (B,) real frames. zero_infinity: a transcript too long for its frames gives 0
    instead of inf (the config's ctc_zero_infinity).
    """
    keep = labels >= 0
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN's CTC has other input requirements and results
        return F.ctc_loss(log_probs, labels[keep], frame_lengths, keep.sum(-1), blank=blank_id,
                          reduction="sum", zero_infinity=zero_infinity)


def classification_accuracy(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return ((logits > 0) == (labels > 0.5)).all(-1).float().mean()
    return (logits.argmax(-1) == labels).float().mean()


class SequenceClassifier(torch.nn.Module):
    """An AutoModelForSequenceClassification / AutoModelForAudioClassification (not masked: see
    `AudioClassifier` for SpecAugment) with a summed loss."""

    def __init__(self, model: torch.nn.Module, multi_label: bool = False):
        super().__init__()
        self.model, self.multi_label = model, multi_label

    def forward(self, labels, **inputs):
        logits = self.model(**inputs).logits  # (B, L)
        return {"loss_sum": classification_loss(logits, labels, self.multi_label),
                "accuracy": classification_accuracy(logits, labels, self.multi_label)}

    @torch.no_grad()
    def predict_step(self, labels=None, **inputs):
        logits = self.model(**inputs).logits.float()
        loss = classification_loss(logits, labels, self.multi_label) if labels is not None else None
        return loss, list(logits.cpu().numpy())


# How each architecture's AutoModelForSequenceClassification turns the first token's hidden state (E, H)
# into logits (E, L): the same modules its own forward applies to hidden[:, 0].
CLASSIFIER_HEADS: dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = {
    "bert": lambda m, h: m.classifier(m.dropout(m.bert.pooler(h[:, None]))),
    "roberta": lambda m, h: m.classifier(h[:, None]),
    "xlm-roberta": lambda m, h: m.classifier(h[:, None]),
    "camembert": lambda m, h: m.classifier(h[:, None]),
    "data2vec-text": lambda m, h: m.classifier(h[:, None]),
    "electra": lambda m, h: m.classifier(h[:, None]),
}


class PackedTextClassifier(torch.nn.Module):
    """An AutoModelForSequenceClassification run on padding-free batches (`hfssl.collators.packing`):
    the encoder on the packed rows, the classification head on each example's first token, in batch order.
    Same logits as the model's own forward on the padded batch (tests/unit/test_packing.py)."""

    def __init__(self, model: torch.nn.Module, multi_label: bool = False):
        super().__init__()
        self.model, self.multi_label = model, multi_label
        self.head = CLASSIFIER_HEADS[model.config.model_type]

    def _logits(self, input_ids, position_ids, sequence_ids, cu_seqlens, sequence_starts, token_type_ids=None):
        per_token = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        kwargs = forward_kwargs(self.model, input_ids, position_ids=position_ids, sequence_ids=sequence_ids, cu_seqlens=cu_seqlens,
                                **per_token)
        hidden = self.model.base_model(**kwargs).last_hidden_state  # (R, W, H), or (1, R * W, H) with flash_attention_2
        return self.head(self.model, hidden.reshape(-1, hidden.shape[-1])[sequence_starts])  # (E, L)

    def forward(self, labels, **inputs):
        logits = self._logits(**inputs)
        return {"loss_sum": classification_loss(logits, labels, self.multi_label),
                "accuracy": classification_accuracy(logits, labels, self.multi_label),
                "padding_fraction": (inputs["sequence_ids"] < 0).float().mean()}

    @torch.no_grad()
    def predict_step(self, labels=None, **inputs):
        logits = self._logits(**inputs).float()
        loss = classification_loss(logits, labels, self.multi_label) if labels is not None else None
        return loss, list(logits.cpu().numpy())


class _FeatureMask:
    """Zeroes masked feature channels of the encoder's input (after time masking, as transformers
    orders SpecAugment). Set `mask` before a forward; it is cleared after use."""

    def __init__(self, encoder: torch.nn.Module):
        self.mask: Optional[torch.Tensor] = None
        encoder.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if self.mask is None:
            return None
        mask, self.mask = self.mask, None
        if args:
            hidden = args[0].masked_fill(mask[:, None, :], 0.0)  # (B, T, H)
            return (hidden, *args[1:]), kwargs
        kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].masked_fill(mask[:, None, :], 0.0)}
        return args, kwargs


class SpeechEncoderMixin:
    """Runs the upstream encoder of a speech model with SpecAugment masks from the collator.

    transformers' own SpecAugment draws masks with numpy's global RNG inside the model; hfssl draws
    them in the collator (seeded by batch position, `hfssl.masking.spans`) and passes them in.

    The model reads its `main_input_name` from the batch: `input_values` (waveforms, whose attention mask counts
    samples that a wav2vec2-family conv feature encoder turns into frames) or `input_features` (log-mel frames,
    Wav2Vec2Bert, whose attention mask counts the encoder's frames).
    """

    encoder_frozen: bool = False  # set by the task during its first freeze_encoder_steps updates

    def _setup_encoder(self, model):
        base = model.base_model
        # The model must not draw masks of its own: time masks come in as mask_time_indices and
        # feature masks through the encoder hook.
        self._saved_mask_feature_prob = model.config.mask_feature_prob
        model.config.mask_feature_prob = 0.0
        self._feature_mask = _FeatureMask(base.encoder)
        self._input = model.main_input_name
        self._frames = ConvFrames(model.config.conv_kernel, model.config.conv_stride) if self._input == "input_values" else None

    def restore_config(self):
        self.model.config.mask_feature_prob = self._saved_mask_feature_prob

    def _to_frames(self, n):
        return n if self._frames is None else self._frames(n)

    def _encode(self, inputs: dict, hidden_states: bool = False):
        x, mask_time_indices, mask_feature_indices = inputs[self._input], inputs.get("mask_time_indices"), inputs.get("mask_feature_indices")
        if mask_time_indices is None and self.training and hasattr(self.model.base_model, "masked_spec_embed"):
            # No SpecAugment this batch: an all-False mask keeps the model from drawing its own. A model built
            # with mask_time_prob = mask_feature_prob = 0 has no mask embedding and draws none: pass nothing.
            T = int(self._to_frames(x.shape[1]))
            mask_time_indices = torch.zeros(x.shape[0], T, dtype=torch.bool, device=x.device)
        if mask_feature_indices is not None and mask_feature_indices.any():
            self._feature_mask.mask = mask_feature_indices
        # encoder_frozen (freeze_encoder_steps): no graph through the encoder, so its weights get no gradient and the
        # optimizer leaves them (and their Adam moments) untouched; dropout and SpecAugment still apply.
        with torch.no_grad() if self.encoder_frozen and self.training else contextlib.nullcontext():
            return self.model.base_model(x, attention_mask=inputs.get("attention_mask"), mask_time_indices=mask_time_indices,
                                         output_hidden_states=hidden_states)

    def _frame_lengths(self, inputs: dict):
        x, attention_mask = inputs[self._input], inputs.get("attention_mask")
        n = torch.full((x.shape[0],), x.shape[1], device=x.device) if attention_mask is None else attention_mask.sum(-1)
        return self._to_frames(n.long())  # (B,)


def masked_mean(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, H) mean over the first lengths[b] frames -> (B, H)."""
    keep = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]  # (B, T)
    return (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)


class AudioClassifier(SpeechEncoderMixin, torch.nn.Module):
    """Wav2Vec2ForSequenceClassification-style model (projector + mean pooling + classifier) with
    collator SpecAugment; same computation as the model's own forward at inference."""

    def __init__(self, model: torch.nn.Module):
        torch.nn.Module.__init__(self)
        self.model = model
        self._setup_encoder(model)

    def _logits(self, **inputs):
        m = self.model
        out = self._encode(inputs, hidden_states=m.config.use_weighted_layer_sum)
        if m.config.use_weighted_layer_sum:
            stacked = torch.stack(out.hidden_states, dim=1)  # (B, L+1, T, H)
            hidden = (stacked * F.softmax(m.layer_weights, dim=-1)[None, :, None, None]).sum(1)
        else:
            hidden = out.last_hidden_state  # (B, T, H)
        hidden = m.projector(hidden)
        if inputs.get("attention_mask") is None:
            pooled = hidden.mean(1)
        else:
            pooled = masked_mean(hidden, self._frame_lengths(inputs))
        return m.classifier(pooled)  # (B, L)

    def forward(self, labels, **inputs):
        logits = self._logits(**inputs)
        return {"loss_sum": classification_loss(logits, labels, False), "accuracy": classification_accuracy(logits, labels, False)}

    @torch.no_grad()
    def predict_step(self, labels=None, **inputs):
        logits = self._logits(**inputs).float()
        loss = classification_loss(logits, labels, False) if labels is not None else None
        return loss, list(logits.cpu().numpy())


class CTCRecognizer(SpeechEncoderMixin, torch.nn.Module):
    """Wav2Vec2ForCTC-style model: per-frame vocabulary logits, CTC loss SUMMED over utterances."""

    def __init__(self, model: torch.nn.Module, blank_id: int, zero_infinity: bool):
        torch.nn.Module.__init__(self)
        self.model, self.blank_id, self.zero_infinity = model, blank_id, zero_infinity
        self._setup_encoder(model)

    def _logits(self, **inputs):
        hidden = self._encode(inputs).last_hidden_state
        return self.model.lm_head(self.model.dropout(hidden))  # (B, T, V)

    def _loss(self, logits, labels, frame_lengths):
        return ctc_loss_sum(logits, labels, frame_lengths, self.blank_id, self.zero_infinity)

    def forward(self, labels, **inputs):
        logits = self._logits(**inputs)
        lengths = self._frame_lengths(inputs)
        return {"loss_sum": self._loss(logits, labels, lengths)}

    @torch.no_grad()
    def predict_step(self, labels=None, **inputs):
        logits = self._logits(**inputs).float()
        lengths = self._frame_lengths(inputs)
        loss = self._loss(logits, labels, lengths) if labels is not None else None
        ids = logits.argmax(-1).cpu().numpy()  # greedy decoding
        return loss, [ids[b, : int(n)] for b, n in enumerate(lengths.tolist())]


class LayerProbe(torch.nn.Module):
    """SUPERB-style probe: a frozen upstream, a softmax-weighted sum of its L+1 hidden states
    (embeddings + every layer), and a small head (mean-pooled for classification, per frame for CTC).

    Only `layer_logits` and `head` train. `frames`: maps a waveform upstream's input lengths (samples) to its
    encoder frames; None when the attention mask already counts the upstream's positions (text tokens, or
    the log-mel frames of a feature-input speech encoder).
    """

    def __init__(self, upstream: torch.nn.Module, num_hidden_states: int, hidden_size: int, num_outputs: int,
                 probe_hidden_size: int = 0, kind: str = "classification", multi_label: bool = False,
                 blank_id: int = 0, frames: Optional[Callable] = None, zero_infinity: bool = True):
        super().__init__()
        self.upstream = upstream.requires_grad_(False)
        self.layer_logits = torch.nn.Parameter(torch.zeros(num_hidden_states))
        layers = [torch.nn.Linear(hidden_size, probe_hidden_size), torch.nn.ReLU(), torch.nn.Linear(probe_hidden_size, num_outputs)] \
            if probe_hidden_size else [torch.nn.Linear(hidden_size, num_outputs)]
        self.head = torch.nn.Sequential(*layers)
        self.kind, self.multi_label, self.blank_id, self.frames = kind, multi_label, blank_id, frames
        self.zero_infinity = zero_infinity  # CTC only

    def train(self, mode: bool = True):
        super().train(mode)
        self.upstream.eval()  # frozen: no dropout, no SpecAugment of its own
        return self

    def layer_weights(self) -> list[float]:
        return F.softmax(self.layer_logits.detach().float(), dim=-1).tolist()

    def _hidden(self, inputs):
        inputs = {k: v for k, v in inputs.items() if k not in ("mask_time_indices", "mask_feature_indices")}
        with torch.no_grad():
            states = self.upstream(**inputs, output_hidden_states=True).hidden_states
        stacked = torch.stack(states, dim=0)  # (L+1, B, T, H)
        w = F.softmax(self.layer_logits, dim=-1)
        return (stacked * w[:, None, None, None]).sum(0)  # (B, T, H)

    def _lengths(self, inputs, hidden):
        mask = inputs.get("attention_mask")
        B, T = hidden.shape[:2]
        if self.frames is None:
            return mask.sum(-1) if mask is not None else torch.full((B,), T)
        n = mask.sum(-1) if mask is not None else torch.full((B,), inputs["input_values"].shape[-1])
        return self.frames(n.long())

    def _outputs(self, inputs):
        hidden = self._hidden(inputs)
        lengths = self._lengths(inputs, hidden).to(hidden.device)
        if self.kind == "ctc":
            return self.head(hidden), lengths  # (B, T, V)
        return self.head(masked_mean(hidden, lengths)), lengths  # (B, L)

    def _loss(self, out, labels, lengths):
        if self.kind != "ctc":
            return classification_loss(out, labels, self.multi_label)
        return ctc_loss_sum(out, labels, lengths, self.blank_id, self.zero_infinity)

    def forward(self, labels, **inputs):
        out, lengths = self._outputs(inputs)
        result = {"loss_sum": self._loss(out, labels, lengths)}
        if self.kind != "ctc":
            result["accuracy"] = classification_accuracy(out, labels, self.multi_label)
        return result

    @torch.no_grad()
    def predict_step(self, labels=None, **inputs):
        out, lengths = self._outputs(inputs)
        loss = self._loss(out, labels, lengths) if labels is not None else None
        if self.kind == "ctc":
            ids = out.argmax(-1).cpu().numpy()
            return loss, [ids[b, : int(n)] for b, n in enumerate(lengths.tolist())]
        return loss, list(out.float().cpu().numpy())


def save_probe(probe, output_dir: str, upstream: str = "") -> None:
    """A probe is not a transformers model: its trained parts go to probe.safetensors, the
    layer weights to layer_weights.json (the frozen upstream stays where it was)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items() if not k.startswith("upstream.")}
    save_file(state, str(Path(output_dir) / "probe.safetensors"))
    weights = probe.layer_weights()
    (Path(output_dir) / "layer_weights.json").write_text(json.dumps({"upstream": upstream, "layer_weights": weights}, indent=1))
