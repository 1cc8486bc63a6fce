"""Speech fine-tuning: the shared speech task and audio classification (CTC recognition builds on it in
`hfssl.finetune.ctc`), on wav2vec2-family encoders that read waveforms through a conv feature encoder (wav2vec2, HuBERT, WavLM, data2vec-audio) or on Wav2Vec2Bert, which
reads log-mel frames (hfssl's BEST-RQ output): an hfssl pretraining output, a local checkpoint or a Hub id,
or the same architecture from random init.

Audio comes from `hfssl.data.audio` (folders with class subfolders or metadata.csv, manifests,
Hub datasets), is validated in full before training and resampled to the feature extractor's rate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Optional

import numpy as np
import torch

from hfssl.collators.finetune import AudioCollator
from hfssl.errors import ConfigError
from hfssl.data.audio.batching import audio_batch_plan
from hfssl.data.audio.datasets import AudioDataset
from hfssl.data.audio.files import class_layout_problem, list_audio_dir, read_manifest
from hfssl.data.audio.fbank import FbankFrontend
from hfssl.data.audio.geometry import ConvFrames, receptive_field
from hfssl.data.audio.splits import build_audio_splits, check_crop_length, hub_split_rows, scan_eval_split
from hfssl.errors import DataError
from hfssl.finetune import data as fdata
from hfssl.finetune.heads import AudioClassifier, LayerProbe, save_probe
from hfssl.hub import read_model_config
from hfssl.finetune.tasks import Task, apply_overrides, load_or_init, model_source

logger = logging.getLogger(__name__)

# Encoders that read log-mel frames (computed by a SeamlessM4TFeatureExtractor) instead of waveforms.
FEATURE_INPUT_MODELS = ("wav2vec2-bert",)


class Encoded(torch.utils.data.Dataset):
    """An `AudioDataset` whose rows also carry encoded `labels` (precomputed from the metadata)
    and the `train` flag the collator reads (crop + SpecAugment in training only)."""

    def __init__(self, base: AudioDataset, labels: Optional[list], train: bool):
        self.base, self.labels, self.train = base, labels, train
        self.lengths = base.lengths

    def __len__(self):
        return len(self.base)

    def __getitems__(self, indices):
        out = []
        for i in indices:
            row = {"input_values": self.base.decode(int(i)), "train": self.train}
            if self.labels is not None:
                row["labels"] = self.labels[int(i)]
            out.append(row)
        return out

    def __getitem__(self, i):
        return self.__getitems__([i])[0]


class SpeechTask(Task):
    """Shared by both speech tasks: feature extractor, audio splits, batch plans, saving."""

    input_unit = "audio_seconds"
    label_key: str = "label"
    stratified_validation = False  # classification: a validation split carved from train keeps every class in training

    def __init__(self, cfg, accelerator=None):
        super().__init__(cfg, accelerator)
        self.source, self.pretrained = model_source(cfg)
        self.config = read_model_config(self.source, "model_name_or_path" if self.pretrained else "config_name")
        feature_input = self.config.model_type in FEATURE_INPUT_MODELS
        if not feature_input and not hasattr(self.config, "conv_kernel"):
            raise ConfigError(f"'{self.source}' is a {self.config.model_type} model, not a speech encoder this task fine-tunes "
                              "(wav2vec2, hubert, wavlm, data2vec-audio, wav2vec2-bert).")
        self.feature_extractor = self._feature_extractor(cfg, feature_input)
        self.sr = int(self.feature_extractor.sampling_rate)
        if not cfg.do_train and not any(a.endswith(self.head_suffix) for a in (self.config.architectures or [])):
            raise ConfigError(f"do_train false evaluates a fine-tuned model with a *{self.head_suffix} head; '{self.source}' is a "
                              f"{', '.join(self.config.architectures or [self.config.model_type])}.")
        # fbank: the log-mel front end of a feature-input encoder (None for waveform encoders); frames: samples ->
        # encoder frames of a conv feature encoder (None when the attention mask counts encoder frames).
        if feature_input:
            self.fbank = FbankFrontend.from_feature_extractor(self.feature_extractor)
            if self.fbank.feature_dim != self.config.feature_projection_input_dim:
                raise ConfigError(f"The feature extractor of '{cfg.tokenizer_name or self.source}' stacks {self.fbank.stride} x "
                                  f"{self.fbank.num_mel_bins} mel bins = {self.fbank.feature_dim}-dim frames, but the model takes "
                                  f"{self.config.feature_projection_input_dim}: use the feature extractor saved with the model.")
            self.frames, self.min_samples = None, self.fbank.min_samples
        else:
            self.fbank = None
            self.frames = ConvFrames(self.config.conv_kernel, self.config.conv_stride)
            self.min_samples = receptive_field(self.config.conv_kernel, self.config.conv_stride)
        if cfg.do_train and cfg.task == "audio-classification":  # training clips are cropped (the collator's length)
            check_crop_length("max_length_seconds", cfg.max_length_seconds, int(cfg.max_length_seconds * self.sr), self.sr,
                              self.min_samples)
        self.splits = self._load_audio(dataclasses.replace(cfg, sampling_rate=self.sr) if cfg.sampling_rate != self.sr else cfg,
                                       accelerator)

    def _feature_extractor(self, cfg, feature_input: bool):
        from transformers import AutoFeatureExtractor, SeamlessM4TFeatureExtractor, Wav2Vec2FeatureExtractor

        fe_source = cfg.tokenizer_name or self.source
        try:
            extractor = AutoFeatureExtractor.from_pretrained(fe_source)
        except (OSError, ValueError):
            if feature_input:
                stride = self.config.feature_projection_input_dim // 80
                logger.warning("No feature extractor in '%s': using 80-bin log-mel frames stacked by %d (SeamlessM4TFeatureExtractor, %d Hz).",
                               fe_source, stride, cfg.sampling_rate)
                return FbankFrontend(cfg.sampling_rate, 80, stride).feature_extractor()
            logger.warning("No feature extractor in '%s': using Wav2Vec2FeatureExtractor(%d Hz, normalized).", fe_source, cfg.sampling_rate)
            return Wav2Vec2FeatureExtractor(sampling_rate=cfg.sampling_rate, do_normalize=True, return_attention_mask=True)
        if feature_input and not isinstance(extractor, SeamlessM4TFeatureExtractor):
            raise ConfigError(f"'{fe_source}' has a {type(extractor).__name__}; a {self.config.model_type} model reads log-mel frames "
                              "from a SeamlessM4TFeatureExtractor (saved with hfssl's BEST-RQ outputs).")
        return extractor

    # freeze_encoder_steps N (never with a probe: the config refuses it): the fine-tuned model's encoder is frozen
    # for updates 1..N. The flag is also checkpointed, so a run resumed after update N does not freeze again.
    def _start_frozen(self) -> None:
        self.model.encoder_frozen = self.cfg.freeze_encoder_steps > 0

    def on_update(self, step: int, total_steps: int) -> dict:
        n = self.cfg.freeze_encoder_steps
        if n:
            if step == n:
                logger.info("Update %d: the encoder trains from here on (freeze_encoder_steps %d).", step + 1, n)
            self.model.encoder_frozen = step < n
        return {}

    def state_dict(self) -> dict:
        return {"encoder_frozen": bool(getattr(self.model, "encoder_frozen", False))}

    def load_state_dict(self, state: dict) -> None:
        if self.cfg.freeze_encoder_steps:
            self.model.encoder_frozen = bool(state.get("encoder_frozen", self.model.encoder_frozen))

    def _num_frames(self, num_samples: int) -> int:
        return int(self.fbank.num_frames(num_samples) if self.fbank is not None else self.frames(num_samples))

    def _freeze_feature_encoder(self, model) -> None:
        """A conv feature encoder stays frozen; a log-mel front end has no weights to freeze."""
        if self.fbank is None:
            model.freeze_feature_encoder()

    # ------------------------------------------------------------------ data
    def _load_audio(self, cfg, accelerator) -> dict:
        """Scanned splits; the files are divided between the processes (each decodes its share)."""
        main = accelerator is None or accelerator.is_main_process
        splits = {}
        if cfg.do_train:
            carve = self.stratified_validation and cfg.validation_split_percentage > 0 and not (cfg.validation_dir or cfg.validation_file)
            source = dataclasses.replace(cfg, validation_split_percentage=0) if carve else cfg
            # Fine-tuning names its Hub splits with dataset_split_names, as text classification does.
            train_name, validation_name, _ = self._hub_names(cfg)
            hub = (train_name or "train", validation_name if validation_name not in ("", "validation") else None)
            # What the log and data report call cropped: classification crops to max_length_seconds, CTC keeps utterances whole.
            crop = cfg.max_length_seconds if cfg.task == "audio-classification" else math.inf
            train, validation, _ = build_audio_splits(source, cfg.output_dir if main else None, self.min_samples, accelerator, crop, hub)
            if not isinstance(train, AudioDataset):
                raise ConfigError("Fine-tuning needs a map-style audio set; streaming is for pretraining.")
            if carve and validation is None:  # no validation split came with the data: a stratified one from train
                keys = [fdata.label_key(v) for v in self._column(train, cfg.label_column_name, "label_column_name", "train")]
                where = cfg.train_dir or cfg.train_file or cfg.dataset_name
                train, validation = fdata.hold_out_validation(train, keys, cfg.validation_split_percentage, cfg.seed, where)
            splits["train"] = train
            if validation is not None:
                splits["validation"] = validation
        else:
            split = self._scan(cfg, cfg.validation_dir, cfg.validation_file, "validation", accelerator)
            if split is not None:
                splits["validation"] = split
        test = self._scan(cfg, cfg.test_dir, cfg.test_file, "test", accelerator)
        if test is not None:
            splits["test"] = test
        if not splits:  # do_train false, and the Hub dataset had neither split
            raise DataError(f"Nothing to evaluate: dataset '{cfg.dataset_name}' has no split named "
                            f"{' or '.join(repr(n) for n in self._hub_names(cfg)[1:])}; set dataset_split_names (train,validation,test).")
        return splits

    @staticmethod
    def _hub_names(cfg) -> list[str]:
        """dataset_split_names as [train, validation, test] ('' where not given)."""
        return ([n.strip() for n in cfg.dataset_split_names.split(",")] + ["", "", ""])[:3]

    def _scan(self, cfg, folder, manifest, split, accelerator) -> Optional[AudioDataset]:
        """An evaluation split from its folder or manifest, else from the Hub dataset's split of that name (None
        when it has none), every file checked before training (see `scan_eval_split`)."""
        source = None
        if folder or manifest:
            where = folder or manifest
            try:
                rows = list_audio_dir(folder) if folder else read_manifest(manifest, cfg.audio_column_name)
            except (NotADirectoryError, ValueError) as e:
                raise DataError(str(e)) from e
        else:
            name = self._hub_names(cfg)[1 if split == "validation" else 2]
            found = hub_split_rows(cfg, name) if cfg.dataset_name and name else None
            if found is None:
                return None
            (rows, source), where = found, f"{cfg.dataset_name}[{name}]"
        if not rows:
            raise DataError(f"No audio files found for the {split} split in '{where}'.")
        main = accelerator is None or accelerator.is_main_process
        return scan_eval_split(rows, cfg, self.min_samples, split, where, cfg.output_dir if main else None, source, accelerator)

    def _column(self, ds: AudioDataset, column: str, key: str, split: str) -> list:
        available = sorted({k for r in ds.rows for k in r} - {"path", "num_samples", "_index"})
        if column not in available:
            where = (self.cfg.train_dir or self.cfg.train_file or self.cfg.dataset_name) if split == "train" else split
            folder = getattr(self.cfg, f"{split}_dir", None)
            problem = class_layout_problem(folder) if folder and not available else None
            if problem:  # class subfolders were given but did not form the layout: say what breaks it
                raise DataError(f"{key} '{column}': '{folder}' is not read as class folders ({folder}/<label>/x.flac), "
                                f"so its audio has no labels: {problem}.")
            raise DataError(f"{key} '{column}' is not a column of the {split} audio ({where}); available columns: "
                            f"{', '.join(available) if available else '(none: give class subfolders or a metadata.csv)'}.")
        return [r[column] for r in ds.rows]

    def _datasets(self, encode: Callable[[list, str], list]):
        has = {s: (s != "test" or self.label_key in {k for r in ds.rows for k in r}) for s, ds in self.splits.items()}
        enc = {s: (encode(self._column(ds, self.label_key, self._key_name, s), s) if has[s] else None) for s, ds in self.splits.items()}
        self.train_dataset = Encoded(self.splits["train"], enc["train"], True) if "train" in self.splits else None
        self.eval_dataset = Encoded(self.splits["validation"], enc["validation"], False) if "validation" in self.splits else None
        self.test_dataset = Encoded(self.splits["test"], enc["test"], False) if "test" in self.splits else None

    def _collator(self, ctc: bool, max_samples: Optional[int]) -> AudioCollator:
        cfg, fe = self.cfg, self.feature_extractor
        conv = (None, None) if self.fbank is not None else (list(self.config.conv_kernel), list(self.config.conv_stride))
        return AudioCollator(
            do_normalize=bool(getattr(fe, "do_normalize", True)), return_attention_mask=bool(getattr(fe, "return_attention_mask", True)),
            conv_kernel=conv[0], conv_stride=conv[1], hidden_size=self.config.hidden_size, fbank=self.fbank,
            ctc=ctc, max_samples=max_samples, mask_time_prob=0.0 if cfg.probe else cfg.mask_time_prob,
            mask_time_length=cfg.mask_time_length, mask_time_min_masks=getattr(self.config, "mask_time_min_masks", 2),
            mask_feature_prob=0.0 if cfg.probe else cfg.mask_feature_prob, mask_feature_length=cfg.mask_feature_length,
            sampling_rate=self.sr)

    def _finetune_config(self):
        """The model config with this run's fine-tuning settings (not the pretraining masking)."""
        cfg, config = self.cfg, self.config
        config.mask_time_prob = cfg.mask_time_prob
        config.mask_time_length = cfg.mask_time_length
        config.mask_feature_prob = cfg.mask_feature_prob
        config.mask_feature_length = cfg.mask_feature_length
        apply_overrides(config, cfg.config_overrides)
        if getattr(config, "add_adapter", False):
            raise ConfigError("Models with add_adapter=True are not supported (their frame count differs from the feature encoder's).")
        return config

    def _upstream_probe(self, num_outputs: int, kind: str, blank_id: int = 0):
        from transformers import AutoModel

        upstream = load_or_init(AutoModel, self.cfg, self.config, self.pretrained, self.source)
        return LayerProbe(upstream, self.config.num_hidden_layers + 1, self.config.hidden_size, num_outputs,
                          self.cfg.probe_hidden_size, kind=kind, blank_id=blank_id, frames=self.frames,
                          zero_infinity=self.cfg.ctc_zero_infinity)

    # ------------------------------------------------------------------ loop hooks
    def batch_plan(self, epoch: int, seed: int) -> list[list[int]]:
        return audio_batch_plan(self.train_dataset.lengths, batch_size=self.cfg.per_device_train_batch_size,
                                max_batch_seconds=self.cfg.max_batch_seconds, sampling_rate=self.sr,
                                max_length=self.collator.max_samples, seed=seed, epoch=epoch)

    def eval_plan(self) -> list[list[int]]:
        return self.eval_batches(self.eval_dataset)

    def eval_batches(self, dataset) -> list[list[int]]:
        # Longest first, similar lengths together: less padding, which models without an
        # attention mask (group-norm wav2vec2) do not ignore. By count, never by seconds, uncropped,
        # and the same number of batches on every process (balance_across).
        return audio_batch_plan(dataset.lengths, batch_size=self.cfg.per_device_eval_batch_size, max_batch_seconds=None,
                                sampling_rate=self.sr, max_length=None, shuffle=False, balance_across=self.world)

    def _save_model(self, output_dir: str) -> None:
        if self.is_probe:
            save_probe(self.model, output_dir, self.cfg.model_name_or_path or self.cfg.config_name)
            return
        self.model.restore_config()
        self.model.model.save_pretrained(output_dir)

    def _files(self, split: str) -> list[str]:
        return [r["path"] for r in self.splits[split].rows]


class AudioClassificationTask(SpeechTask):
    name = "audio-classification"
    _key_name = "label_column_name"
    head_suffix = "ForSequenceClassification"
    stratified_validation = True

    def __init__(self, cfg, accelerator=None):
        from transformers import AutoModelForAudioClassification

        super().__init__(cfg, accelerator)
        self.label_key = cfg.label_column_name
        if cfg.do_train:
            values = self._column(self.splits["train"], self.label_key, "label_column_name", "train")
            names = sorted({fdata.label_key(v) for v in values})
            if len(names) < 2:
                raise DataError(f"The training audio has a single label ({names[0]!r}); classification needs at least 2.")
            self.labels = fdata.LabelSpace(names)
        else:
            id2label = getattr(self.config, "id2label", None) or {}
            self.labels = fdata.LabelSpace([id2label[i] for i in sorted(id2label, key=int)])
        for split in ("validation", "test"):
            if split in self.splits and self.label_key in {k for r in self.splits[split].rows for k in r}:
                seen = {fdata.label_key(v) for v in self._column(self.splits[split], self.label_key, "label_column_name", split)}
                unseen = sorted(seen - set(self.labels.names))
                if unseen:
                    raise DataError(f"The {split} audio has label(s) never seen in training: {', '.join(map(repr, unseen))}. "
                                    f"Known labels: {', '.join(self.labels.names)}.")
        if cfg.do_train:
            keys = [fdata.label_key(v) for v in self._column(self.splits["train"], self.label_key, "label_column_name", "train")]
            chosen = label_budget(keys, cfg)
            if chosen is not None:
                self.splits["train"] = self.splits["train"].select(chosen)

        config = self._finetune_config()
        config.num_labels = len(self.labels.names)
        config.id2label = dict(enumerate(self.labels.names))
        config.label2id = self.labels.label2id
        if cfg.probe:
            self.model = self._upstream_probe(len(self.labels.names), "classification")
        else:
            clf = load_or_init(AutoModelForAudioClassification, cfg, config, self.pretrained, self.source)
            if cfg.freeze_feature_encoder:
                self._freeze_feature_encoder(clf)
            self.model = AudioClassifier(clf)
            self._start_frozen()
        self.collator = self._collator(False, int(cfg.max_length_seconds * self.sr))
        ids = self.labels.label2id
        self._datasets(lambda values, split: [ids[fdata.label_key(v)] for v in values])
        if self.train_dataset is not None:
            logger.info("Audio classification: %d labels; %d train / %d validation / %d test files.", len(self.labels.names),
                        len(self.train_dataset), len(self.eval_dataset or []), len(self.test_dataset or []))

    def evaluate_outputs(self, split: str, outputs: list) -> tuple[dict, list[dict]]:
        from hfssl.finetune.metrics import classification_metrics, confusion_matrix

        logits = np.stack(outputs)
        pred = logits.argmax(-1)
        names = self.labels.names
        rows = [{"file": f, "prediction": names[p]} for f, p in zip(self._files(split), pred)]
        ds = self.eval_dataset if split == "validation" else self.test_dataset
        if ds.labels is None:
            return {}, rows
        refs = np.asarray(ds.labels)
        for row, ref in zip(rows, refs):
            row["label"] = names[int(ref)]
        self.last_confusion = confusion_matrix(pred, refs, len(names))
        return classification_metrics(pred, refs, names), rows

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        self._save_model(output_dir)
        self.feature_extractor.save_pretrained(output_dir)


def label_budget(keys: list[str], cfg) -> Optional[list[int]]:
    """Indices of a stratified label budget of the training rows, or None for all of them."""
    idx = list(range(len(keys)))
    if cfg.label_fraction < 1:
        idx, _ = fdata.stratified_indices(keys, cfg.label_fraction, cfg.seed + 1)
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(idx):
        sub, _ = fdata.stratified_indices([keys[i] for i in idx], cfg.max_train_samples / len(idx), cfg.seed + 2)
        idx = [idx[i] for i in sub[: cfg.max_train_samples]]
    return idx if len(idx) < len(keys) else None
