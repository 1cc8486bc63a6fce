"""HuBERT: masked prediction of k-means cluster targets (Hsu et al., 2021), on transformers' HubertModel.

One stage (one iteration) runs as one command: the objective first builds the targets, then the loop
trains on them.

Targets. Iteration 1 clusters 39-dim MFCCs (100 Hz); iteration >= 2 clusters the hidden states of layer
`label_layer` of `label_model` (the previous iteration's output folder). k-means is fit on a seeded
`kmeans_fraction` of the training audio (whole files, drawn until that share of the duration), then every
training and validation file is labelled in full and its labels aligned to the model's frames
(`hfssl.hubert_targets.align_labels`: nearest centre time; MFCC frame 2i for the base encoder). Written
before training, and reused on resume / by the other processes when their settings match:

* `output_dir/kmeans.pt`: centroids + metadata (`hfssl.hubert_targets.KMeans`); `kmeans_model` reuses one.
* `output_dir/labels.npz`: per split, all files' frame labels concatenated (`{split}_labels`),
  `{split}_offsets` (n + 1) and `{split}_paths`, plus `key` (what they were computed with).
* `output_dir/label_stats.json`: cluster usage (histogram, clusters used, entropy) per split.

Model. `HubertModel` (fresh from `config_name`/`config_overrides`, default `HubertConfig()` = HuBERT base,
or `model_name_or_path`) + `final_proj` (hidden -> final_dim) + `label_embeddings` (K, final_dim).
logits = cos(final_proj(h_t), e_c) / logit_temperature over all K clusters (fairseq's HuBERT logits).
The collator's span masks go to HubertModel as `mask_time_indices` (it puts `masked_spec_embed` there).
The config's own masking fields are set to the recipe's (0.8 / 10), never left at the 0.05 fine-tuning
default. Gradients into the conv feature encoder are scaled by `feature_grad_scale` (fairseq: 0.1 for base).

Loss (`hubert_loss`): masked_loss_weight * sum of CE over masked real frames + unmasked_loss_weight * sum of
CE over unmasked real frames. num_targets (`count_targets`, what the loop divides by): the frames that carry
loss, i.e. masked real frames if masked_loss_weight > 0 plus unmasked real frames if unmasked_loss_weight > 0
(fairseq's sample_size); with the paper's unmasked weight 0 it is the number of masked frames. Accuracies are
measured on both sets whatever the weights.

Output folder: HubertModel weights + config (`HubertModel.from_pretrained` / `AutoModel`), the head in
`hubert_head.safetensors` (final_proj.weight, final_proj.bias, label_embeddings; metadata: num_clusters,
final_dim, logit_temperature, kmeans sha1), `preprocessor_config.json` (Wav2Vec2FeatureExtractor),
`kmeans.pt`, `label_stats.json`, README.md model card.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from hfssl.collators.speech import AudioPretrainingCollator
from hfssl.config import HubertPretrainConfig
from hfssl.errors import ConfigError
from hfssl.data.audio.batching import audio_batch_plan, normalize
from hfssl.data.audio.geometry import num_frames, receptive_field
from hfssl.data.audio.splits import build_audio_splits
from hfssl.hubert_targets import (
    KMeans,
    align_labels,
    cluster_usage,
    conv_geometry,
    fit_kmeans,
    hubert_layer_features,
    mfcc_features,
    mfcc_geometry,
    truncate_encoder,
)
from hfssl.masking.spans import expected_masked_fraction

logger = logging.getLogger(__name__)

HEAD_FILE = "hubert_head.safetensors"
LABELS_FILE = "labels.npz"
KMEANS_FILE = "kmeans.pt"
STATS_FILE = "label_stats.json"


# ----------------------------------------------------------------------------------- loss


def count_targets(labels: torch.Tensor, mask: torch.Tensor, masked_weight: float, unmasked_weight: float) -> int:
    """Frames that carry loss: masked real frames (if masked_weight > 0) + unmasked real frames (if unmasked_weight > 0).

    Args:
        labels: (B, F) long, -100 on padding; mask: (B, F) bool.
    """
    real = labels >= 0
    n = 0
    if masked_weight > 0:
        n += int((mask & real).sum())
    if unmasked_weight > 0:
        n += int((~mask & real).sum())
    return n


def hubert_loss(projected: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                temperature: float, masked_weight: float, unmasked_weight: float) -> dict[str, torch.Tensor]:
    """HuBERT's masked-prediction loss, summed (the loop divides by `count_targets`).

    logits(t, c) = cos(projected[t], embeddings[c]) / temperature; cross-entropy against the frame's cluster.
    A set whose weight is 0 is still scored (accuracy, CE) but without gradient.

    Args:
        projected: (B, F, D) projected encoder outputs.
        embeddings: (K, D) cluster embeddings.
        labels: (B, F) long cluster ids, -100 on padding (never scored).
        mask: (B, F) bool, True = masked frame (only its real frames count).
    Returns:
        ``loss_sum`` (scalar), and per set (``masked_*`` / ``unmasked_*``): ``ce_sum``, ``correct``, ``count``
        (scalar tensors), and ``masked_predictions`` (N_masked,) long.
    """
    real = labels >= 0
    emb = F.normalize(embeddings.float(), dim=-1)
    out: dict[str, torch.Tensor] = {}
    loss_sum = projected.new_zeros((), dtype=torch.float32)
    for name, sel, weight in (("masked", mask & real, masked_weight), ("unmasked", ~mask & real, unmasked_weight)):
        with contextlib.nullcontext() if weight > 0 else torch.no_grad():
            y = labels[sel]  # (N,)
            logits = F.normalize(projected[sel].float(), dim=-1) @ emb.T / temperature  # (N, K)
            ce = F.cross_entropy(logits, y, reduction="sum")
        if weight > 0:
            loss_sum = loss_sum + weight * ce
        pred = logits.detach().argmax(-1)
        out[f"{name}_ce_sum"] = ce.detach()
        out[f"{name}_correct"] = (pred == y).sum()
        out[f"{name}_count"] = torch.tensor(y.numel(), device=labels.device)
        if name == "masked":
            out["masked_predictions"] = pred
    out["loss_sum"] = loss_sum
    return out


class HubertForMaskedPrediction(torch.nn.Module):
    """HubertModel + projection + cluster embeddings; forward returns the loop's dict (sums and metrics).

    Metrics (per micro-batch, averaged by the loop): ``accuracy`` (masked-prediction accuracy),
    ``unmasked_accuracy``, ``masked_loss`` / ``unmasked_loss`` (mean CE per frame), ``masked_fraction``
    (masked / real frames) and ``pred_clusters_used`` (distinct clusters predicted on masked frames: a
    collapse shows up as a small number).
    """

    def __init__(self, hubert: torch.nn.Module, num_clusters: int, final_dim: int, logit_temperature: float,
                 masked_loss_weight: float = 1.0, unmasked_loss_weight: float = 0.0, feature_grad_scale: float = 1.0):
        super().__init__()
        self.hubert = hubert
        self.final_proj = torch.nn.Linear(hubert.config.hidden_size, final_dim)
        # fairseq's init, U[0, 1): the embeddings start close together, so the initial cosine logits are
        # nearly flat (loss ~ ln K); a zero-mean init starts at ln K + var/2 (about 1.6 nats more at 0.1).
        self.label_embeddings = torch.nn.Parameter(torch.rand(num_clusters, final_dim))
        self.logit_temperature = logit_temperature
        self.masked_loss_weight, self.unmasked_loss_weight = masked_loss_weight, unmasked_loss_weight
        self.feature_grad_scale = feature_grad_scale
        if feature_grad_scale != 1.0:
            hubert.feature_extractor.register_forward_hook(self._scale_feature_grad)

    def _scale_feature_grad(self, module, inputs, output):
        # Same value forward; the gradient into the conv encoder is multiplied by feature_grad_scale.
        s = self.feature_grad_scale
        return output * s + output.detach() * (1.0 - s) if output.requires_grad else output

    def forward(self, input_values, labels, mask_time_indices, attention_mask=None):
        hidden = self.hubert(input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices).last_hidden_state
        if hidden.shape[1] != labels.shape[1]:
            raise ValueError(f"The model produced {hidden.shape[1]} frames but the batch has labels for {labels.shape[1]}: "
                             "the collator and the model disagree on the conv geometry.")
        r = hubert_loss(self.final_proj(hidden), self.label_embeddings, labels, mask_time_indices, self.logit_temperature,
                        self.masked_loss_weight, self.unmasked_loss_weight)
        n_m, n_u = r["masked_count"].clamp_min(1), r["unmasked_count"].clamp_min(1)
        return {
            "loss_sum": r["loss_sum"],
            "accuracy": r["masked_correct"].float() / n_m,
            "unmasked_accuracy": r["unmasked_correct"].float() / n_u,
            "masked_loss": r["masked_ce_sum"] / n_m,
            "unmasked_loss": r["unmasked_ce_sum"] / n_u,
            "masked_fraction": r["masked_count"].float() / (r["masked_count"] + r["unmasked_count"]).clamp_min(1),
            "pred_clusters_used": r["masked_predictions"].unique().numel() * torch.ones((), device=labels.device),
        }


class HubertCollator:
    """The shared `AudioPretrainingCollator` (crop, normalize, pad, masks, frame labels), with HuBERT's
    num_targets (`count_targets`) and only the tensors `HubertForMaskedPrediction.forward` takes."""

    KEYS = ("input_values", "attention_mask", "mask_time_indices", "labels")

    def __init__(self, audio: AudioPretrainingCollator, masked_weight: float, unmasked_weight: float):
        self.audio, self.masked_weight, self.unmasked_weight = audio, masked_weight, unmasked_weight

    def __call__(self, examples: list[dict], seed: int, progress: float = 0.0) -> dict:
        batch = self.audio(examples, seed=seed, progress=progress)
        out = {k: batch[k] for k in self.KEYS if k in batch}
        out["num_targets"] = count_targets(batch["labels"], batch["mask_time_indices"], self.masked_weight, self.unmasked_weight)
        out["num_inputs"] = batch["num_inputs"]
        return out


class LabeledAudio(torch.utils.data.Dataset):
    """An `AudioDataset` whose examples also carry ``frame_labels`` (F,) int64 at the model's frame rate."""

    def __init__(self, audio, labels: np.ndarray, offsets: np.ndarray):
        self.audio, self.labels, self.offsets = audio, labels, offsets
        self.lengths = audio.lengths

    def __len__(self) -> int:
        return len(self.audio)

    def frame_labels(self, i: int) -> np.ndarray:
        return self.labels[self.offsets[i] : self.offsets[i + 1]].astype(np.int64)

    def __getitem__(self, i: int) -> dict:
        i = int(i) % len(self.audio)
        return {**self.audio[i], "frame_labels": self.frame_labels(i)}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        return [self[i] for i in indices]


# ----------------------------------------------------------------------------------- objective


class HubertObjective:
    name = "hubert"
    input_unit = "audio_seconds"

    def __init__(self, cfg: HubertPretrainConfig, accelerator=None):
        self.cfg = cfg
        self.accelerator = accelerator
        self.device = accelerator.device if accelerator is not None else torch.device("cpu")
        main = accelerator is None or accelerator.is_main_process
        hubert = self._model()
        self.conv_kernel, self.conv_stride = tuple(hubert.config.conv_kernel), tuple(hubert.config.conv_stride)
        min_samples = receptive_field(self.conv_kernel, self.conv_stride)
        train, validation, self.data_report = build_audio_splits(cfg, cfg.output_dir if main else None, min_samples)
        ctx = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
        with ctx:  # the main process builds k-means and labels; the others then read its files
            self.kmeans, labels = self._targets(train, validation, write=main)
        self.num_clusters = self.kmeans.num_clusters
        self.model = HubertForMaskedPrediction(hubert, self.num_clusters, cfg.final_dim, cfg.logit_temperature,
                                               cfg.masked_loss_weight, cfg.unmasked_loss_weight, cfg.feature_grad_scale)
        self._maybe_load_head()
        self.train_dataset = LabeledAudio(train, *labels["train"])
        self.eval_dataset = LabeledAudio(validation, *labels["validation"]) if validation is not None else None
        self.collator = HubertCollator(
            AudioPretrainingCollator(self.conv_kernel, self.conv_stride, max_samples=self.max_samples, do_normalize=cfg.do_normalize,
                                     return_attention_mask=hubert.config.feat_extract_norm == "layer",
                                     mask_prob=cfg.mask_time_prob, mask_length=cfg.mask_time_length,
                                     min_masks=cfg.mask_time_min_masks, num_negatives=0, sampling_rate=cfg.sampling_rate),
            cfg.masked_loss_weight, cfg.unmasked_loss_weight)

    @property
    def max_samples(self) -> int:
        return int(self.cfg.max_duration_in_seconds * self.cfg.sampling_rate)

    # ------------------------------------------------------------------ model
    def _model(self):
        from transformers import AutoConfig, HubertConfig, HubertModel

        cfg = self.cfg
        masking = {"mask_time_prob": cfg.mask_time_prob, "mask_time_length": cfg.mask_time_length,
                   "mask_time_min_masks": cfg.mask_time_min_masks, "apply_spec_augment": True}
        for key in masking:
            if key in cfg.config_overrides and cfg.config_overrides[key] != masking[key]:
                raise ConfigError(f"config_overrides sets {key}={cfg.config_overrides[key]}, but HuBERT's masking comes from the "
                                  f"top-level key {key} ({masking[key]}); set it there.")
        source = cfg.model_name_or_path or cfg.config_name
        if source:
            config = AutoConfig.from_pretrained(source)
            if config.model_type != "hubert":
                raise ConfigError(f"'{source}' is a {config.model_type} model; the hubert objective trains HubertModel "
                                  "(start from a hubert checkpoint or config, or leave both unset for HuBERT base).")
        else:
            config = HubertConfig()  # HuBERT base
        for key, value in {**cfg.config_overrides, **masking}.items():
            if not hasattr(config, key):
                raise ConfigError(f"config_overrides: '{key}' is not a field of HubertConfig.")
            setattr(config, key, value)
        # conv_dim given as an override: the layer count is derived from it at construction only.
        config.num_feat_extract_layers = len(config.conv_dim)
        if not len(config.conv_dim) == len(config.conv_kernel) == len(config.conv_stride):
            raise ConfigError(f"conv_dim, conv_kernel and conv_stride must have the same length; got {len(config.conv_dim)}, "
                              f"{len(config.conv_kernel)} and {len(config.conv_stride)}.")
        if cfg.model_name_or_path:
            return HubertModel.from_pretrained(cfg.model_name_or_path, config=config)
        return HubertModel(config)

    def _maybe_load_head(self) -> None:
        """Continuing from an hfssl HuBERT folder with the same targets: also take its head."""
        path = self.cfg.model_name_or_path
        if not path or not (Path(path) / HEAD_FILE).is_file():
            return
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(Path(path) / HEAD_FILE), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("kmeans_sha1") != self.kmeans.fingerprint():
            logger.info("%s was trained on other targets: its projection head is not reused.", Path(path) / HEAD_FILE)
            return
        state = load_file(str(Path(path) / HEAD_FILE))
        self.model.final_proj.load_state_dict({"weight": state["final_proj.weight"], "bias": state["final_proj.bias"]})
        self.model.label_embeddings.data.copy_(state["label_embeddings"])
        logger.info("Reusing the projection head and cluster embeddings of %s (same k-means targets).", path)

    # ------------------------------------------------------------------ targets
    def _feature_spec(self) -> dict:
        """What the k-means clusters: MFCC, or layer `label_layer` of `label_model`."""
        cfg = self.cfg
        if cfg.kmeans_model:
            try:
                meta = KMeans.load(cfg.kmeans_model).metadata
            except (OSError, ValueError, RuntimeError) as e:
                raise ConfigError(f"kmeans_model '{cfg.kmeans_model}' cannot be loaded: {e}") from None
            if meta.get("features") == "mfcc":
                return {"features": "mfcc", "normalized": bool(meta.get("normalized", cfg.do_normalize))}
            label_model = cfg.label_model or meta.get("label_model")
            if not label_model:
                raise ConfigError(f"kmeans_model '{cfg.kmeans_model}' clusters model features; set label_model to the model it was fit on.")
            return {"features": "hubert", "label_model": _abs(label_model), "label_layer": int(meta.get("label_layer", cfg.label_layer))}
        if cfg.iteration == 1:
            return {"features": "mfcc", "normalized": cfg.do_normalize}
        return {"features": "hubert", "label_model": _abs(cfg.label_model), "label_layer": cfg.label_layer}

    def _feature_fn(self, spec: dict):
        """(wave -> (T, D) features, (window, hop) geometry of those frames) for the spec."""
        sr = self.cfg.sampling_rate
        if spec["features"] == "mfcc":
            # MFCCs of the waveform as the model sees it: per-file normalized when the model input is
            # normalized, so c0 (log energy, the largest MFCC) is relative to the file's level as the model's is.
            if spec["normalized"]:
                return (lambda wave: mfcc_features(normalize(wave), sr)), mfcc_geometry(sr)
            return (lambda wave: mfcc_features(wave, sr)), mfcc_geometry(sr)
        from transformers import AutoConfig, HubertModel, Wav2Vec2FeatureExtractor

        path = spec["label_model"]
        try:
            model_type = AutoConfig.from_pretrained(path).model_type
            if model_type != "hubert":
                raise ConfigError(f"label_model '{path}' is a {model_type} model; iteration >= 2 takes features from a "
                                  "HubertModel (the previous iteration's output folder).")
            model = HubertModel.from_pretrained(path)
        except (OSError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"label_model '{path}' cannot be loaded as a HubertModel: {e}") from None
        try:
            model = truncate_encoder(model, spec["label_layer"]).to(self.device).eval()
        except ValueError as e:
            raise ConfigError(f"label_model '{path}': {e}.") from None
        do_normalize = True
        if (Path(path) / "preprocessor_config.json").is_file():
            do_normalize = Wav2Vec2FeatureExtractor.from_pretrained(path).do_normalize
        chunk = self.max_samples
        layer = spec["label_layer"]
        return ((lambda wave: hubert_layer_features(model, normalize(wave) if do_normalize else wave, layer, chunk).half()),
                conv_geometry(model.config.conv_kernel, model.config.conv_stride))

    def _targets(self, train, validation, write: bool):
        cfg = self.cfg
        out = Path(cfg.output_dir)
        spec = self._feature_spec()
        splits = {"train": train, "validation": validation}
        files_sha1 = _files_sha1(train)
        fit_spec = {**spec, "iteration": cfg.iteration, "num_clusters": cfg.num_clusters, "kmeans_fraction": cfg.kmeans_fraction,
                    "kmeans_batch_size": cfg.kmeans_batch_size, "kmeans_iterations": cfg.kmeans_iterations, "seed": cfg.seed,
                    "sampling_rate": cfg.sampling_rate, "train_files_sha1": files_sha1}
        features, geometry = None, None
        fit_feats: dict[int, torch.Tensor] = {}

        kmeans = None
        if cfg.kmeans_model:
            kmeans = KMeans.load(cfg.kmeans_model)
            if kmeans.num_clusters != cfg.num_clusters:
                logger.warning("kmeans_model has %d clusters (num_clusters=%d ignored).", kmeans.num_clusters, cfg.num_clusters)
            logger.info("Using the k-means model %s (%d clusters).", cfg.kmeans_model, kmeans.num_clusters)
        elif (out / KMEANS_FILE).is_file():
            saved = KMeans.load(out / KMEANS_FILE)
            if saved.metadata.get("fit_spec") == fit_spec:
                kmeans = saved
                logger.info("Reusing %s (fit with the same settings).", out / KMEANS_FILE)
        if kmeans is None:
            features, geometry = self._feature_fn(spec)
            kmeans, fit_feats = self._fit(train, features, spec, fit_spec)
        if write:
            out.mkdir(parents=True, exist_ok=True)
            kmeans.save(out / KMEANS_FILE)

        key = json.dumps({**spec, "kmeans_sha1": kmeans.fingerprint(), "conv_kernel": self.conv_kernel,
                          "conv_stride": self.conv_stride, "sampling_rate": cfg.sampling_rate}, sort_keys=True)
        cached = _read_labels(out / LABELS_FILE, key, splits)
        if cached is not None:
            logger.info("Reusing the frame labels in %s.", out / LABELS_FILE)
            labels = cached
        else:
            if features is None:
                features, geometry = self._feature_fn(spec)
            labels = {name: self._label_split(ds, name, features, geometry, kmeans, fit_feats if name == "train" else {})
                      for name, ds in splits.items()}
            if write:
                _write_labels(out / LABELS_FILE, key, splits, labels)
        self.label_stats = {name: cluster_usage(lab[0], kmeans.num_clusters) if lab[0] is not None else None
                            for name, lab in labels.items()}
        for name, s in self.label_stats.items():
            if s is not None:
                logger.info("%s targets: %d of %d clusters used, entropy %.2f bits (%.0f%% of uniform), largest cluster %.1f%% of frames.",
                            name, s["clusters_used"], kmeans.num_clusters, s["entropy_bits"], 100 * s["normalized_entropy"],
                            100 * s["largest_cluster_fraction"])
        if write:
            stats = {name: None if s is None else {**s, "histogram": s["histogram"].tolist()} for name, s in self.label_stats.items()}
            (out / STATS_FILE).write_text(json.dumps({"kmeans": kmeans.metadata, **stats}, indent=1, default=str))
        return kmeans, {name: (lab if lab[0] is not None else (None, None)) for name, lab in labels.items()}

    def _fit(self, train, features, spec: dict, fit_spec: dict):
        """Fit k-means on whole files drawn (seeded) until `kmeans_fraction` of the training duration."""
        cfg = self.cfg
        order = np.random.default_rng([cfg.seed, 1]).permutation(len(train))
        cum = np.cumsum(train.lengths[order])
        n_files = int(np.searchsorted(cum, cfg.kmeans_fraction * cum[-1])) + 1
        chosen = sorted(order[: min(n_files, len(train))].tolist())
        logger.info("k-means: computing %s features of %d training files (%.2f h, %.0f%% of the training audio).",
                    spec["features"] if spec["features"] == "mfcc" else f"layer-{spec['label_layer']}",
                    len(chosen), train.lengths[chosen].sum() / cfg.sampling_rate / 3600, 100 * train.lengths[chosen].sum() / cum[-1])
        fit_feats = {}
        for n, i in enumerate(chosen):
            fit_feats[i] = features(train.decode(i))
            _progress("k-means features", n + 1, len(chosen))
        x = torch.cat(list(fit_feats.values()))
        if x.shape[0] < cfg.num_clusters:
            raise ConfigError(f"k-means with {cfg.num_clusters} clusters needs at least as many frames; the fit set has {x.shape[0]}. "
                              "Raise kmeans_fraction or lower num_clusters.")
        logger.info("k-means: fitting %d clusters on %d frames of dimension %d (device %s).", cfg.num_clusters, x.shape[0], x.shape[1], self.device)
        meta = {**{k: v for k, v in spec.items()}, "fit_spec": fit_spec, "iteration": cfg.iteration}
        kmeans = fit_kmeans(x, cfg.num_clusters, batch_size=cfg.kmeans_batch_size, max_passes=cfg.kmeans_iterations,
                            seed=cfg.seed, device=self.device, metadata=meta)
        logger.info("k-means: %d steps, inertia %.4g.", kmeans.metadata["steps"], kmeans.metadata["inertia"])
        return kmeans, fit_feats

    def _label_split(self, ds, name: str, features, geometry, kmeans: KMeans, known: dict):
        """(concatenated int labels at model frames, offsets (n + 1,)) for every file of a split."""
        if ds is None:
            return None, None
        dtype = np.int16 if kmeans.num_clusters <= np.iinfo(np.int16).max else np.int32
        pieces, offsets = [], [0]
        for i in range(len(ds)):
            feats = known.get(i)
            if feats is None:
                feats = features(ds.decode(i))
            if feats.shape[1] != kmeans.dim:
                raise ConfigError(f"The k-means model clusters {kmeans.dim}-dim features but these features have {feats.shape[1]} dims.")
            frame = kmeans.predict(feats, device=self.device).numpy()
            aligned = align_labels(frame, geometry, int(ds.lengths[i]), self.conv_kernel, self.conv_stride)
            pieces.append(aligned.astype(dtype))
            offsets.append(offsets[-1] + aligned.size)
            _progress(f"{name} labels", i + 1, len(ds))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype), np.asarray(offsets, dtype=np.int64)

    # ------------------------------------------------------------------ loop hooks
    def batch_plan(self, epoch: int, seed: int) -> list[list[int]]:
        return audio_batch_plan(self.train_dataset.lengths, batch_size=self.cfg.per_device_train_batch_size,
                                max_batch_seconds=self.cfg.max_batch_seconds, sampling_rate=self.cfg.sampling_rate,
                                max_length=self.max_samples, seed=seed, epoch=epoch)

    def eval_plan(self) -> list[list[int]]:
        return audio_batch_plan(self.eval_dataset.lengths, batch_size=self.cfg.per_device_eval_batch_size,
                                max_batch_seconds=self.cfg.max_batch_seconds, sampling_rate=self.cfg.sampling_rate,
                                max_length=self.max_samples, shuffle=False)

    def on_update(self, step: int, total_steps: int) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"kmeans_sha1": self.kmeans.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("kmeans_sha1")
        if saved is not None and saved != self.kmeans.fingerprint():
            raise ConfigError(f"The checkpoint was trained on other k-means targets (centroids {saved}, now "
                              f"{self.kmeans.fingerprint()}): resuming would change the targets mid-run.")

    def enable_gradient_checkpointing(self) -> None:
        self.model.hubert.gradient_checkpointing_enable()

    def eval_summary(self, metrics: dict) -> dict:
        metrics["eval_chance_accuracy"] = 1.0 / self.num_clusters
        stats = self.label_stats.get("validation")
        if stats is not None:
            metrics["eval_majority_accuracy"] = stats["largest_cluster_fraction"]
        return metrics

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        from safetensors.torch import save_file
        from transformers import Wav2Vec2FeatureExtractor

        from hfssl.hub import write_model_card

        cfg, model = self.cfg, self.model
        out = Path(output_dir)
        model.hubert.save_pretrained(output_dir)
        head = {"final_proj.weight": model.final_proj.weight, "final_proj.bias": model.final_proj.bias,
                "label_embeddings": model.label_embeddings}
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(out / HEAD_FILE), metadata={
            "num_clusters": str(self.num_clusters), "final_dim": str(cfg.final_dim), "logit_temperature": str(cfg.logit_temperature),
            "kmeans_sha1": self.kmeans.fingerprint(), "format": "hfssl-hubert-head-1"})
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=cfg.sampling_rate, padding_value=0.0, do_normalize=cfg.do_normalize,
                                 return_attention_mask=model.hubert.config.feat_extract_norm == "layer").save_pretrained(output_dir)
        if not (out / KMEANS_FILE).is_file():
            self.kmeans.save(out / KMEANS_FILE)
        spec = self._feature_spec()
        targets = ("39-dim MFCC (13 + deltas + delta-deltas) at 100 Hz" if spec["features"] == "mfcc"
                   else f"layer {spec['label_layer']} of {spec['label_model']}")
        stats = self.label_stats.get("train") or {}
        crop_frames = int(num_frames(self.max_samples, self.conv_kernel, self.conv_stride))
        masked = expected_masked_fraction(cfg.mask_time_prob, cfg.mask_time_length, crop_frames, min_masks=cfg.mask_time_min_masks)
        n_params = sum(p.numel() for p in model.hubert.parameters())
        hours = self.train_dataset.audio.hours
        write_model_card(output_dir, objective=f"HuBERT masked prediction, iteration {cfg.iteration}", pipeline_tag="feature-extraction",
                         summary=summary, tags=["hubert", "audio", "speech", "self-supervised"], config=cfg, details={
            "Base": cfg.model_name_or_path or f"from scratch (HubertModel, {n_params:,} parameters)",
            "Iteration": str(cfg.iteration),
            "Targets": f"k-means, {self.num_clusters} clusters, on {targets}" + (f" (k-means from {cfg.kmeans_model})" if cfg.kmeans_model else ""),
            "Cluster usage (train)": (f"{stats['clusters_used']}/{self.num_clusters} clusters used, entropy {stats['entropy_bits']:.2f} bits, "
                                      f"largest cluster {100 * stats['largest_cluster_fraction']:.1f}% of frames") if stats else "n/a",
            "Training audio": (f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min") + f" in {len(self.train_dataset)} files",
            "Hours of audio seen": f"{summary.get('audio_seconds_seen', 0.0) / 3600:.3f}",
            "Masking": f"spans of {cfg.mask_time_length} frames, mask_time_prob {cfg.mask_time_prob} (~{100 * masked:.0f}% of the frames of a "
                       f"{cfg.max_duration_in_seconds:g} s crop masked)",
            "Loss": f"masked weight {cfg.masked_loss_weight}, unmasked weight {cfg.unmasked_loss_weight}, cosine logits / {cfg.logit_temperature}",
            "Files": f"HubertModel weights (HubertModel/AutoModel.from_pretrained), {HEAD_FILE} (projection + cluster embeddings), "
                     f"{KMEANS_FILE} (k-means for the next iteration's labels or for unit discovery)",
        }, datasets=[cfg.dataset_name] if cfg.dataset_name else None)


# ----------------------------------------------------------------------------------- helpers


def _abs(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    return str(Path(path).resolve()) if Path(path).exists() else path


def _files_sha1(ds) -> str:
    h = hashlib.sha1()
    for row, n in zip(ds.rows, ds.lengths):
        h.update(f"{row['path']}\t{int(n)}\n".encode())
    return h.hexdigest()[:16]


def _progress(what: str, done: int, total: int) -> None:
    step = max(1, total // 10)
    if done == total or done % step == 0:
        logger.info("%s: %d/%d files", what, done, total)


def _read_labels(path: Path, key: str, splits: dict):
    """Cached labels when `path` holds them for this key and exactly these files, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            out = {}
            for name, ds in splits.items():
                if ds is None:
                    out[name] = (None, None)
                    continue
                if f"{name}_paths" not in z or z[f"{name}_paths"].tolist() != [r["path"] for r in ds.rows]:
                    return None
                out[name] = (z[f"{name}_labels"], z[f"{name}_offsets"])
            return out
    except (OSError, ValueError, KeyError):
        return None


def _write_labels(path: Path, key: str, splits: dict, labels: dict) -> None:
    arrays = {"key": np.asarray(key)}
    for name, ds in splits.items():
        if ds is None:
            continue
        arrays[f"{name}_labels"], arrays[f"{name}_offsets"] = labels[name]
        arrays[f"{name}_paths"] = np.asarray([r["path"] for r in ds.rows])
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
