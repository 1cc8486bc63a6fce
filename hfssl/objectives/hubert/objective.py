"""HuBERT: masked prediction of k-means cluster targets (Hsu et al., 2021), on transformers' HubertModel.

One stage (one iteration) runs as one command: the objective first builds the targets (`labels.py`:
iteration 1 clusters 39-dim MFCCs at 100 Hz; iteration >= 2 clusters the hidden states of layer
`label_layer` of `label_model`, the previous iteration's output folder), then the loop trains on them.

Model (`model.py`): `HubertModel` (fresh from `config_name`/`config_overrides`, default `HubertConfig()` =
HuBERT base, or `model_name_or_path`) + `final_proj` (hidden -> final_dim) + `label_embeddings` (K, final_dim).
logits = cos(final_proj(h_t), e_c) / logit_temperature over all K clusters (fairseq's HuBERT logits).
The collator's span masks go to HubertModel as `mask_time_indices` (it puts `masked_spec_embed` there).
Gradients into the conv feature encoder are scaled by `feature_grad_scale` (unset: fairseq's 0.1 for the group-norm
base layout, 1.0 for the layer-norm large one).

Loss (`loss.py`): masked_loss_weight * sum of CE over masked real frames + unmasked_loss_weight * sum of
CE over unmasked real frames + feature_penalty_weight * (mean squared conv features) * targets (fairseq's
features_pen, weight 10 for base); num_targets (`count_targets`) counts the frames that carry loss
(fairseq's sample_size).

Output folder: HubertModel weights + config (`HubertModel.from_pretrained` / `AutoModel`), the head in
`hubert_head.safetensors` (final_proj.weight, final_proj.bias, label_embeddings; metadata: num_clusters,
final_dim, logit_temperature, kmeans sha1), `preprocessor_config.json` (Wav2Vec2FeatureExtractor),
`kmeans.pt`, `label_stats.json`, README.md model card.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from hfssl.attention import use_attn_implementation
from hfssl.collators.speech import AudioPretrainingCollator
from hfssl.data.audio.geometry import num_frames, receptive_field
from hfssl.data.audio.splits import build_audio_splits
from hfssl.errors import ConfigError
from hfssl.masking.spans import expected_masked_fraction
from hfssl.objectives.hubert.config import HubertPretrainConfig
from hfssl.objectives.hubert.labels import KMEANS_FILE, HubertTargets, LabeledAudio
from hfssl.objectives.hubert.loss import count_targets
from hfssl.objectives.hubert.model import HubertForMaskedPrediction
from hfssl.objectives.speech_base import (FEATURE_GRAD_SCALE_BY_LAYOUT, SpeechObjective, load_initial_weights, matching_head,
                                          resolve_layout_defaults, speech_model_config)

logger = logging.getLogger(__name__)

HEAD_FILE = "hubert_head.safetensors"


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


class HubertObjective(SpeechObjective):
    name = "hubert"

    def __init__(self, cfg: HubertPretrainConfig, accelerator=None):
        super().__init__(cfg)
        self.device = accelerator.device if accelerator is not None else torch.device("cpu")
        main = accelerator is None or accelerator.is_main_process
        hubert = self._model()
        self.conv_kernel, self.conv_stride = tuple(hubert.config.conv_kernel), tuple(hubert.config.conv_stride)
        min_samples = receptive_field(self.conv_kernel, self.conv_stride)
        self.check_crop_holds_a_span(self.conv_kernel, self.conv_stride)
        train, validation, self.data_report = build_audio_splits(cfg, cfg.output_dir if main else None, min_samples,
                                                                  accelerator)
        ctx = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
        with ctx:  # the main process builds k-means and labels; the others then read its files
            targets = HubertTargets(cfg, self.conv_kernel, self.conv_stride, self.device)
            self.kmeans, labels = targets.build(train, validation, write=main)
        self.label_stats, self.feature_spec = targets.label_stats, targets.feature_spec()
        self.num_clusters = self.kmeans.num_clusters
        self.model = HubertForMaskedPrediction(hubert, self.num_clusters, cfg.final_dim, cfg.logit_temperature,
                                               cfg.masked_loss_weight, cfg.unmasked_loss_weight, cfg.feature_grad_scale,
                                               cfg.feature_penalty_weight)
        self._maybe_load_head()
        self.train_dataset = LabeledAudio(train, *labels["train"])
        self.eval_dataset = LabeledAudio(validation, *labels["validation"]) if validation is not None else None
        self.collator = HubertCollator(
            AudioPretrainingCollator(self.conv_kernel, self.conv_stride, max_samples=self.max_samples, do_normalize=cfg.do_normalize,
                                     return_attention_mask=hubert.config.feat_extract_norm == "layer",
                                     mask_prob=cfg.mask_time_prob, mask_length=cfg.mask_time_length,
                                     min_masks=cfg.mask_time_min_masks, num_negatives=0, sampling_rate=cfg.sampling_rate),
            cfg.masked_loss_weight, cfg.unmasked_loss_weight)

    # ------------------------------------------------------------------ model
    def _model(self):
        from transformers import HubertConfig, HubertModel

        config = speech_model_config(self.cfg, "hubert", HubertConfig())  # default: HuBERT base
        resolve_layout_defaults(self.cfg, config.feat_extract_norm, {"feature_grad_scale": FEATURE_GRAD_SCALE_BY_LAYOUT})
        if self.cfg.initial_weights():
            model = load_initial_weights(HubertModel, self.cfg, config)
        else:
            model = HubertModel(config)
        use_attn_implementation(model, self.cfg.attn_implementation, self.cfg.mixed_precision)
        return model

    def _maybe_load_head(self) -> None:
        """Continuing from an hfssl HuBERT folder with the same targets: also take its head."""
        path = self.cfg.initial_weights()
        state = matching_head(path, HEAD_FILE, "kmeans_sha1", self.kmeans.fingerprint())
        if state is None:
            return
        self.model.final_proj.load_state_dict({"weight": state["final_proj.weight"], "bias": state["final_proj.bias"]})
        self.model.label_embeddings.data.copy_(state["label_embeddings"])
        logger.info("Reusing the projection head and cluster embeddings of %s (same k-means targets).", path)

    # ------------------------------------------------------------------ loop hooks
    def state_dict(self) -> dict:
        return {"kmeans_sha1": self.kmeans.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("kmeans_sha1")
        if saved is not None and saved != self.kmeans.fingerprint():
            raise ConfigError(f"The checkpoint was trained on other k-means targets (centroids {saved}, now "
                              f"{self.kmeans.fingerprint()}): resuming would change the targets mid-run.")

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
        spec = self.feature_spec
        targets = (f"39-dim {'Kaldi (fairseq)' if spec['mfcc_type'] == 'kaldi' else 'torchaudio.transforms'} MFCC "
                   "(13 + deltas + delta-deltas) at 100 Hz" if spec["features"] == "mfcc"
                   else f"layer {spec['label_layer']} of {spec['label_model']}")
        stats = self.label_stats.get("train") or {}
        crop_frames = int(num_frames(self.max_samples, self.conv_kernel, self.conv_stride))
        masked = expected_masked_fraction(cfg.mask_time_prob, cfg.mask_time_length, crop_frames, min_masks=cfg.mask_time_min_masks)
        n_params = sum(p.numel() for p in model.hubert.parameters())
        hours = self.train_dataset.audio.hours
        write_model_card(output_dir, objective=f"HuBERT masked prediction, iteration {cfg.iteration}", pipeline_tag="feature-extraction",
                         summary=summary, tags=["hubert", "audio", "speech", "self-supervised"], config=cfg, details={
            "Base": cfg.initial_weights() or f"from scratch (HubertModel, {n_params:,} parameters)",
            "Iteration": str(cfg.iteration),
            "Targets": f"k-means, {self.num_clusters} clusters, on {targets}" + (f" (k-means from {cfg.kmeans_model})" if cfg.kmeans_model else
                       f" (best of {self.kmeans.metadata.get('n_init', 1)} k-means++ initializations, "
                       f"{self.kmeans.metadata.get('reseeded_clusters', 0)} empty clusters re-seeded)"),
            "Cluster usage (train)": (f"{stats['clusters_used']}/{self.num_clusters} clusters used, entropy {stats['entropy_bits']:.2f} bits, "
                                      f"largest cluster {100 * stats['largest_cluster_fraction']:.1f}% of frames") if stats else "n/a",
            "Training audio": (f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min") + f" in {len(self.train_dataset)} files",
            "Hours of audio seen": f"{summary.get('audio_seconds_seen', 0.0) / 3600:.3f}",
            "Masking": f"spans of {cfg.mask_time_length} frames, mask_time_prob {cfg.mask_time_prob} (~{100 * masked:.0f}% of the frames of a "
                       f"{cfg.max_duration_in_seconds:g} s crop masked)",
            "Loss": f"masked weight {cfg.masked_loss_weight}, unmasked weight {cfg.unmasked_loss_weight}, cosine logits / {cfg.logit_temperature}, "
                    f"feature penalty weight {cfg.feature_penalty_weight}, feature grad scale {cfg.feature_grad_scale}",
            "Files": f"HubertModel weights (HubertModel/AutoModel.from_pretrained), {HEAD_FILE} (projection + cluster embeddings), "
                     f"{KMEANS_FILE} (k-means for the next iteration's labels or for unit discovery)",
        }, datasets=[cfg.dataset_name] if cfg.dataset_name else None)
