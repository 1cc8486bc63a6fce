"""wav2vec 2.0 masked contrastive pretraining (Baevski et al., 2020) on `Wav2Vec2ForPreTraining`.

The model's weights, layout and checkpoints are transformers' own (the output folder loads with
`Wav2Vec2Model.from_pretrained` / `AutoModel`); the forward pass and the loss are ours, because
the paper's recipe needs three things the stock forward does not do:

* feature-encoder gradient scaling (x0.1 for base: `GradMultiply` on the conv output),
* the L2 penalty on the conv features (weight 10 for base), scaled like every extra loss by the
  number of masked frames (fairseq scales extra losses by the sample size),
* a Gumbel temperature schedule `max(end, start * decay**update)` that is part of the resumable state.

It also only quantizes and scores the masked frames (the contrastive loss is zero elsewhere),
where transformers quantizes every frame and builds (K+1, B, T, D) logits; and it draws masks and
negatives in the collator from the loop's per-batch seed, so resume is exact.

Losses (per micro-batch, summed over its N masked frames, as the loop expects):
  contrastive = sum_t CE(cos(c_t, [q_t, q~_1..K]) / kappa, 0), negatives equal to q_t -> -inf
  diversity   = (G*V - sum_g perplexity_g) / (G*V) * N        (transformers' definition)
  penalty     = mean(features**2) * N
  loss_sum    = contrastive + diversity_weight * diversity + penalty_weight * penalty
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

from hfssl.collators.speech import AudioPretrainingCollator
from hfssl.config import Wav2Vec2PretrainConfig
from hfssl.errors import ConfigError
from hfssl.data.audio.batching import audio_batch_plan
from hfssl.data.audio.geometry import num_frames, receptive_field
from hfssl.data.audio.splits import build_audio_splits
from hfssl.masking.spans import expected_masked_fraction, span_mask_stats
from hfssl.trainer import batch_seed

logger = logging.getLogger(__name__)

# Reference values of the paper at mask_prob 0.65, mask_length 10 (section 4.2 / GUIDE.md section 7).
PAPER_MASKED_FRACTION = 0.49
PAPER_MEAN_SPAN = 14.7
COLLAPSE_FACTOR = 1.5  # a group whose perplexity stays below 1.5x its minimum (1 code) has collapsed


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` backward (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class Wav2Vec2Pretraining(torch.nn.Module):
    """Wraps a `Wav2Vec2ForPreTraining`; forward returns the summed loss and per-batch metrics.

    Args:
        model: the transformers model (its submodules are used as they are; nothing is copied).
        feature_grad_scale: gradient multiplier into the feature encoder (1.0 = off).
        feature_penalty_weight / diversity_loss_weight: weights of the extra losses.
        logits_temperature: kappa of the cosine logits.
    """

    def __init__(self, model: Wav2Vec2ForPreTraining, feature_grad_scale: float = 0.1, feature_penalty_weight: float = 10.0,
                 diversity_loss_weight: float = 0.1, logits_temperature: float = 0.1, gumbel_temperature: float = 2.0):
        super().__init__()
        if model.config.add_adapter:
            raise ConfigError("add_adapter is a fine-tuning option; pretraining needs add_adapter=false.")
        self.model = model
        self.feature_grad_scale = float(feature_grad_scale)
        self.feature_penalty_weight = float(feature_penalty_weight)
        self.diversity_loss_weight = float(diversity_loss_weight)
        self.logits_temperature = float(logits_temperature)
        # A buffer, not a Python float: a compiled graph reads it instead of recompiling each update.
        # Not persistent: the objective's state_dict carries it (the model weights stay transformers').
        self.register_buffer("gumbel_temperature", torch.tensor(float(gumbel_temperature)), persistent=False)

    def set_gumbel_temperature(self, value: float) -> None:
        self.gumbel_temperature.fill_(value)

    def _quantize(self, features: torch.Tensor):
        """(N, C) -> codevectors (N, G*d), per-group perplexity (G,), code perplexity ().

        Training: straight-through hard Gumbel-softmax; perplexity of the mean softmax (as
        transformers and fairseq's prob_perplexity). Eval: argmax codes, perplexity of their
        histogram (transformers' eval mode). Codevectors are gathered with a (G, N, V) @ (G, V, d)
        product instead of materializing (N, G*V, d).
        """
        q = self.model.quantizer
        n = features.shape[0]
        groups, num_vars = q.num_groups, q.num_vars
        logits = q.weight_proj(features).view(n * groups, num_vars).float()
        hard_idx = logits.argmax(-1)
        if self.training:
            gumbels = -torch.empty_like(logits).exponential_().log()  # same draw as F.gumbel_softmax
            soft_sample = ((logits + gumbels) / self.gumbel_temperature).softmax(-1)
            idx = soft_sample.argmax(-1)
            hard = torch.zeros_like(logits).scatter_(-1, idx[:, None], 1.0)
            probs = hard - soft_sample.detach() + soft_sample
            marginal = logits.view(n, groups, num_vars).softmax(-1).sum(0) / max(n, 1)  # (G, V); no NaN when n == 0
        else:
            probs = torch.zeros_like(logits).scatter_(-1, hard_idx[:, None], 1.0)
            marginal = probs.view(n, groups, num_vars).sum(0) / max(n, 1)
        perplexity = torch.exp(-torch.xlogy(marginal, marginal).sum(-1))  # (G,)
        counts = torch.zeros(groups * num_vars, device=logits.device).index_add_(
            0, (hard_idx.view(n, groups) + torch.arange(groups, device=logits.device) * num_vars).view(-1),
            torch.ones(n * groups, device=logits.device)).view(groups, num_vars) / max(n, 1)
        code_perplexity = torch.exp(-torch.xlogy(counts, counts).sum(-1)).sum()
        codebook = q.codevectors.view(groups, num_vars, -1)  # (G, V, d)
        codes = torch.bmm(probs.view(n, groups, num_vars).transpose(0, 1).to(codebook.dtype), codebook)  # (G, N, d)
        return codes.transpose(0, 1).reshape(n, groups * codebook.shape[-1]), perplexity, code_perplexity

    def forward(self, input_values: torch.Tensor, mask_time_indices: torch.Tensor, sampled_negative_indices: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None, frame_lengths: Optional[torch.Tensor] = None) -> dict:
        """
        Args:
            input_values: (B, S) float audio, right-padded with zeros.
            mask_time_indices: (B, F) bool, masked frames (only real frames).
            sampled_negative_indices: (B, F, K) long, per-utterance time indices of the negatives of
                each masked frame (other masked frames of the same utterance).
            attention_mask: (B, S) 1 on real samples; only for models that use one (layer norm).
            frame_lengths: (B,) real frames per utterance (default: from attention_mask, else all).
        Returns:
            dict of scalars: loss_sum, contrastive_loss / diversity_loss / feature_penalty (per
            masked frame, unweighted), accuracy, codebook_perplexity (sum over groups), perplexity_g{i}, code_perplexity,
            masked_fraction.
        """
        m = self.model
        w = m.wav2vec2
        features = w.feature_extractor(input_values)  # (B, C, F)
        if self.feature_grad_scale != 1.0:
            features = GradMultiply.apply(features, self.feature_grad_scale)
        features = features.transpose(1, 2)  # (B, F, C)
        batch, frames = features.shape[:2]
        if frame_lengths is None:
            frame_lengths = (num_frames(attention_mask.sum(-1), m.config.conv_kernel, m.config.conv_stride)
                             if attention_mask is not None else torch.full((batch,), frames, device=features.device))
        real = torch.arange(frames, device=features.device)[None, :] < frame_lengths[:, None]  # (B, F)
        n_real = real.sum().clamp_min(1)
        # fairseq: features.float().pow(2).mean() over the conv output (here: real frames only).
        feature_penalty = (features.float().pow(2).mean(-1) * real).sum() / n_real

        hidden, normed = w.feature_projection(features)  # (B, F, H), (B, F, C) layer-normed conv features
        mask = mask_time_indices.bool()
        hidden = torch.where(mask[..., None], w.masked_spec_embed.to(hidden.dtype), hidden)
        encoded = w.encoder(hidden, attention_mask=real if attention_mask is not None else None).last_hidden_state

        context = m.project_hid(encoded[mask])  # (N, D), N masked frames in batch order
        n = context.shape[0]
        codes, perplexity, code_perplexity = self._quantize(m.dropout_features(normed[mask]))
        targets = m.project_q(codes.to(m.project_q.weight.dtype))  # (N, D)

        # Negatives are masked frames: map (b, t) to its row among the masked frames.
        rows_of = mask.reshape(-1).long().cumsum(0) - 1  # (B*F,)
        b_idx = mask.nonzero(as_tuple=True)[0]  # (N,)
        flat = b_idx[:, None] * frames + sampled_negative_indices[mask].long()  # (N, K)
        negatives = targets[rows_of[flat]]  # (N, K, D)
        candidates = torch.cat([targets[:, None], negatives], dim=1)  # (N, 1+K, D)
        logits = torch.cosine_similarity(context[:, None].float(), candidates.float(), dim=-1) / self.logits_temperature
        neg_is_pos = (targets[:, None] == negatives).all(-1)  # (N, K)
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(neg_is_pos, float("-inf"))], dim=1)
        contrastive = F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=logits.device), reduction="sum")

        codes_total = self.model.config.num_codevector_groups * self.model.config.num_codevectors_per_group
        diversity = (codes_total - perplexity.sum()) / codes_total
        loss_sum = contrastive + n * (self.diversity_loss_weight * diversity + self.feature_penalty_weight * feature_penalty)

        denom = max(n, 1)
        correct = (logits[:, :1] > logits[:, 1:]).all(-1).float().sum()
        out = {
            "loss_sum": loss_sum,
            "contrastive_loss": contrastive.detach() / denom,
            "diversity_loss": diversity.detach(),
            "feature_penalty": feature_penalty.detach(),
            "accuracy": correct / denom,
            "codebook_perplexity": perplexity.detach().sum(),
            "code_perplexity": code_perplexity,
            "masked_fraction": mask.sum() / n_real,
        }
        for g in range(perplexity.shape[0]):
            out[f"perplexity_g{g}"] = perplexity[g].detach()
        return out


def gumbel_temperature(cfg, updates_done: int) -> float:
    """Temperature used by update number `updates_done` (0-based): max(end, start * decay**updates)."""
    return max(cfg.gumbel_temperature_end, cfg.gumbel_temperature_start * cfg.gumbel_temperature_decay ** updates_done)


class Wav2Vec2Objective:
    name = "wav2vec2"
    input_unit = "audio_seconds"

    def __init__(self, cfg: Wav2Vec2PretrainConfig, accelerator=None):
        self.cfg = cfg
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
        self.max_samples = int(round(cfg.max_duration_in_seconds * cfg.sampling_rate))
        self.train_dataset, self.eval_dataset, self.data_report = build_audio_splits(
            cfg, cfg.output_dir if self.main else None, self.min_samples)
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
        self._collapse_streak = 0
        self._collapse_reported = False
        self._last_healthy_step = 0
        self._last_row: dict = {}
        self.preflight = self._preflight()

    # ------------------------------------------------------------------ build
    def _model(self) -> Wav2Vec2ForPreTraining:
        cfg = self.cfg
        source = cfg.model_name_or_path or cfg.config_name
        if source:
            config = AutoConfig.from_pretrained(source)
            if config.model_type != "wav2vec2":
                raise ConfigError(f"'{source}' is a {config.model_type} model; the wav2vec2 objective needs a wav2vec2 config.")
        else:
            config = Wav2Vec2Config()
        for key, value in cfg.config_overrides.items():
            if not hasattr(config, key):
                raise ConfigError(f"config_overrides: '{key}' is not a field of Wav2Vec2Config.")
            setattr(config, key, value)
        # Wav2Vec2Config derives the layer count in __init__; overriding the lists must update it.
        config.num_feat_extract_layers = len(config.conv_dim)
        if not len(config.conv_dim) == len(config.conv_kernel) == len(config.conv_stride):
            raise ConfigError(f"conv_dim, conv_kernel and conv_stride must have the same length, got "
                              f"{len(config.conv_dim)}, {len(config.conv_kernel)} and {len(config.conv_stride)}.")
        if config.feat_extract_norm not in ("group", "layer"):
            raise ConfigError(f"feat_extract_norm must be 'group' or 'layer', got '{config.feat_extract_norm}'.")
        inherited = (config.mask_time_prob, config.mask_time_length, config.mask_time_min_masks)
        # The pretraining objective, never the 0.05 fine-tuning default of Wav2Vec2Config: these are
        # also what the saved config says the model was pretrained with.
        config.mask_time_prob, config.mask_time_length, config.mask_time_min_masks = cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_time_min_masks
        config.num_negatives = cfg.num_negatives
        config.contrastive_logits_temperature = cfg.contrastive_logits_temperature
        config.diversity_loss_weight = cfg.diversity_loss_weight
        config.apply_spec_augment = True
        if inherited != (cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_time_min_masks):
            logger.info("Time masking for pretraining: mask_time_prob=%s, mask_time_length=%s, mask_time_min_masks=%s "
                        "(the %s config had %s/%s/%s, e.g. the stock 0.05 is a fine-tuning value).",
                        cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_time_min_masks, source or "default",
                        *inherited)
        else:
            logger.info("Time masking for pretraining: mask_time_prob=%s, mask_time_length=%s, mask_time_min_masks=%s.",
                        cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_time_min_masks)
        if cfg.model_name_or_path:
            model = Wav2Vec2ForPreTraining.from_pretrained(cfg.model_name_or_path, config=config)
        else:
            model = Wav2Vec2ForPreTraining(config)
        model.config.architectures = ["Wav2Vec2ForPreTraining"]
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
        if no_mask:
            logger.warning("Preflight: %d of %d utterances get no masked span (shorter than mask_time_length=%d frames).",
                           no_mask, utts, cfg.mask_time_length)
        if self.main:
            out = Path(cfg.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "preflight.json").write_text(json.dumps({"masking": report, "data": self.data_report}, indent=1, default=str))
        return report

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
        used = self._temperature
        self._temperature = gumbel_temperature(self.cfg, step)
        self.model.set_gumbel_temperature(self._temperature)
        return {"gumbel_temperature": used}

    def state_dict(self) -> dict:
        return {"gumbel_temperature": self._temperature, "collapse_streak": self._collapse_streak,
                "collapse_reported": self._collapse_reported, "last_healthy_step": self._last_healthy_step}

    def load_state_dict(self, state: dict) -> None:
        self._temperature = float(state["gumbel_temperature"])
        self._collapse_streak = int(state.get("collapse_streak", 0))
        self._collapse_reported = bool(state.get("collapse_reported", False))
        self._last_healthy_step = int(state.get("last_healthy_step", 0))
        self.model.set_gumbel_temperature(self._temperature)

    def enable_gradient_checkpointing(self) -> None:
        self.model.model.gradient_checkpointing_enable()

    def check_health(self, window: list[dict]) -> Optional[str]:
        """Codebook collapse: some group's perplexity below 1.5x its minimum (1) for collapse_patience updates."""
        if not window:
            return None
        row = window[-1]
        self._last_row = row
        groups = {k: v for k, v in row.items() if k.startswith("perplexity_g") and isinstance(v, float)}
        if not groups or not all(math.isfinite(v) for v in groups.values()) or not row.get("num_targets", 1):
            return None  # a skipped (non-finite or empty) update says nothing about the codebook
        if min(groups.values()) >= COLLAPSE_FACTOR:
            self._collapse_streak = 0
            self._collapse_reported = False
            self._last_healthy_step = row["step"]
            return None
        self._collapse_streak += 1
        if self._collapse_streak < self.cfg.collapse_patience:
            return None
        worst = min(groups, key=groups.get)
        what = (f"Codebook collapse at step {row['step']}: {worst} = {groups[worst]:.3f} (minimum 1, threshold {COLLAPSE_FACTOR}) "
                f"for {self._collapse_streak} updates; contrastive accuracy {row.get('accuracy', float('nan')):.3f}, "
                f"Gumbel temperature {row.get('gumbel_temperature', float('nan')):.3f}.")
        advice = "Lower the learning rate, raise diversity_loss_weight, or check the audio (silence, clipping)."
        if self.cfg.on_collapse == "warn":
            if not self._collapse_reported:
                logger.warning("%s %s (on_collapse=warn: training goes on.)", what, advice)
                self._collapse_reported = True
            return None
        good = self._last_good_checkpoint()
        if self.cfg.on_collapse == "stop":
            return f"{what} Stopped (on_collapse=stop). {advice} Last checkpoint before the collapse: {good or 'none'}."
        if good is None:
            return (f"{what} on_collapse=rollback: no checkpoint was saved before step {self._last_healthy_step + 1} "
                    f"(the last healthy update); restart with a lower learning rate. {advice}")
        from hfssl.errors import RollbackRequested

        raise RollbackRequested(good, f"{what} on_collapse=rollback.")

    def _last_good_checkpoint(self) -> Optional[str]:
        from hfssl.checkpointing import list_checkpoints

        good = [p for p in list_checkpoints(self.cfg.output_dir) if int(p.name.split("-")[1]) <= self._last_healthy_step]
        return str(good[-1]) if good else None

    def eval_summary(self, metrics: dict) -> dict:
        return metrics

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
