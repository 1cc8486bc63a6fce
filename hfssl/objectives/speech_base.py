"""What the speech objectives share, written once: the audio-data and model-source settings, their
checks, and the model config builder (source + overrides + pretraining masking).

Fine-tuning reuses `AudioDataArguments`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from hfssl import attention
from hfssl.config import TrainingArguments, _help
from hfssl.data.audio.batching import audio_batch_plan
from hfssl.data.files import AUDIO_FILE_EXTENSIONS, check_file
from hfssl.errors import ConfigError
from hfssl.objectives.base import Objective

logger = logging.getLogger(__name__)


@dataclass
class AudioDataArguments:
    """Where audio comes from and how it is cut into batches (speech pretraining and fine-tuning)."""

    train_dir: Optional[str] = _help("Folder of audio files (searched recursively) or an audiofolder with metadata.csv.", None)
    train_file: Optional[str] = _help("CSV/TSV/JSONL manifest with a column of audio paths (relative to the manifest).", None)
    validation_dir: Optional[str] = _help("Validation audio folder.", None)
    validation_file: Optional[str] = _help("Validation manifest.", None)
    validation_split_percentage: float = _help("Percent of train held out when no validation set is given.", 5.0)
    dataset_name: Optional[str] = _help("A `datasets` audio dataset (Hub id or local path).", None)
    dataset_config_name: Optional[str] = _help("Its configuration name.", None)
    audio_column_name: str = _help("Column with audio paths (manifests) or audio (datasets).", "audio")
    streaming: bool = _help("Decode training audio only when it is read (train_dir, train_file or a Hub dataset, which is then not downloaded) instead of checking every file before training; needs max_steps.", False)
    sampling_rate: int = _help("Rate the model expects; audio at other rates is resampled.", 16000)
    min_duration_in_seconds: float = _help("Shorter files are bad input (see on_bad_audio).", 0.0)
    max_duration_in_seconds: float = _help("Longer files are randomly cropped to this length at batch time, not dropped.", 15.6)
    max_batch_seconds: Optional[float] = _help("Duration-bucketed batches of at most this many padded seconds per process (overrides per_device_train_batch_size).", None)
    on_bad_audio: Literal["error", "skip"] = _help("Unreadable/empty/NaN/too-short files: stop before training naming them, or skip and list them in output_dir/skipped_audio.tsv.", "error")
    preprocessing_num_workers: Optional[int] = _help("Threads for scanning audio.", None)
    dataset_train_split: str = _help("dataset_name: split(s) to train on; '+' joins several, e.g. 'train.clean.100+train.clean.360'.", "train")
    dataset_validation_split: Optional[str] = _help("dataset_name: validation split(s) ('+' joins); default 'validation' when the dataset has one, else a held-out percentage of train.", None)

    def _check_audio_sources(self) -> None:
        if self.dataset_name and (self.train_dir or self.train_file):
            raise ConfigError("Can't provide both dataset_name and train_dir/train_file. Choose one.")
        if self.train_dir and self.train_file:
            raise ConfigError("Can't provide both train_dir and train_file. Choose one.")
        if not (self.dataset_name or self.train_dir or self.train_file):
            raise ConfigError("No audio given: set train_dir (a folder of audio files), train_file (a manifest) or dataset_name.")
        for key in ("train_dir", "validation_dir"):
            path = getattr(self, key)
            if path is not None and not Path(path).is_dir():
                raise ConfigError(f"{key}: folder '{path}' does not exist.")
        for key in ("train_file", "validation_file"):
            check_file(key, getattr(self, key), AUDIO_FILE_EXTENSIONS)
        if self.sampling_rate < 1000:
            raise ConfigError(f"sampling_rate must be >= 1000, got {self.sampling_rate}.")
        if self.max_duration_in_seconds <= self.min_duration_in_seconds:
            raise ConfigError("max_duration_in_seconds must be larger than min_duration_in_seconds.")
        if self.max_batch_seconds is not None and self.max_batch_seconds < self.max_duration_in_seconds:
            raise ConfigError(f"max_batch_seconds ({self.max_batch_seconds}) must hold at least one cropped file "
                              f"(max_duration_in_seconds={self.max_duration_in_seconds}).")
        if self.streaming and getattr(self, "max_steps", 1) < 1:
            raise ConfigError("streaming needs max_steps: a stream has no known length. Set --max_steps.")
        if self.streaming and self.max_batch_seconds is not None:
            raise ConfigError("max_batch_seconds needs every file's duration before training, which a stream does not have: "
                              "unset it and use per_device_train_batch_size, or set streaming false.")


@dataclass
class SpeechModelArguments:
    """Where the encoder comes from, and the time masking it is pretrained with."""

    model_name_or_path: Optional[str] = _help("Continue pretraining from this checkpoint folder or Hub id.", None)
    config_name: Optional[str] = _help("Build a fresh model from this config (folder, config.json or Hub id).", None)
    config_overrides: dict = _help("Config fields for the model, e.g. {num_hidden_layers: 4, feat_extract_norm: layer}.", {})
    mask_time_prob: float = _help("Masked share of the frames before spans overlap: mask_time_prob x frames / mask_time_length spans are drawn, so 0.65 with spans of 10 starts one per ~15 frames and masks about half (wav2vec 2.0 / fairseq semantics; not the 0.05 fine-tuning default).", 0.65)
    mask_time_length: int = _help("Frames per masked span.", 10)
    mask_time_min_masks: int = _help("At least this many spans per utterance.", 2)
    attn_implementation: Optional[Literal["sdpa", "flash_attention_2", "eager"]] = _help(attention.HELP, None)

    def _check_speech_model(self) -> None:
        if self.model_name_or_path and self.config_name:
            raise ConfigError("Can't provide both model_name_or_path and config_name. Choose one.")
        attention.check_attn_implementation(self.attn_implementation, self.mixed_precision)
        if not 0 < self.mask_time_prob < 1:
            raise ConfigError(f"mask_time_prob must be in (0, 1), got {self.mask_time_prob}.")
        if self.mask_time_length < 1 or self.mask_time_min_masks < 0:
            raise ConfigError("mask_time_length must be >= 1 and mask_time_min_masks >= 0.")

    def initial_weights(self) -> Optional[str]:
        """The checkpoint training starts from (None: a fresh model)."""
        return self.model_name_or_path

    def initial_weights_key(self) -> str:
        """The key that set `initial_weights()`, for the errors about it."""
        return "model_name_or_path"


@dataclass
class SpeechPretrainConfig(SpeechModelArguments, AudioDataArguments, TrainingArguments):
    """Loop settings + audio data + model source and masking, with what every speech objective has."""

    feature_grad_scale: Optional[float] = _help(
        "Gradient scale into the conv feature encoder, in (0, 1]. Unset: fairseq's value for the model's feature "
        "encoder, 0.1 for the group-norm (base) layout, 1.0 for the layer-norm (large) layout.", None)
    do_normalize: bool = _help("Normalize each (cropped) utterance to zero mean, unit variance; saved in preprocessor_config.json (fairseq: false for base, true for large).", True)

    def __post_init__(self) -> None:
        super().__post_init__()  # TrainingArguments: types and loop settings
        self._check_audio_sources()
        self._check_speech_model()
        if self.feature_grad_scale is not None and not 0 < self.feature_grad_scale <= 1:  # None: by the layout
            raise ConfigError("feature_grad_scale must be in (0, 1].")


# fairseq's feature_grad_mult per feature-encoder layout, the same for wav2vec 2.0 and HuBERT (*_base_librispeech.yaml:
# group norm, 0.1; wav2vec2_large_librivox.yaml, hubert_large_librivox.yaml: layer norm, 1.0).
FEATURE_GRAD_SCALE_BY_LAYOUT = {"group": 0.1, "layer": 1.0}


def resolve_layout_defaults(cfg: SpeechPretrainConfig, feat_extract_norm: str, by_layout: dict[str, dict[str, float]]) -> None:
    """Set each unset (None) setting of `by_layout` ({key: {"group": value, "layer": value}}) to its value for the
    model's feature-encoder layout (`feat_extract_norm`), in `cfg` itself so the saved hfssl_config.yaml has it,
    and log the ones set."""
    filled = []
    for key, values in by_layout.items():
        if getattr(cfg, key) is None:
            if feat_extract_norm not in values:
                raise ConfigError(f"feat_extract_norm must be 'group' or 'layer', got '{feat_extract_norm}' (config_overrides "
                                  f"or the model's config.json).")
            setattr(cfg, key, values[feat_extract_norm])
            filled.append(f"{key} {values[feat_extract_norm]}")
    if filled:
        logger.info("%s: fairseq's values for the %s-norm feature encoder (the %s layout).", ", ".join(filled),
                    feat_extract_norm, "base" if feat_extract_norm == "group" else "large")


def speech_model_config(cfg: SpeechPretrainConfig, model_type: str, default_config, conv_front_end: bool = True):
    """The encoder config a speech objective trains: `cfg.initial_weights()` / `config_name` / `default_config`
    (a fresh config instance), then `config_overrides`, then the recipe's pretraining masking.

    `conv_front_end`: the encoder reads waveforms through a wav2vec2-style conv feature encoder whose
    conv_dim / conv_kernel / conv_stride lists are checked (False for encoders fed features, e.g. Wav2Vec2Bert).

    The masking keys are always the recipe's (never a checkpoint's 0.05 fine-tuning default): they are also
    what the saved config says the model was pretrained with. Raises ConfigError for a model of another
    type, an unknown override, inconsistent conv lists, or an override that contradicts the masking keys.
    """
    from hfssl.hub import read_model_config

    masking = {"mask_time_prob": cfg.mask_time_prob, "mask_time_length": cfg.mask_time_length,
               "mask_time_min_masks": cfg.mask_time_min_masks}
    for key, value in masking.items():
        if key in cfg.config_overrides and cfg.config_overrides[key] != value:
            raise ConfigError(f"config_overrides sets {key}={cfg.config_overrides[key]}, but the pretraining masking comes "
                              f"from the top-level key {key} ({value}); set it there.")
    source = cfg.initial_weights() or cfg.config_name
    key = cfg.initial_weights_key() if cfg.initial_weights() else "config_name"
    config = read_model_config(source, key) if source else default_config
    if config.model_type != model_type:
        hint = ("the previous iteration's output folder" if key == "label_model" else
                "or leave model_name_or_path and config_name unset for the base architecture")
        raise ConfigError(f"{key} '{source}' is a {config.model_type} model; the {cfg.objective} objective needs a {model_type} "
                          f"checkpoint or config ({hint}).")
    for key, value in cfg.config_overrides.items():
        if not hasattr(config, key):
            raise ConfigError(f"config_overrides: '{key}' is not a field of {type(config).__name__}.")
        setattr(config, key, value)
    if conv_front_end:
        # The conv layer count is derived from conv_dim at construction only: overriding the lists must update it.
        config.num_feat_extract_layers = len(config.conv_dim)
        if not len(config.conv_dim) == len(config.conv_kernel) == len(config.conv_stride):
            raise ConfigError(f"conv_dim, conv_kernel and conv_stride must have the same length, got {len(config.conv_dim)}, "
                              f"{len(config.conv_kernel)} and {len(config.conv_stride)}.")
    inherited = {key: getattr(config, key) for key in masking}
    for key, value in masking.items():
        setattr(config, key, value)
    config.apply_spec_augment = True
    settings = ", ".join(f"{k}={v}" for k, v in masking.items())
    if inherited != masking:
        logger.info("Time masking for pretraining: %s (the %s config had %s; e.g. the stock 0.05 is a fine-tuning value).",
                    settings, source or "default", ", ".join(f"{k}={v}" for k, v in inherited.items()))
    else:
        logger.info("Time masking for pretraining: %s.", settings)
    return config


def load_initial_weights(model_class, cfg, config):
    """`model_class.from_pretrained(cfg.initial_weights(), config=config)`, with an unreadable checkpoint (e.g. a
    folder holding only config.json) a ConfigError naming its key before training, not a traceback."""
    source = cfg.initial_weights()
    try:
        return model_class.from_pretrained(source, config=config)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{cfg.initial_weights_key()}: could not load {model_class.__name__} weights from '{source}' ({e}). "
                          "Give the folder of a saved model (config.json + model.safetensors), or config_name for a fresh "
                          "model.") from None


class SpeechObjective(Objective):
    """What the speech pretraining objectives share: random crops of max_duration_in_seconds and the
    one batch plan (by padded seconds with max_batch_seconds, else by file count)."""

    input_unit = "audio_seconds"

    @property
    def max_samples(self) -> int:
        return int(round(self.cfg.max_duration_in_seconds * self.cfg.sampling_rate))

    def check_crop_holds_a_span(self, conv_kernel, conv_stride) -> None:
        """Crops whose frames are fewer than mask_time_length get no masked span, so no batch has a target: refused
        before any audio is read (training would skip updates until it stopped with "no targets")."""
        from hfssl.data.audio.geometry import conv_geometry
        from hfssl.data.audio.splits import seconds_rounded_up

        cfg = self.cfg
        window, hop = conv_geometry(conv_kernel, conv_stride)
        if not math.isfinite(cfg.max_duration_in_seconds) or self.max_samples < window:
            return  # whole files (their lengths decide), or too short for one frame (check_crop_length says so)
        frames = 1 + (self.max_samples - window) // hop
        if frames < cfg.mask_time_length:
            need = seconds_rounded_up(window + (cfg.mask_time_length - 1) * hop, cfg.sampling_rate)
            raise ConfigError(f"max_duration_in_seconds {cfg.max_duration_in_seconds} crops audio to {frames} frames, fewer than "
                              f"mask_time_length {cfg.mask_time_length}: no crop gets a masked span, so there is nothing to "
                              f"predict. Set max_duration_in_seconds to at least {need:g}, or lower mask_time_length.")

    def batch_plan(self, epoch: int, seed: int) -> list[list[int]]:
        return self._plan(self.train_dataset.lengths, self.cfg.per_device_train_batch_size, seed=seed, epoch=epoch)

    def eval_plan(self) -> list[list[int]]:
        return self._plan(self.eval_dataset.lengths, self.cfg.per_device_eval_batch_size, shuffle=False)

    def _plan(self, lengths, batch_size: int, **order) -> list[list[int]]:
        return audio_batch_plan(lengths, batch_size=batch_size, max_batch_seconds=self.cfg.max_batch_seconds,
                                sampling_rate=self.cfg.sampling_rate, max_length=self.max_samples, **order)


def companion_file(model: Optional[str], filename: str) -> Optional[str]:
    """A file hfssl saves beside a model (a BEST-RQ quantizer, a softmax head): its local path, from the model's
    folder or, for a Hub id, downloaded from the model's repository; None when there is none (logged for a Hub id
    that could not be reached, since what it would have given is then drawn or trained afresh)."""
    if not model:
        return None
    if Path(model).is_dir():
        path = Path(model) / filename
        return str(path) if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(model, filename)
    except (EntryNotFoundError, HfHubHTTPError, OSError) as e:
        # No such file or repository: nothing to fetch. Offline and not cached (LocalEntryNotFoundError, a subclass of
        # EntryNotFoundError) or another failure: logged.
        absent = isinstance(e, (EntryNotFoundError, RepositoryNotFoundError)) and not isinstance(e, LocalEntryNotFoundError)
        if not absent:
            logger.warning("Could not fetch %s from %s (%s): continuing without it.", filename, model, type(e).__name__)
        return None


def matching_head(folder: Optional[str], head_file: str, key: str, fingerprint: str) -> Optional[dict]:
    """The saved head of an hfssl output (a folder or a Hub id) being continued from, when its targets are the
    same ones (metadata `key` equals `fingerprint`): {name: tensor}. None when there is no head file, or (logged)
    when it was trained on other targets, whose classes would mean something else."""
    path = companion_file(folder, head_file)
    if path is None:
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if meta.get(key) != fingerprint:
        logger.info("%s was trained on other targets: its head is not reused.", path)
        return None
    return load_file(path)

