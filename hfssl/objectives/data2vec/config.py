"""data2vec settings: what both modalities share (the EMA teacher, its targets, the regression loss and the
collapse guard) and each modality's defaults, read from fairseq's released recipes
(examples/data2vec/config/text/pretraining/base.yaml and .../audio/pretraining/base_librispeech.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from hfssl.config import _help
from hfssl.errors import ConfigError
from hfssl.objectives.speech_base import SpeechPretrainConfig
from hfssl.objectives.text_base import TextPretrainConfig


@dataclass
class Data2VecArguments:
    """The teacher, its targets and the loss (names as in fairseq's data2vec models)."""

    ema_decay: float = _help("tau0: EMA decay of the teacher at the start (teacher <- tau * teacher + (1 - tau) * student "
                             "after every update).", 0.999)
    ema_end_decay: float = _help("tau_e: EMA decay reached after ema_anneal_end_step updates, then kept.", 0.9999)
    ema_anneal_end_step: int = _help("tau_n: updates over which tau rises linearly from ema_decay to ema_end_decay.", 30000)
    average_top_k_layers: int = _help("K: the target is the mean of the teacher's top K blocks (which output of each: "
                                      "target_source).", 8)
    target_source: Literal["feed_forward", "block"] = _help(
        "Which output of each of the K teacher blocks is averaged: 'feed_forward' (its feed-forward output before the last "
        "residual connection; the paper) or 'block' (the block's output: on a pre-LN block such as ModernBERT's the "
        "residual stream, which still carries the token itself; on a post-LN block the normalized output, the paper's "
        "'end of block' ablation).", "feed_forward")
    target_layer_norm: Literal["instance", "layer"] = _help(
        "How each of the K outputs is normalized before averaging: 'instance' (per utterance and channel over time; the paper "
        "for speech) or 'layer' (per position over channels; the paper for text).", "instance")
    loss_beta: float = _help("0: squared error (L2); > 0: smooth L1 with this beta.", 0.0)
    loss_scale: Optional[float] = _help("Multiplies the per-position loss (summed over dimensions); null: 1/sqrt(hidden_size).", None)
    head_layers: int = _help("Layers of the regression head on the student's output (1: one linear layer; 2: linear to 2x "
                             "width, GELU, linear).", 1)
    on_collapse: Literal["warn", "stop", "rollback"] = _help(
        "When target_var or pred_var (mean per-dimension standard deviation over the masked positions) stays below "
        "min_target_var / min_pred_var: warn, stop, or roll back to the last good checkpoint.", "warn")
    min_target_var: float = _help("Collapse threshold on target_var (fairseq: 0.1).", 0.1)
    min_pred_var: float = _help("Collapse threshold on pred_var (fairseq: 0.01).", 0.01)
    collapse_check_after: int = _help("Check for collapse only after this many updates (fairseq: 5000).", 5000)
    collapse_patience: int = _help("Updates in a row below a threshold that count as collapse (fairseq: 1).", 1)

    def _check_data2vec(self) -> None:
        if not 0 < self.ema_decay <= self.ema_end_decay <= 1:
            raise ConfigError(f"Need 0 < ema_decay <= ema_end_decay <= 1, got ema_decay={self.ema_decay}, "
                              f"ema_end_decay={self.ema_end_decay}.")
        if self.ema_anneal_end_step < 0:
            raise ConfigError(f"ema_anneal_end_step must be >= 0, got {self.ema_anneal_end_step}.")
        if self.average_top_k_layers < 1:
            raise ConfigError(f"average_top_k_layers must be >= 1, got {self.average_top_k_layers}.")
        if self.loss_beta < 0:
            raise ConfigError(f"loss_beta must be >= 0 (0 = squared error), got {self.loss_beta}.")
        if self.loss_scale is not None and self.loss_scale <= 0:
            raise ConfigError(f"loss_scale must be > 0, or null for 1/sqrt(hidden_size); got {self.loss_scale}.")
        if self.head_layers < 1:
            raise ConfigError(f"head_layers must be >= 1, got {self.head_layers}.")
        if self.min_target_var < 0 or self.min_pred_var < 0 or self.collapse_check_after < 0 or self.collapse_patience < 1:
            raise ConfigError("min_target_var, min_pred_var and collapse_check_after must be >= 0, collapse_patience >= 1.")


@dataclass
class Data2VecTextPretrainConfig(Data2VecArguments, TextPretrainConfig):
    """data2vec for text (Baevski et al., 2022): the student sees the MLM-masked input and regresses, at the [MASK]
    positions, the layer-normed mean of the EMA teacher's top K blocks on the unmasked input (smooth L1, beta 4)."""

    objective: Literal["data2vec_text"] = _help("Pretraining objective.", "data2vec_text")
    model_type: str = _help("Architecture of a fresh model: data2vec-text (RoBERTa layout); bert, roberta, xlm-roberta "
                            "and camembert have the same blocks and work too; modernbert (pre-LN blocks: the targets "
                            "are each block's MLP output before the residual).", "data2vec-text")
    ema_anneal_end_step: int = _help("tau_n: updates over which tau rises linearly from ema_decay to ema_end_decay "
                                     "(fairseq text base: 300000).", 300000)
    average_top_k_layers: int = _help("K: the target is the mean of the teacher's top K blocks (fairseq text base: 10).", 10)
    target_layer_norm: Literal["instance", "layer"] = _help("Normalization of each of the K outputs (text: 'layer').", "layer")
    loss_beta: float = _help("0: squared error; > 0: smooth L1 with this beta (fairseq text base: 4).", 4.0)
    loss_scale: Optional[float] = _help("Multiplies the per-position loss; null: 1/sqrt(hidden_size) (fairseq text base: 1).", 1.0)
    head_layers: int = _help("Layers of the regression head (fairseq text base: 2).", 2)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_data2vec()
        if self.mask_replace_prob <= 0:
            raise ConfigError("mask_replace_prob must be > 0: data2vec regresses the teacher's targets at the positions the "
                              "student sees as [MASK].")
        if self.padding_free:
            raise ConfigError("padding_free: data2vec_text takes padded batches (its teacher and student read the same padded "
                              "rows). Unset padding_free.")


@dataclass
class Data2VecAudioPretrainConfig(Data2VecArguments, SpeechPretrainConfig):
    """data2vec for speech (Baevski et al., 2022) on Data2VecAudioModel: the student sees span-masked features and
    regresses, at the masked frames, the instance-normed mean of the EMA teacher's top K blocks (squared error)."""

    objective: Literal["data2vec_audio"] = _help("Pretraining objective.", "data2vec_audio")
    feature_grad_scale: float = _help("Gradient scale into the conv feature encoder (fairseq data2vec base: 1.0).", 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_data2vec()
