"""Fine-tuning settings: one dataclass for text classification, audio classification and CTC ASR.

Parsed like every hfssl recipe (flat YAML + `--key value` overrides) by
`hfssl.config.parse_or_exit(argv, configs={"finetune": FinetuneConfig}, default_objective="finetune")`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from hfssl import attention
from hfssl.config import MAX_LEARNING_RATE, TrainingArguments, _help
from hfssl.errors import ConfigError
from hfssl.objectives.speech_base import AudioDataArguments

TABLE_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
MAX_SEEDS = 30  # a guard against '--seeds 42' meant as one seed; a table of more seeds is rare


@dataclass
class FinetuneConfig(TrainingArguments, AudioDataArguments):
    """Fine-tune a pretrained (or randomly initialized) model on a labeled downstream task."""

    objective: Literal["finetune"] = _help("Always 'finetune' for run_finetune.py.", "finetune")
    task: Literal["text-classification", "audio-classification", "speech-recognition-ctc"] = _help(
        "Downstream task.", "text-classification")
    # --- model
    model_name_or_path: Optional[str] = _help("Start from this model: an hfssl output folder, a local checkpoint or a Hub id.", None)
    config_name: Optional[str] = _help("From-scratch baseline: a fresh model of this config's architecture (e.g. the pretrained output folder itself), random init.", None)
    tokenizer_name: Optional[str] = _help("Tokenizer (text) or feature extractor (audio) source; default: the model's folder.", None)
    config_overrides: dict = _help("Extra config fields for the fine-tuned model, e.g. {hidden_dropout_prob: 0.2}.", {})
    reuse_pretraining_head: bool = _help(
        "Keep head weights that the checkpoint's own task class saved (e.g. ModernBERT's masked-LM `head`, which "
        "ModernBertForSequenceClassification would load by name). Default false: heads outside the encoder that come from "
        "another task are initialized fresh, as the random-init baseline's are.", False)
    do_train: bool = _help("Train; false evaluates an existing model (model_name_or_path) only.", True)
    probe: bool = _help("SUPERB-style probe: freeze the upstream, learn a softmax-weighted sum of all hidden layers plus a small head.", False)
    probe_hidden_size: int = _help("Probe head width (0: linear head).", 0)
    attn_implementation: Optional[Literal["sdpa", "flash_attention_2", "eager"]] = _help(attention.HELP, None)
    # --- data (text tables; audio folders/manifests come from the audio fields)
    train_file: Optional[str] = _help("Training table (.csv/.tsv/.json/.jsonl/.parquet); for audio tasks a manifest with an audio path column.", None)
    validation_file: Optional[str] = _help("Validation table in the same format.", None)
    test_file: Optional[str] = _help("Test table in the same format.", None)
    test_dir: Optional[str] = _help("Test audio folder (class subfolders or metadata.csv).", None)
    validation_split_percentage: float = _help("Percent of train held out (stratified for classification) when no validation set is given.", 10.0)
    dataset_name: Optional[str] = _help("A `datasets` dataset (Hub id or local path): a labeled text table or audio with labels/transcriptions.", None)
    dataset_split_names: str = _help("Hub dataset split names for train,validation,test (missing ones are skipped).", "train,validation,test")
    text_column_name: Optional[str] = _help("Text column (default 'text', 'sentence', or the first string column).", None)
    text_pair_column_name: Optional[str] = _help("Second text column for sentence-pair tasks.", None)
    label_column_name: str = _help("Label column (a name, an integer id, or a list of names for multi-label).", "label")
    transcription_column_name: str = _help("Transcript column for speech recognition.", "transcription")
    multi_label: Optional[bool] = _help("Several labels per example; default: true when label values are lists. Strings are split on label_separator.", None)
    label_separator: str = _help("Multi-label values stored as one string are split on this.", ";")
    max_seq_length: int = _help("Tokens per text example (longer ones are truncated).", 128)
    padding_free: Optional[bool] = _help("Text classification: pack each batch's examples into rows without padding, attention kept "
                                         "within each example. Unset: on where the model supports it (" + ", ".join(attention.PACKABLE)
                                         + "; not with probe), except on a CUDA GPU with sdpa or eager attention (slower than "
                                         "padding there); else padded batches.", None)
    max_train_samples: Optional[int] = _help("Keep at most N training examples (stratified for classification).", None)
    label_fraction: float = _help("Keep this fraction of the training examples (stratified): the label budget.", 1.0)
    # --- audio
    max_length_seconds: float = _help("Audio classification: random crop of training clips to this length (evaluation uses whole clips).", 1.0)
    # Pretraining's audio keys that fine-tuning does not read (refused in __post_init__): their help says so.
    max_duration_in_seconds: float = _help("Pretraining only (its crop length); fine-tuning refuses it: classification crops to "
                                           "max_length_seconds, CTC keeps utterances whole.", 15.6)
    dataset_train_split: str = _help("Pretraining only; fine-tuning names its splits with dataset_split_names.", "train")
    dataset_validation_split: Optional[str] = _help("Pretraining only; fine-tuning names its splits with dataset_split_names.", None)
    freeze_feature_encoder: bool = _help("Keep the convolutional feature encoder frozen (log-mel encoders such as Wav2Vec2Bert have none).", True)
    freeze_encoder_steps: int = _help("Speech tasks: train only the new output layers for the first N updates, the whole model after "
                                      "(fairseq's freeze_finetune_updates: a random head does not pull the pretrained encoder "
                                      "around while it is still wrong). 0: everything trains from the first update.", 0)
    # --- CTC
    chars_to_ignore: str = _help("Characters removed from transcripts before building the vocabulary and scoring: the contents of a "
                                 "regex character class (escape '-' as \\- or put it last). Apostrophes are kept, as in LibriSpeech scoring.",
                                 r",?.!\-;:\"“%‘”")
    lowercase: bool = _help("Lowercase transcripts.", True)
    word_delimiter_token: str = _help("Token standing for the space between words.", "|")
    ctc_zero_infinity: bool = _help("Zero infinite CTC losses (a transcript too long for its audio) instead of NaN.", True)
    mask_time_prob: float = _help("SpecAugment: time-mask span start probability during fine-tuning (wav2vec 2.0 fine-tuning: 0.05).", 0.05)
    mask_time_length: int = _help("SpecAugment: frames per time-mask span.", 10)
    mask_feature_prob: float = _help("SpecAugment: feature-channel span start probability.", 0.0)
    mask_feature_length: int = _help("SpecAugment: channels per feature-mask span.", 10)
    # --- the payoff report
    compare_with_scratch: bool = _help("Also fine-tune the same architecture from random init under identical settings and write the comparison report.", False)
    label_fractions: str = _help("Comma-separated label budgets (fractions of train) for compare_with_scratch, e.g. 0.1,1.0.", "1.0")
    scratch_learning_rate: Optional[float] = _help("One learning rate for the random-init model in the comparison (default: the "
                                                   "pretrained side's grid). scratch_learning_rates, when set, replaces it.", None)
    learning_rates: Optional[str] = _help(
        "compare_with_scratch: comma-separated learning-rate grid for the pretrained model, e.g. 1e-4,3e-4,1e-3 (unset: "
        "learning_rate alone). Every point runs on every seed; per label budget the rate with the best mean validation "
        "metric is kept and the test metric of those runs is reported. More than one point needs a validation split.", None)
    scratch_learning_rates: Optional[str] = _help(
        "compare_with_scratch: the same grid for the random-init model, chosen separately on validation (unset: "
        "scratch_learning_rate, else the pretrained side's grid).", None)
    seeds: str = _help(
        "compare_with_scratch: seeds per (init, label budget) cell. An integer N runs seeds seed, seed+1, ..., seed+N-1 "
        "(1 <= N <= %d); a comma list names them (1,2,3; one explicit seed: '7,'). A seed sets head init, data order, "
        "dropout, the held-out validation split and the label-budget subsample; the pretrained and random-init runs "
        "with the same seed are paired." % MAX_SEEDS, "3")

    def __post_init__(self) -> None:
        for key in ("seeds", "learning_rates", "scratch_learning_rates"):  # a YAML list reads as a comma list
            if isinstance(getattr(self, key), (list, tuple)):
                setattr(self, key, ",".join(str(v) for v in getattr(self, key)))
        super().__post_init__()
        if self.model_name_or_path and self.config_name:
            raise ConfigError("Can't provide both model_name_or_path and config_name: the first fine-tunes a trained model, "
                              "the second trains the same architecture from random init. Choose one.")
        if not (self.model_name_or_path or self.config_name):
            raise ConfigError("No model given: set model_name_or_path (a pretrained model) or config_name (same architecture, random init).")
        if not self.do_train and not self.model_name_or_path:
            raise ConfigError("do_train false evaluates an existing model: set model_name_or_path.")
        if self.push_to_hub and (not self.do_train or self.compare_with_scratch or self.probe):
            why = ("evaluation only writes no model" if not self.do_train else "a payoff report trains many models, none of them "
                   "the one to share" if self.compare_with_scratch else "a probe's folder is not a transformers model")
            raise ConfigError(f"push_to_hub uploads the fine-tuned model, and {why}. Unset push_to_hub (or run that model's "
                              f"fine-tuning on its own).")
        if self.compare_with_scratch and not self.model_name_or_path:
            raise ConfigError("compare_with_scratch needs model_name_or_path (the pretrained model to compare with random init).")
        audio = self.task != "text-classification"
        for key in ("train_file", "validation_file", "test_file"):
            path = getattr(self, key)
            if path is not None:
                exts = (".csv", ".tsv", ".json", ".jsonl") if audio else TABLE_EXTENSIONS
                if not Path(path).is_file():
                    raise ConfigError(f"{key}: file '{path}' does not exist.")
                if Path(path).suffix.lower() not in exts:
                    raise ConfigError(f"{key}: '{path}' has extension '{Path(path).suffix}'; supported: {', '.join(exts)}.")
        for key in ("train_dir", "validation_dir", "test_dir"):
            path = getattr(self, key)
            if path is not None:
                if not audio:
                    raise ConfigError(f"{key} is for audio tasks; text classification reads train_file/validation_file/test_file or dataset_name.")
                if not Path(path).is_dir():
                    raise ConfigError(f"{key}: folder '{path}' does not exist.")
        sources = [k for k in ("dataset_name", "train_file", "train_dir") if getattr(self, k)]
        if len(sources) > 1:
            raise ConfigError(f"Can't provide both {sources[0]} and {sources[1]}. Choose one.")
        if self.streaming:
            raise ConfigError("streaming is for pretraining; fine-tuning loads its (labeled) data. Set streaming false.")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError("validation_split_percentage must be in [0, 100).")
        if not 0 < self.label_fraction <= 1:
            raise ConfigError(f"label_fraction must be in (0, 1], got {self.label_fraction}.")
        for f in self.fractions:
            if not 0 < f <= 1:
                raise ConfigError(f"label_fractions: each budget must be in (0, 1], got {f}.")
        if self.scratch_learning_rate is not None and not 0 < self.scratch_learning_rate <= MAX_LEARNING_RATE:
            raise ConfigError(f"scratch_learning_rate must be in (0, {MAX_LEARNING_RATE:g}], got {self.scratch_learning_rate}.")
        self._check_payoff_grid()
        if self.max_seq_length < 4:
            raise ConfigError("max_seq_length must be >= 4.")
        if self.max_length_seconds <= 0:
            raise ConfigError("max_length_seconds must be > 0.")
        # Keys shared with pretraining's audio data arguments that fine-tuning does not read: refused, not ignored.
        if self.max_duration_in_seconds != FinetuneConfig.__dataclass_fields__["max_duration_in_seconds"].default:
            raise ConfigError("max_duration_in_seconds is pretraining's crop length; fine-tuning crops audio-classification clips to "
                              "max_length_seconds and keeps speech-recognition-ctc utterances whole (bound a batch with "
                              "max_batch_seconds). Unset it.")
        if self.dataset_train_split != "train" or self.dataset_validation_split is not None:
            raise ConfigError("dataset_train_split / dataset_validation_split name pretraining's splits; fine-tuning names the "
                              "train, validation and test splits of dataset_name with dataset_split_names, e.g. "
                              "'train,validation,test'. Unset them.")
        if self.task == "audio-classification" and self.max_batch_seconds is not None and self.max_batch_seconds < self.max_length_seconds:
            raise ConfigError(f"max_batch_seconds ({self.max_batch_seconds}) must hold at least one training crop "
                              f"(max_length_seconds={self.max_length_seconds}).")
        for key in ("mask_time_prob", "mask_feature_prob"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}.")
        if self.mask_time_length < 1 or self.mask_feature_length < 1:
            raise ConfigError("mask_time_length and mask_feature_length must be >= 1.")
        try:
            re.compile(f"[{self.chars_to_ignore}]")
        except re.error as e:
            raise ConfigError(f"chars_to_ignore: '[{self.chars_to_ignore}]' is not a regex character class ({e}); escape "
                              f"special characters such as ] \\ ^ with a backslash.") from None
        if len(self.word_delimiter_token) != 1:
            raise ConfigError(f"word_delimiter_token must be one character, got '{self.word_delimiter_token}'.")
        if self.freeze_encoder_steps < 0:
            raise ConfigError(f"freeze_encoder_steps must be >= 0, got {self.freeze_encoder_steps}.")
        if self.freeze_encoder_steps and (not audio or self.probe):
            raise ConfigError("freeze_encoder_steps freezes the encoder of a fine-tuned speech model (audio-classification, "
                              "speech-recognition-ctc) for its first updates; a probe's encoder is always frozen, and text tasks "
                              "do not take it. Unset it.")
        if self.probe and self.probe_hidden_size < 0:
            raise ConfigError("probe_hidden_size must be >= 0.")
        attention.check_attn_implementation(self.attn_implementation, self.mixed_precision)
        if self.padding_free and (audio or self.probe):
            raise ConfigError("padding_free packs text examples for a fine-tuned classifier; it does not apply to audio tasks "
                              "or probes. Unset it.")

    def check_data_sources(self) -> None:
        """Data is required to run, not to load a recipe (GPU recipes are templates without data)."""
        audio = self.is_audio
        if self.do_train and not any(getattr(self, k) for k in ("dataset_name", "train_file", "train_dir")):
            raise ConfigError("No training data: set train_file" + (" or train_dir" if audio else "") + " or dataset_name.")
        if not self.do_train and not any(getattr(self, k) for k in ("dataset_name", "validation_file", "validation_dir", "test_file", "test_dir")):
            raise ConfigError("do_train false needs evaluation data: validation_file/test_file"
                              + (" or validation_dir/test_dir" if audio else "") + " or dataset_name.")

    @property
    def fractions(self) -> list[float]:
        try:
            return [float(x) for x in str(self.label_fractions).split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"label_fractions: expected comma-separated numbers, got '{self.label_fractions}'.") from None

    def _check_payoff_grid(self) -> None:
        self.seed_list  # noqa: B018 - parses and checks seeds
        grids = {"learning_rates": self.pretrained_learning_rates, "scratch_learning_rates": self.scratch_learning_rate_grid}
        multi = [key for key, grid in grids.items() if len(grid) > 1]
        if multi and not self.compare_with_scratch:
            raise ConfigError(f"{multi[0]} is a learning-rate grid for the payoff report (compare_with_scratch true); a single "
                              f"fine-tuning run uses learning_rate. Set --compare_with_scratch true or --{multi[0]} none.")
        has_validation = (self.validation_file or self.validation_dir or self.dataset_name
                          or self.validation_split_percentage > 0)
        if multi and not has_validation:
            raise ConfigError(f"{multi[0]}: a learning-rate grid is chosen on the validation split, and there is none "
                              f"(no validation_file/validation_dir/dataset_name, validation_split_percentage 0). Give one "
                              f"or set validation_split_percentage > 0; choosing on test is not allowed.")

    @property
    def seed_list(self) -> list[int]:
        """The payoff seeds: see the `seeds` field."""
        text = str(self.seeds).strip()
        if "," not in text:
            try:
                count = int(text)
            except ValueError:
                raise ConfigError(f"seeds: expected a count N or a comma list of seeds, got '{self.seeds}'.") from None
            if not 1 <= count <= MAX_SEEDS:
                raise ConfigError(f"seeds: a count must be in [1, {MAX_SEEDS}], got {count}; to run one given seed write "
                                  f"'{count},' (a list) or --seed {count} --seeds 1.")
            seeds = [self.seed + i for i in range(count)]
        else:
            try:
                seeds = [int(x) for x in text.split(",") if x.strip()]
            except ValueError:
                raise ConfigError(f"seeds: expected comma-separated integers, got '{self.seeds}'.") from None
            if not seeds:
                raise ConfigError("seeds: the list is empty.")
            if len(set(seeds)) != len(seeds):
                raise ConfigError(f"seeds: '{self.seeds}' repeats a seed; paired runs need distinct seeds.")
        bad = [s for s in seeds if not 0 <= s < 2**32]
        if bad:
            raise ConfigError(f"seeds: each seed must be in [0, 2**32 - 1], got {bad[0]}.")
        return seeds

    @property
    def pretrained_learning_rates(self) -> list[float]:
        return _rate_grid("learning_rates", self.learning_rates) if self.learning_rates else [self.learning_rate]

    @property
    def scratch_learning_rate_grid(self) -> list[float]:
        if self.scratch_learning_rates:
            return _rate_grid("scratch_learning_rates", self.scratch_learning_rates)
        return [self.scratch_learning_rate] if self.scratch_learning_rate is not None else self.pretrained_learning_rates

    @property
    def is_audio(self) -> bool:
        return self.task != "text-classification"


def _rate_grid(key: str, text: str) -> list[float]:
    """'1e-4,3e-4' -> [0.0001, 0.0003]; ConfigError naming `key` on a bad, repeated or out-of-range value."""
    try:
        rates = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{key}: expected comma-separated learning rates, e.g. 1e-4,3e-4,1e-3, got '{text}'.") from None
    if not rates:
        raise ConfigError(f"{key}: the list is empty; unset it with --{key} none.")
    for lr in rates:
        if not 0 < lr <= MAX_LEARNING_RATE:  # also rejects nan and inf
            raise ConfigError(f"{key}: each learning rate must be in (0, {MAX_LEARNING_RATE:g}], got {lr:g}.")
    if len(set(rates)) != len(rates):
        raise ConfigError(f"{key}: '{text}' repeats a learning rate.")
    return rates
