"""wav2vec 2.0 masked contrastive pretraining (Baevski et al., 2020) on `Wav2Vec2ForPreTraining`.

Masks and negatives are drawn in the collator from the loop's per-batch seed, so resume is exact. The
Gumbel temperature schedule `max(end, start * decay**update)` is part of the resumable state. A codebook
collapse (some group's perplexity near its minimum for `collapse_patience` updates) warns, stops, or
rolls back to the last healthy checkpoint (`on_collapse`). Model: `model.py`; loss terms: `loss.py`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

from hfssl.attention import use_attn_implementation
from hfssl.collators.speech import AudioPretrainingCollator
from hfssl.data.audio.geometry import receptive_field
from hfssl.data.audio.splits import build_audio_splits
from hfssl.data.batching import batch_seed
from hfssl.errors import ConfigError
from hfssl.masking.spans import expected_masked_fraction, span_mask_stats
from hfssl.objectives.collapse import CollapseGuard
from hfssl.objectives.speech_base import SpeechObjective, load_initial_weights, resolve_layout_defaults, speech_model_config
from hfssl.objectives.wav2vec2.config import LAYOUT_DEFAULTS, Wav2Vec2PretrainConfig
from hfssl.objectives.wav2vec2.loss import gumbel_temperature
from hfssl.objectives.wav2vec2.model import Wav2Vec2Pretraining

logger = logging.getLogger(__name__)

# Reference values of the paper at mask_prob 0.65, mask_length 10 (section 4.2).
PAPER_MASKED_FRACTION = 0.49
PAPER_MEAN_SPAN = 14.7
COLLAPSE_FACTOR = 1.5  # a group whose perplexity stays below 1.5x its minimum (1 code) has collapsed


class Wav2Vec2Objective(SpeechObjective):
    name = "wav2vec2"

    def __init__(self, cfg: Wav2Vec2PretrainConfig, accelerator=None):
        super().__init__(cfg)
        self.main = accelerator is None or accelerator.is_main_process
        pretraining = self._model()
        config = pretraining.config
        self.model = Wav2Vec2Pretraining(pretraining, cfg.feature_grad_scale, cfg.feature_penalty_weight,
                                         cfg.diversity_loss_weight, cfg.contrastive_logits_temperature,
                                         gumbel_temperature(cfg, 0))
        self.uses_attention_mask = config.feat_extract_norm == "layer"
        self.feature_extractor = Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=cfg.sampling_rate, padding_value=0.0, do_normalize=cfg.do_normalize,
            return_attention_mask=self.uses_attention_mask)
        self.min_samples = receptive_field(config.conv_kernel, config.conv_stride)
        self.train_dataset, self.eval_dataset, self.data_report = build_audio_splits(
            cfg, cfg.output_dir if self.main else None, self.min_samples, accelerator)
        if cfg.streaming and accelerator is not None and accelerator.num_processes > 1:
            from datasets.distributed import split_dataset_by_node

            rank = accelerator.process_index
            self.train_dataset.stream = split_dataset_by_node(self.train_dataset.stream, rank, accelerator.num_processes)
            if cfg.on_bad_audio == "skip":  # each process lists what it skips in its own file
                self.train_dataset.report_path = str(Path(cfg.output_dir) / f"skipped_audio_stream.rank{rank}.tsv")
        self.collator = AudioPretrainingCollator(
            config.conv_kernel, config.conv_stride, max_samples=self.max_samples, do_normalize=cfg.do_normalize,
            return_attention_mask=self.uses_attention_mask, mask_prob=cfg.mask_time_prob, mask_length=cfg.mask_time_length,
            min_masks=cfg.mask_time_min_masks, num_negatives=cfg.num_negatives, sampling_rate=cfg.sampling_rate)
        self._temperature = gumbel_temperature(cfg, 0)
        self.guard = CollapseGuard(cfg)
        self._last_row: dict = {}
        self.preflight = self._preflight()

    # ------------------------------------------------------------------ build
    def _model(self) -> Wav2Vec2ForPreTraining:
        cfg = self.cfg
        config = speech_model_config(cfg, "wav2vec2", Wav2Vec2Config())
        if config.feat_extract_norm not in ("group", "layer"):
            raise ConfigError(f"feat_extract_norm must be 'group' or 'layer', got '{config.feat_extract_norm}'.")
        resolve_layout_defaults(cfg, config.feat_extract_norm, LAYOUT_DEFAULTS)
        config.num_negatives = cfg.num_negatives
        config.contrastive_logits_temperature = cfg.contrastive_logits_temperature
        config.diversity_loss_weight = cfg.diversity_loss_weight
        if cfg.model_name_or_path:
            model = load_initial_weights(Wav2Vec2ForPreTraining, cfg, config)
        else:
            model = Wav2Vec2ForPreTraining(config)
        model.config.architectures = ["Wav2Vec2ForPreTraining"]
        use_attn_implementation(model, cfg.attn_implementation, cfg.mixed_precision)
        logger.info("wav2vec2 %s: %s feature encoder norm%s, %d layers x %d, %.1fM parameters, %dx%d codes, %d negatives, "
                    "feature grad scale %s, penalty %s, diversity %s, Gumbel %s -> %s (decay %s).",
                    "continued from " + cfg.model_name_or_path if cfg.model_name_or_path else "from scratch",
                    config.feat_extract_norm, ", stable layer norm" if config.do_stable_layer_norm else "",
                    config.num_hidden_layers, config.hidden_size, sum(p.numel() for p in model.parameters()) / 1e6,
                    config.num_codevector_groups, config.num_codevectors_per_group, cfg.num_negatives, cfg.feature_grad_scale,
                    cfg.feature_penalty_weight, cfg.diversity_loss_weight, cfg.gumbel_temperature_start,
                    cfg.gumbel_temperature_end, cfg.gumbel_temperature_decay)
        return model

    def _preflight(self, max_batches: int = 20) -> dict:
        """Masking statistics on the real training lengths, with the exact masks of the first batches.

        A stream is not read before training: its statistics come from the validation files, or,
        without them, from full max_duration_in_seconds crops."""
        cfg = self.cfg
        if cfg.streaming:
            bs = cfg.per_device_train_batch_size
            if self.eval_dataset is not None:
                lengths, source = self.eval_dataset.lengths, "validation files (the training stream is not read before training)"
            else:
                lengths, source = np.full(bs * max_batches, self.max_samples), "max_duration_in_seconds crops (streaming, no validation files)"
            plan = [list(range(i, min(i + bs, len(lengths)))) for i in range(0, len(lengths), bs)][:max_batches]
        else:
            lengths, source = self.train_dataset.lengths, "training files"
            plan = self.batch_plan(0, cfg.seed)[:max_batches]
        masked = real = runs = utts = no_mask = 0
        few_masked = 0
        per_utt_frames = []
        for g, idx in enumerate(plan):
            frame_lengths, mask = self.collator.masks_for_lengths(np.asarray(lengths)[idx].tolist(), batch_seed(cfg.seed, 0, g))
            stats = span_mask_stats(mask, frame_lengths)
            masked += int(mask.sum())
            real += int(frame_lengths.sum())
            runs += stats["num_spans"]
            per_utt = mask.sum(1)
            utts += len(idx)
            no_mask += int((per_utt == 0).sum())
            few_masked += int((per_utt - 1 < cfg.num_negatives).sum())
            per_utt_frames += frame_lengths.tolist()
        mean_frames = float(np.mean(per_utt_frames)) if per_utt_frames else 0.0
        report = {
            "batches": len(plan), "utterances": utts,
            "mask_time_prob": cfg.mask_time_prob, "mask_time_length": cfg.mask_time_length, "mask_time_min_masks": cfg.mask_time_min_masks,
            "masked_fraction": masked / real if real else 0.0,
            "mean_span_length": masked / runs if runs else 0.0,
            "expected_masked_fraction": expected_masked_fraction(cfg.mask_time_prob, cfg.mask_time_length, int(round(mean_frames)),
                                                                 min_masks=cfg.mask_time_min_masks) if mean_frames else 0.0,
            "paper_reference": {"masked_fraction": PAPER_MASKED_FRACTION, "mean_span_length": PAPER_MEAN_SPAN,
                                "at": "mask_time_prob 0.65, mask_time_length 10, 15.6 s crops"},
            "mean_frames_per_utterance": mean_frames,
            "utterances_without_mask": no_mask,
            "utterances_with_fewer_masked_frames_than_negatives": few_masked,
            "num_negatives": cfg.num_negatives,
            "lengths_from": source,
        }
        if not cfg.streaming:
            report.update(train_files=len(self.train_dataset), train_hours=self.train_dataset.hours)
        logger.info("Preflight (first %d batches of %s): %.1f%% of frames masked, mean masked run %.1f frames "
                    "(paper at 0.65/10: ~49%%, ~14.7); %d of %d utterances have fewer than %d other masked frames to draw "
                    "negatives from (drawn with repetition).", len(plan), source, 100 * report["masked_fraction"], report["mean_span_length"],
                    few_masked, utts, cfg.num_negatives)
        if utts and no_mask == utts:
            # Nothing to predict in any batch: training would only skip updates until it stops with "no targets".
            span_s = (self.min_samples + (cfg.mask_time_length - 1) * self.collator.total_stride) / cfg.sampling_rate
            raise ConfigError(
                f"No utterance gets a masked span ({no_mask} of {utts} in the preflight of {source}): the longest gives "
                f"{max(per_utt_frames)} frames (crops of max_duration_in_seconds={cfg.max_duration_in_seconds}), fewer than "
                f"mask_time_length={cfg.mask_time_length} (mask_time_prob={cfg.mask_time_prob}, mask_time_min_masks="
                f"{cfg.mask_time_min_masks}), so there is nothing to predict. Set max_duration_in_seconds to at least "
                f"{span_s:g} (one span) with audio that long, or lower mask_time_length.")
        if no_mask:
            logger.warning("Preflight: %d of %d utterances get no masked span (shorter than mask_time_length=%d frames).",
                           no_mask, utts, cfg.mask_time_length)
        if self.main:
            out = Path(cfg.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "preflight.json").write_text(json.dumps({"masking": report, "data": self.data_report}, indent=1, default=str))
        return report

    # ------------------------------------------------------------------ loop hooks
    def on_update(self, step: int, total_steps: int) -> dict:
        used = self._temperature
        self._temperature = gumbel_temperature(self.cfg, step)
        self.model.set_gumbel_temperature(self._temperature)
        return {"gumbel_temperature": used}

    def state_dict(self) -> dict:
        return {"gumbel_temperature": self._temperature, **self.guard.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._temperature = float(state["gumbel_temperature"])
        self.guard.load_state_dict(state)
        self.model.set_gumbel_temperature(self._temperature)

    def check_health(self, window: list[dict]) -> Optional[str]:
        """Codebook collapse: some group's perplexity below 1.5x its minimum (1) for collapse_patience updates."""
        if not window:
            return None
        row = self._last_row = window[-1]
        groups = {k: v for k, v in row.items() if k.startswith("perplexity_g") and isinstance(v, float)}
        says_nothing = not groups or not all(math.isfinite(v) for v in groups.values()) or not row.get("num_targets", 1)
        worst = min(groups, key=groups.get) if groups else None
        return self.guard.check(
            row["step"], None if says_nothing else groups[worst] < COLLAPSE_FACTOR,  # a skipped update says nothing
            lambda streak: (f"Codebook collapse at step {row['step']}: {worst} = {groups[worst]:.3f} (minimum 1, threshold "
                            f"{COLLAPSE_FACTOR}) for {streak} updates; contrastive accuracy {row.get('accuracy', float('nan')):.3f}, "
                            f"Gumbel temperature {row.get('gumbel_temperature', float('nan')):.3f}."),
            "Lower the learning rate, raise diversity_loss_weight, or check the audio (silence, clipping).")

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        from hfssl.hub import write_model_card

        cfg = self.cfg
        model = self.model.model
        model.save_pretrained(output_dir)
        self.feature_extractor.save_pretrained(output_dir)
        config = model.config
        seconds = summary.get("audio_seconds_seen", 0.0)
        last = {k: v for k, v in self._last_row.items() if k in ("loss", "contrastive_loss", "accuracy", "codebook_perplexity", "code_perplexity", "gumbel_temperature")}
        pf = self.preflight or {}
        write_model_card(output_dir, objective="wav2vec 2.0 masked contrastive pretraining", pipeline_tag="feature-extraction",
                         summary=summary, tags=["wav2vec2", "audio", "self-supervised"], details={
            "Base": cfg.model_name_or_path or f"from scratch ({config.feat_extract_norm} norm{', stable layer norm' if config.do_stable_layer_norm else ''}, "
                    f"{config.num_hidden_layers} layers x {config.hidden_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)",
            "Audio": cfg.dataset_name or cfg.train_dir or cfg.train_file,
            "Hours of audio seen": f"{seconds / 3600:.3f} h ({summary.get('steps', 0)} updates)",
            "Training audio": f"{len(self.train_dataset) if hasattr(self.train_dataset, '__len__') else 'streamed'} files"
                              + (f", {self.train_dataset.hours:.2f} h" if hasattr(self.train_dataset, "hours") else ""),
            "Masking": f"mask_time_prob {cfg.mask_time_prob}, span {cfg.mask_time_length} frames"
                       + (f" -> {100 * pf['masked_fraction']:.1f}% of frames masked, mean run {pf['mean_span_length']:.1f} frames" if pf else ""),
            "Contrastive": f"{cfg.num_negatives} negatives, kappa {cfg.contrastive_logits_temperature}, {config.num_codevector_groups}x{config.num_codevectors_per_group} codes",
            "Extra losses": f"diversity {cfg.diversity_loss_weight}, feature penalty {cfg.feature_penalty_weight}, feature grad scale {cfg.feature_grad_scale}",
            "Gumbel temperature": f"{cfg.gumbel_temperature_start} -> {cfg.gumbel_temperature_end} (decay {cfg.gumbel_temperature_decay}), final {self._temperature:.4f}",
            "Input": f"{cfg.sampling_rate} Hz, crops of {cfg.max_duration_in_seconds} s, do_normalize={cfg.do_normalize}, attention_mask={self.uses_attention_mask}",
            "Final training metrics": ", ".join(f"{k} {v:.4g}" for k, v in last.items()) or "n/a",
        }, datasets=[cfg.dataset_name] if cfg.dataset_name else None, config=cfg)
