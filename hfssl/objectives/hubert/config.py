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
    mask_time_prob: float = _help("Masked share of the frames before spans overlap: mask_time_prob x frames / mask_time_length spans are drawn (HuBERT: 0.8; not the 0.05 fine-tuning default).", 0.8)
    iteration: int = _help("1: targets from MFCC k-means; 2+: targets from k-means on features of label_model.", 1)
    mfcc_type: Literal["kaldi", "torchaudio"] = _help("Iteration-1 MFCCs: 'kaldi' = torchaudio.compliance.kaldi.mfcc (fairseq's dump_mfcc_feature.py: "
                                                      "Povey window, pre-emphasis, DC removal, liftering); 'torchaudio' = torchaudio.transforms.MFCC "
                                                      "(Hann window, none of those; hfssl's earlier default).", "kaldi")
    label_model: Optional[str] = _help("Iteration >= 2: the previous iteration's model folder to take features from.", None)
    init_from_label_model: bool = _help("Iteration >= 2: start from label_model's weights (continue training on the new targets) "
                                        "instead of a fresh model. The paper starts fresh; on small budgets continuing paid "
                                        "downstream where a fresh start did not (recipes/hubert/tiny-cpu-iter2.yaml).", False)
    label_layer: int = _help("Iteration >= 2: which hidden state to cluster: 0 = the transformer's input, k = output of layer k (HuBERT base: 6 then 9).", 6)
    label_chunk_seconds: float = _help("Iteration >= 2: files longer than this are run through label_model in chunks of this length (fairseq: 100 s).", 100.0)
    num_clusters: int = _help("k-means clusters (100 for iteration 1, 500 for iteration 2 in the paper).", 100)
    kmeans_fraction: float = _help("Fraction of the training audio the k-means is fit on.", 0.1)
    kmeans_model: Optional[str] = _help("Reuse a saved k-means model (kmeans.pt) instead of fitting one.", None)
    kmeans_batch_size: int = _help("Frames per mini-batch k-means update.", 10000)
    kmeans_iterations: int = _help("Most mini-batch k-means passes over the fit frames (stops earlier once the batch inertia stops improving).", 100)
    kmeans_inits: int = _help("k-means++ initializations tried; the one with the lowest inertia on the init sample is kept (fairseq: 20).", 20)
    kmeans_max_no_improvement: int = _help("Stop after this many mini-batch steps without improvement of the smoothed batch inertia (fairseq: 100; 0: never).", 100)
    feature_penalty_weight: float = _help("Weight of the mean squared conv-feature penalty (fairseq hubert_base_librispeech loss_weights: [10]).", 10.0)
    masked_loss_weight: float = _help("Weight of the loss on masked frames.", 1.0)
    unmasked_loss_weight: float = _help("Weight of the loss on unmasked frames (0 in the paper).", 0.0)
    logit_temperature: float = _help("Temperature of the cosine logits against cluster embeddings.", 0.1)
    final_dim: int = _help("Dimension of the projection and cluster embeddings.", 256)

    def __post_init__(self) -> None:
        if self.init_from_label_model:
            if self.iteration < 2 or not self.label_model:
                raise ConfigError("init_from_label_model starts iteration >= 2 from label_model's weights: set iteration 2 "
                                  "and label_model (the previous iteration's output folder).")
            if self.model_name_or_path or self.config_name:
                raise ConfigError(f"init_from_label_model starts from label_model ({self.label_model}), but "
                                  f"{'model_name_or_path' if self.model_name_or_path else 'config_name'} names another start "
                                  f"({self.model_name_or_path or self.config_name}): keep one of the two.")
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
        if self.kmeans_batch_size < 1 or self.kmeans_iterations < 1 or self.kmeans_inits < 1:
            raise ConfigError("kmeans_batch_size, kmeans_iterations and kmeans_inits must be >= 1.")
        if self.kmeans_max_no_improvement < 0:
            raise ConfigError("kmeans_max_no_improvement must be >= 0 (0: no early stop).")
        if self.feature_penalty_weight < 0:
            raise ConfigError("feature_penalty_weight must be >= 0.")
        if self.label_chunk_seconds <= 0:
            raise ConfigError("label_chunk_seconds must be > 0.")
        if self.label_layer < 0:
            raise ConfigError("label_layer must be >= 0.")
        if self.iteration == 1 and self.label_model:
            raise ConfigError("iteration 1 clusters MFCCs; label_model is for iteration >= 2 (set --iteration 2).")
        if self.streaming:
            raise ConfigError("HuBERT needs a pass over the audio to build its k-means targets before training; streaming is not supported.")

    def initial_weights(self) -> Optional[str]:
        """The checkpoint training starts from: model_name_or_path, or label_model with init_from_label_model."""
        return self.label_model if self.init_from_label_model else self.model_name_or_path

    def initial_weights_key(self) -> str:
        return "label_model" if self.init_from_label_model else "model_name_or_path"  # errors name the key the user set
