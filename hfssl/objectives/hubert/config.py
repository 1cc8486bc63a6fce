"""HuBERT pretraining settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from hfssl.config import _help
from hfssl.errors import ConfigError
from hfssl.objectives.speech_base import SpeechPretrainConfig


@dataclass
class HubertPretrainConfig(SpeechPretrainConfig):
    """HuBERT masked prediction of k-means cluster targets (iteration 1: MFCC; iteration 2: model features)."""

    objective: Literal["hubert"] = _help("Pretraining objective.", "hubert")
    mask_time_prob: float = _help("Chance per frame of starting a masked span (HuBERT: 0.8; not the 0.05 fine-tuning default).", 0.8)
    iteration: int = _help("1: targets from MFCC k-means; 2+: targets from k-means on features of label_model.", 1)
    label_model: Optional[str] = _help("Iteration >= 2: the previous iteration's model folder to take features from.", None)
    label_layer: int = _help("Iteration >= 2: which hidden layer's features to cluster (HuBERT base: 6 then 9).", 6)
    num_clusters: int = _help("k-means clusters (100 for iteration 1, 500 for iteration 2 in the paper).", 100)
    kmeans_fraction: float = _help("Fraction of the training audio the k-means is fit on.", 0.1)
    kmeans_model: Optional[str] = _help("Reuse a saved k-means model (kmeans.pt) instead of fitting one.", None)
    kmeans_batch_size: int = _help("Frames per mini-batch k-means update.", 10000)
    kmeans_iterations: int = _help("Most mini-batch k-means passes over the fit frames (stops earlier once the batch inertia stops improving).", 100)
    masked_loss_weight: float = _help("Weight of the loss on masked frames.", 1.0)
    unmasked_loss_weight: float = _help("Weight of the loss on unmasked frames (0 in the paper).", 0.0)
    logit_temperature: float = _help("Temperature of the cosine logits against cluster embeddings.", 0.1)
    final_dim: int = _help("Dimension of the projection and cluster embeddings.", 256)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iteration < 1:
            raise ConfigError("iteration must be >= 1.")
        if self.iteration >= 2 and not (self.label_model or self.kmeans_model):
            raise ConfigError("iteration >= 2 needs label_model (the previous iteration's output folder).")
        if self.num_clusters < 2:
            raise ConfigError("num_clusters must be >= 2.")
        if not 0 < self.kmeans_fraction <= 1:
            raise ConfigError("kmeans_fraction must be in (0, 1].")
        if self.masked_loss_weight < 0 or self.unmasked_loss_weight < 0 or self.masked_loss_weight + self.unmasked_loss_weight == 0:
            raise ConfigError("masked_loss_weight and unmasked_loss_weight must be >= 0 and not both 0.")
        if self.logit_temperature <= 0 or self.final_dim < 1:
            raise ConfigError("logit_temperature must be > 0 and final_dim >= 1.")
        if self.kmeans_batch_size < 1 or self.kmeans_iterations < 1:
            raise ConfigError("kmeans_batch_size and kmeans_iterations must be >= 1.")
        if self.label_layer < 0:
            raise ConfigError("label_layer must be >= 0.")
        if self.iteration == 1 and self.label_model:
            raise ConfigError("iteration 1 clusters MFCCs; label_model is for iteration >= 2 (set --iteration 2).")
        if self.streaming:
            raise ConfigError("HuBERT needs a pass over the audio to build its k-means targets before training; streaming is not supported.")
