"""HuBERT's targets for one run: fit (or reuse) k-means on features of a share of the training audio,
label every training and validation file, align the labels to the model's frames, and cache both.

Written before training, and reused on resume / by the other processes when their settings match:

* `output_dir/kmeans.pt`: centroids + metadata (`kmeans.KMeans`); `kmeans_model` reuses one.
* `output_dir/labels.npz`: per split, all files' frame labels concatenated (`{split}_labels`),
  `{split}_offsets` (n + 1) and `{split}_paths`, plus `key` (what they were computed with).
* `output_dir/label_stats.json`: cluster usage (histogram, clusters used, entropy) per split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hfssl.data.audio.batching import normalize
from hfssl.errors import ConfigError
from hfssl.objectives.hubert.features import (
    MFCC_FEATURES,
    align_labels,
    conv_geometry,
    hubert_layer_features,
    mfcc_geometry,
    truncate_encoder,
)
from hfssl.objectives.hubert.kmeans import KMeans, cluster_usage, fit_kmeans

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.npz"
KMEANS_FILE = "kmeans.pt"
STATS_FILE = "label_stats.json"
DEGENERATE_CLUSTER_SHARE = 0.9  # of the training frames in one cluster


class HubertTargets:
    """k-means targets for the model whose conv encoder has `conv_kernel` / `conv_stride`."""

    def __init__(self, cfg, conv_kernel, conv_stride, device):
        self.cfg, self.conv_kernel, self.conv_stride, self.device = cfg, tuple(conv_kernel), tuple(conv_stride), device
        self.label_stats: dict = {}

    def feature_spec(self) -> dict:
        """What the k-means clusters: MFCC, or layer `label_layer` of `label_model`."""
        cfg = self.cfg
        if cfg.kmeans_model:
            try:
                meta = KMeans.load(cfg.kmeans_model).metadata
            except (OSError, ValueError, RuntimeError) as e:
                raise ConfigError(f"kmeans_model '{cfg.kmeans_model}' cannot be loaded: {e}") from None
            if meta.get("features") == "mfcc":
                # k-means models saved before mfcc_type existed clustered torchaudio MFCCs
                return {"features": "mfcc", "normalized": bool(meta.get("normalized", cfg.do_normalize)),
                        "mfcc_type": meta.get("mfcc_type", "torchaudio")}
            label_model = cfg.label_model or meta.get("label_model")
            if not label_model:
                raise ConfigError(f"kmeans_model '{cfg.kmeans_model}' clusters model features; set label_model to the model it was fit on.")
            return {"features": "hubert", "label_model": _abs(label_model), "label_layer": int(meta.get("label_layer", cfg.label_layer)),
                    "chunk_seconds": cfg.label_chunk_seconds}
        if cfg.iteration == 1:
            return {"features": "mfcc", "normalized": cfg.do_normalize, "mfcc_type": cfg.mfcc_type}
        return {"features": "hubert", "label_model": _abs(cfg.label_model), "label_layer": cfg.label_layer,
                "chunk_seconds": cfg.label_chunk_seconds}

    def _feature_fn(self, spec: dict):
        """(wave -> (T, D) features, (window, hop) geometry of those frames) for the spec."""
        sr = self.cfg.sampling_rate
        if spec["features"] == "mfcc":
            # MFCCs of the waveform as the model sees it: per-file normalized when the model input is
            # normalized, so c0 (log energy, the largest MFCC) is relative to the file's level as the model's is.
            mfcc = MFCC_FEATURES[spec["mfcc_type"]]
            if spec["normalized"]:
                return (lambda wave: mfcc(normalize(wave), sr)), mfcc_geometry(sr)
            return (lambda wave: mfcc(wave, sr)), mfcc_geometry(sr)
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
        chunk = int(round(self.cfg.label_chunk_seconds * self.cfg.sampling_rate))  # whole files up to this length
        layer = spec["label_layer"]
        return ((lambda wave: hubert_layer_features(model, normalize(wave) if do_normalize else wave, layer, chunk).half()),
                conv_geometry(model.config.conv_kernel, model.config.conv_stride))

    def build(self, train, validation, write: bool):
        """(k-means, {split: (labels, offsets)}): fit or reuse k-means, compute or reuse the frame labels
        (cached in output_dir when `write`); sets `label_stats` (cluster usage per split)."""
        cfg = self.cfg
        out = Path(cfg.output_dir)
        spec = self.feature_spec()
        splits = {"train": train, "validation": validation}
        files_sha1 = _files_sha1(train)
        fit_spec = {**spec, "iteration": cfg.iteration, "num_clusters": cfg.num_clusters, "kmeans_fraction": cfg.kmeans_fraction,
                    "kmeans_batch_size": cfg.kmeans_batch_size, "kmeans_iterations": cfg.kmeans_iterations, "kmeans_inits": cfg.kmeans_inits,
                    "kmeans_max_no_improvement": cfg.kmeans_max_no_improvement, "seed": cfg.seed,
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
                # Targets that are nearly all one cluster (e.g. a corpus of silence) teach nothing: said as a warning.
                degenerate = name == "train" and s["largest_cluster_fraction"] > DEGENERATE_CLUSTER_SHARE
                (logger.warning if degenerate else logger.info)(
                    "%s targets: %d of %d clusters used, entropy %.2f bits (%.0f%% of uniform), largest cluster %.1f%% of frames.%s",
                    name, s["clusters_used"], kmeans.num_clusters, s["entropy_bits"], 100 * s["normalized_entropy"],
                    100 * s["largest_cluster_fraction"],
                    " Nearly every frame has the same target: check that the audio is speech (not silence or noise) and "
                    "the k-means settings." if degenerate else "")
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
                            seed=cfg.seed, max_no_improvement=cfg.kmeans_max_no_improvement, n_init=cfg.kmeans_inits,
                            device=self.device, metadata=meta)
        m = kmeans.metadata
        logger.info("k-means: best of %d initializations (#%d, init inertia %.4g), %d steps, %d empty clusters re-seeded, inertia %.4g.",
                    m["n_init"], m["chosen_init"], m["init_inertias"][m["chosen_init"]], m["steps"], m["reseeded_clusters"], m["inertia"])
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
