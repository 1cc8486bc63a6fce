"""BEST-RQ pretraining settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from hfssl.config import _help
from hfssl.errors import ConfigError
from hfssl.objectives.speech_base import SpeechPretrainConfig


@dataclass
class BestRQPretrainConfig(SpeechPretrainConfig):
    """BEST-RQ (Chiu et al., 2022): masked prediction of the labels a frozen random-projection quantizer gives
    the stacked log-mel frames, on a Wav2Vec2Bert conformer or a wav2vec 2.0 encoder (defaults: the paper's settings)."""

    objective: Literal["best_rq"] = _help("Pretraining objective.", "best_rq")
    encoder: Literal["conformer", "wav2vec2"] = _help(
        "conformer: Wav2Vec2BertModel reading the stacked log-mel frames (the paper's setup). wav2vec2: Wav2Vec2Model reading the "
        "waveform through its conv front end; each conv frame takes the label of the nearest stacked log-mel frame and masked "
        "frames have their samples replaced by noise (set stack_frames so the two frame rates match: 2 for 20 ms conv frames).",
        "conformer")
    feature_grad_scale: float = _help("Gradient scale into the conv feature encoder (encoder wav2vec2 only; the conformer has none).", 1.0)
    mask_time_prob: float = _help("Expected span starts per encoder frame x mask_time_length, as for wav2vec 2.0 (the paper's 0.01 "
                                  "starts per 10 ms frame with 400 ms spans is 0.4 at any stacking).", 0.4)
    mask_time_length: int = _help("Encoder frames per masked span (paper: 400 ms = 10 frames of 40 ms).", 10)
    num_mel_bins: int = _help("Log-mel filterbank channels (paper: 80).", 80)
    stack_frames: int = _help("10 ms filterbank frames stacked into one encoder frame and one quantizer input (paper: 4 -> 40 ms).", 4)
    noise_std: float = _help("Masked frames are replaced by N(0, noise_std^2) noise (paper: 0.1).", 0.1)
    num_codebooks: int = _help("Codebooks (each with its own projection and softmax head; the loss adds them up). Paper: 1.", 1)
    codebook_size: int = _help("Codewords per codebook (paper: 8192).", 8192)
    codebook_dim: int = _help("Dimension the frames are projected to and of the codewords (paper: 16).", 16)
    quantizer_seed: Optional[int] = _help("Seed of the random projection and codebooks (default: seed).", None)
    quantizer_path: Optional[str] = _help("Reuse a saved quantizer (best_rq_quantizer.safetensors, or a BEST-RQ output folder) instead of drawing one.", None)
    collapse_usage: float = _help("Warn when the labels' code_usage (perplexity / min(codebook_size, frames)) stays below this.", 0.05)
    collapse_patience: int = _help("Updates in a row below collapse_usage before the warning.", 20)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_mel_bins < 1 or self.stack_frames < 1:
            raise ConfigError("num_mel_bins and stack_frames must be >= 1.")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}.")
        if self.num_codebooks < 1 or self.codebook_size < 2 or self.codebook_dim < 1:
            raise ConfigError("num_codebooks must be >= 1, codebook_size >= 2 and codebook_dim >= 1.")
        if not 0 <= self.collapse_usage < 1 or self.collapse_patience < 1:
            raise ConfigError("collapse_usage must be in [0, 1) and collapse_patience >= 1.")
        if self.encoder == "conformer" and self.feature_grad_scale != 1.0:
            raise ConfigError(f"feature_grad_scale {self.feature_grad_scale}: the conformer encoder has no conv feature encoder to scale; "
                              "it applies to encoder wav2vec2 only.")
        if self.quantizer_path is not None and self.quantizer_seed is not None:
            raise ConfigError("Can't provide both quantizer_path and quantizer_seed. Choose one.")
