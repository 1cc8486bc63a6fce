"""wav2vec 2.0 pretraining settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from hfssl.config import _help
from hfssl.errors import ConfigError
from hfssl.objectives.speech_base import FEATURE_GRAD_SCALE_BY_LAYOUT, SpeechPretrainConfig


@dataclass
class Wav2Vec2PretrainConfig(SpeechPretrainConfig):
    """wav2vec 2.0 masked contrastive pretraining (defaults: the paper's base recipe, fairseq wav2vec2_base_librispeech;
    the feature penalty and gradient scale follow the feature-encoder layout: base's for group norm, large's for layer norm)."""

    objective: Literal["wav2vec2"] = _help("Pretraining objective.", "wav2vec2")
    num_negatives: int = _help("Distractors per masked frame, drawn from other masked frames of the same utterance.", 100)
    contrastive_logits_temperature: float = _help("Temperature of the cosine-similarity logits.", 0.1)
    diversity_loss_weight: float = _help("Weight of the codebook diversity loss.", 0.1)
    feature_penalty_weight: Optional[float] = _help(
        "Weight of the L2 penalty on feature-encoder outputs. Unset: fairseq's value for the model's feature encoder, "
        "10 for the group-norm (base) layout, 0 for the layer-norm (large, XLS-R) layout.", None)
    gumbel_temperature_start: float = _help("Gumbel-softmax temperature at the start.", 2.0)
    gumbel_temperature_end: float = _help("Lowest Gumbel temperature.", 0.5)
    gumbel_temperature_decay: float = _help("Temperature multiplied by this after every update.", 0.999995)
    on_collapse: Literal["warn", "stop", "rollback"] = _help("When codebook perplexity stays near its minimum: warn, stop, or roll back to the last good checkpoint.", "warn")
    collapse_patience: int = _help("Updates in a row with near-minimal perplexity that count as collapse.", 200)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_negatives < 1:
            raise ConfigError("num_negatives must be >= 1.")
        if self.contrastive_logits_temperature <= 0:
            raise ConfigError("contrastive_logits_temperature must be > 0.")
        if not 0 < self.gumbel_temperature_end <= self.gumbel_temperature_start:
            raise ConfigError("Need 0 < gumbel_temperature_end <= gumbel_temperature_start.")
        if not 0 < self.gumbel_temperature_decay <= 1:
            raise ConfigError("gumbel_temperature_decay must be in (0, 1].")
        if (self.feature_penalty_weight or 0) < 0 or self.diversity_loss_weight < 0:
            raise ConfigError("feature_penalty_weight and diversity_loss_weight must be >= 0.")
        if self.collapse_patience < 1:
            raise ConfigError("collapse_patience must be >= 1.")


# fairseq's loss weights per feature-encoder layout (wav2vec2_base_librispeech.yaml: group norm, loss_weights
# [0.1, 10], feature_grad_mult 0.1; wav2vec2_large_librivox.yaml: layer norm, [0.1, 0], 1.0). Base's penalty on
# the layer-norm layout collapses the codebook (docs/performance.md, "Codebook collapse in the 2-minute run").
LAYOUT_DEFAULTS = {"feature_penalty_weight": {"group": 10.0, "layer": 0.0}, "feature_grad_scale": FEATURE_GRAD_SCALE_BY_LAYOUT}
