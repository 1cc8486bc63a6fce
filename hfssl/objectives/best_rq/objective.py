"""BEST-RQ: BERT-style masked prediction of random-projection-quantizer labels (Chiu et al., 2022), on
transformers' Wav2Vec2BertModel (a conformer that reads stacked log-mel frames; `encoder: conformer`) or a
Wav2Vec2Model that reads the waveform through its conv front end (`encoder: wav2vec2`).

Per batch (`collators.py`, a pure function of the examples and the loop's seed): crop, 80-dim Kaldi log-mel
filterbank normalized per utterance and mel bin, `stack_frames` frames stacked (`hfssl.data.audio.fbank`);
labels = the frozen quantizer (`quantizer.py`) on the clean stacked frames (for the conv encoder: at its frames,
nearest centre); span masks over encoder frames (`hfssl.masking.spans.compute_span_mask`); masked frames (their
samples, for the conv encoder) replaced by N(0, noise_std^2) noise. No k-means pass and no learned quantizer:
nothing to prepare before training and nothing to collapse but the data itself, so streaming works as for
wav2vec 2.0.

Model (`model.py`): encoder + one linear softmax head per codebook; loss = CE on masked real frames summed
over frames and codebooks; num_targets = masked real frames x codebooks.

Output folder: encoder weights + config (`AutoModel.from_pretrained`), preprocessor_config.json
(conformer: `SeamlessM4TFeatureExtractor` with the same filterbank and stacking, so fine-tuning and pipelines see
the pretraining features; wav2vec2: `Wav2Vec2FeatureExtractor`), `best_rq_quantizer.safetensors` (also written
to output_dir before training), `best_rq_head.safetensors`, README.md model card.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hfssl.data.audio.fbank import FbankFrontend
from hfssl.data.audio.geometry import conv_geometry, num_frames, receptive_field
from hfssl.data.audio.splits import build_audio_splits
from hfssl.data.batching import batch_seed
from hfssl.attention import use_attn_implementation
from hfssl.errors import ConfigError
from hfssl.masking.spans import expected_masked_fraction, span_mask_stats
from hfssl.objectives.best_rq.collators import BestRQCollator, BestRQWaveCollator
from hfssl.objectives.best_rq.config import BestRQPretrainConfig
from hfssl.objectives.best_rq.loss import code_perplexity
from hfssl.objectives.best_rq.model import BestRQForPretraining
from hfssl.objectives.best_rq.quantizer import QUANTIZER_FILE, RandomProjectionQuantizer
from hfssl.objectives.speech_base import SpeechObjective, companion_file, load_initial_weights, matching_head, speech_model_config

logger = logging.getLogger(__name__)

HEAD_FILE = "best_rq_head.safetensors"


class BestRQObjective(SpeechObjective):
    name = "best_rq"

    def __init__(self, cfg: BestRQPretrainConfig, accelerator=None):
        super().__init__(cfg)
        self.main = accelerator is None or accelerator.is_main_process
        self.frontend = FbankFrontend(cfg.sampling_rate, cfg.num_mel_bins, cfg.stack_frames)
        encoder = self._encoder()
        self.quantizer, self.quantizer_source = self._quantizer()
        q = self.quantizer
        self.model = BestRQForPretraining(encoder, q.num_codebooks, q.codebook_size)
        self._maybe_load_head()
        conv = cfg.encoder == "wav2vec2"
        min_samples = max(self.frontend.min_samples, receptive_field(encoder.config.conv_kernel, encoder.config.conv_stride)) \
            if conv else self.frontend.min_samples
        self.train_dataset, self.eval_dataset, self.data_report = build_audio_splits(
            cfg, cfg.output_dir if self.main else None, min_samples)
        if cfg.streaming and accelerator is not None and accelerator.num_processes > 1:
            from datasets.distributed import split_dataset_by_node

            rank = accelerator.process_index
            self.train_dataset.stream = split_dataset_by_node(self.train_dataset.stream, rank, accelerator.num_processes)
            if cfg.on_bad_audio == "skip":  # each process lists what it skips in its own file
                self.train_dataset.report_path = str(Path(cfg.output_dir) / f"skipped_audio_stream.rank{rank}.tsv")
        masking = (cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_time_min_masks, cfg.noise_std)
        if conv:
            c = encoder.config
            self.uses_attention_mask = c.feat_extract_norm == "layer"
            self.collator = BestRQWaveCollator(self.frontend, q, c.conv_kernel, c.conv_stride, self.max_samples, cfg.do_normalize,
                                               self.uses_attention_mask, *masking)
        else:
            self.collator = BestRQCollator(self.frontend, q, self.max_samples, *masking)
        self._low_usage_streak = 0
        self._collapse_reported = False
        self._last_row: dict = {}
        # output_dir's quantizer is the run's own record of its labels (checkpoints keep only its sha1): another one
        # there (a resume with other quantizer settings) is an error, never overwritten. Checked on every process.
        mine = Path(cfg.output_dir) / QUANTIZER_FILE
        if mine.is_file() and RandomProjectionQuantizer.load(mine).fingerprint() != q.fingerprint():
            raise ConfigError(f"{mine} holds another quantizer than this run's ({self.quantizer_source}, sha1 {q.fingerprint()}): "
                              f"to continue that run, resume with --quantizer_path {mine}; to start over, --overwrite_output_dir true.")
        if self.main:
            mine.parent.mkdir(parents=True, exist_ok=True)
            q.save(mine, self._quantizer_metadata())
        self.preflight = self._preflight()

    # ------------------------------------------------------------------ build
    def _encoder(self):
        return self._wav2vec2_encoder() if self.cfg.encoder == "wav2vec2" else self._conformer_encoder()

    def _conformer_encoder(self):
        from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

        cfg, dim = self.cfg, self.frontend.feature_dim
        config = speech_model_config(cfg, "wav2vec2-bert", Wav2Vec2BertConfig(feature_projection_input_dim=dim), conv_front_end=False)
        if config.feature_projection_input_dim != dim:
            raise ConfigError(f"The encoder takes {config.feature_projection_input_dim}-dim frames but num_mel_bins {cfg.num_mel_bins} x "
                              f"stack_frames {cfg.stack_frames} = {dim}: set stack_frames/num_mel_bins to match "
                              "(or feature_projection_input_dim in config_overrides for a fresh model).")
        if config.add_adapter:
            raise ConfigError("add_adapter is a fine-tuning option (it shortens the frame sequence); pretraining needs add_adapter false.")
        model = load_initial_weights(Wav2Vec2BertModel, cfg, config) if cfg.model_name_or_path else Wav2Vec2BertModel(config)
        use_attn_implementation(model, cfg.attn_implementation, cfg.mixed_precision)
        model.config.architectures = ["Wav2Vec2BertModel"]
        logger.info("BEST-RQ encoder %s: Wav2Vec2Bert %d layers x %d, %.1fM parameters, %d-dim input (%d mel x %d frames, %d ms).",
                    "continued from " + cfg.model_name_or_path if cfg.model_name_or_path else "from scratch",
                    config.num_hidden_layers, config.hidden_size, sum(p.numel() for p in model.parameters()) / 1e6, dim,
                    cfg.num_mel_bins, cfg.stack_frames, 10 * cfg.stack_frames)
        return model

    def _wav2vec2_encoder(self):
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        from hfssl.objectives.wav2vec2.model import GradMultiply

        cfg = self.cfg
        config = speech_model_config(cfg, "wav2vec2", Wav2Vec2Config())
        if config.feat_extract_norm not in ("group", "layer"):
            raise ConfigError(f"feat_extract_norm must be 'group' or 'layer', got '{config.feat_extract_norm}'.")
        model = load_initial_weights(Wav2Vec2Model, cfg, config) if cfg.model_name_or_path else Wav2Vec2Model(config)
        model.config.architectures = ["Wav2Vec2Model"]
        use_attn_implementation(model, cfg.attn_implementation, cfg.mixed_precision)
        if cfg.feature_grad_scale != 1.0:  # fairseq's feature_grad_mult: scale the gradient into the conv front end
            scale = cfg.feature_grad_scale
            model.feature_extractor.register_forward_hook(lambda module, args, out: GradMultiply.apply(out, scale))
        (window, hop), (lwindow, lhop) = conv_geometry(config.conv_kernel, config.conv_stride), self.frontend.frame_geometry
        logger.info("BEST-RQ encoder %s: Wav2Vec2 %d layers x %d, %.1fM parameters, conv front end %d / %d samples (window / hop); "
                    "labels from %d stacked log-mel frames (%d / %d samples), nearest centre.",
                    "continued from " + cfg.model_name_or_path if cfg.model_name_or_path else "from scratch",
                    config.num_hidden_layers, config.hidden_size, sum(p.numel() for p in model.parameters()) / 1e6,
                    window, hop, cfg.stack_frames, lwindow, lhop)
        if hop != lhop:
            logger.warning("The conv front end advances %d samples per frame but the label frames %d (stack_frames %d): labels are "
                           "repeated or skipped; set stack_frames to %s to match.", hop, lhop, cfg.stack_frames,
                           hop // self.frontend.hop if hop % self.frontend.hop == 0 else "a matching value")
        return model

    def _quantizer(self) -> tuple[RandomProjectionQuantizer, str]:
        """The quantizer_path one, else (no quantizer_seed given) the one saved with model_name_or_path (a BEST-RQ
        output folder or Hub id), else a fresh seeded draw."""
        cfg = self.cfg
        saved = cfg.quantizer_path
        if saved is None and cfg.quantizer_seed is None:  # an explicit seed asks for a fresh draw
            saved = companion_file(cfg.model_name_or_path, QUANTIZER_FILE)
        if saved is None:
            seed = cfg.seed if cfg.quantizer_seed is None else cfg.quantizer_seed
            q = RandomProjectionQuantizer.create(self.frontend.feature_dim, cfg.codebook_dim, cfg.codebook_size, cfg.num_codebooks, seed)
            return q, f"drawn with seed {seed}"
        try:
            q = RandomProjectionQuantizer.load(saved)
        except (OSError, ValueError) as e:
            raise ConfigError(f"quantizer_path '{saved}' cannot be loaded: {e}") from None
        if q.input_dim != self.frontend.feature_dim:
            raise ConfigError(f"The quantizer in '{saved}' takes {q.input_dim}-dim frames, but num_mel_bins x stack_frames = "
                              f"{self.frontend.feature_dim}: use its num_mel_bins/stack_frames.")
        shape = (q.num_codebooks, q.codebook_size, int(q.codebooks.shape[2]))
        if shape != (cfg.num_codebooks, cfg.codebook_size, cfg.codebook_dim):
            logger.warning("The quantizer in %s has %d codebook(s) of %d x %d; num_codebooks/codebook_size/codebook_dim are ignored.",
                           saved, *shape)
        logger.info("Reusing the BEST-RQ quantizer of %s (sha1 %s).", saved, q.fingerprint())
        return q, f"reused from {saved}"

    def _quantizer_metadata(self) -> dict:
        cfg = self.cfg
        return {"num_mel_bins": cfg.num_mel_bins, "stack_frames": cfg.stack_frames, "sampling_rate": cfg.sampling_rate,
                "source": self.quantizer_source}

    def _maybe_load_head(self) -> None:
        """Continuing from an hfssl BEST-RQ folder with the same quantizer: also take its softmax heads."""
        path = self.cfg.model_name_or_path
        state = matching_head(path, HEAD_FILE, "quantizer_sha1", self.quantizer.fingerprint())
        if state is None:
            return
        self.model.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
        logger.info("Reusing the softmax heads of %s (same quantizer).", path)

    def _preflight(self, max_batches: int = 10) -> dict:
        """Masking statistics and the labels' codebook usage on the first training batches (the validation files
        when training streams), with a warning when the labels use few codewords."""
        cfg = self.cfg
        if cfg.streaming:
            if self.eval_dataset is None:
                return {}
            data, source = self.eval_dataset, "validation files (the training stream is not read before training)"
            plan = self.eval_plan()[:max_batches]
        else:
            data, source = self.train_dataset, "training files"
            plan = self.batch_plan(0, cfg.seed)[:max_batches]
        labels, masked, real, runs = [], 0, 0, 0
        for i, idx in enumerate(plan):
            batch = self.collator(data.__getitems__(idx), seed=batch_seed(cfg.seed, 0, i))
            lengths = batch["frame_lengths"]
            stats = span_mask_stats(batch["mask_time_indices"], lengths)
            masked += int(batch["mask_time_indices"].sum())
            real += int(lengths.sum())
            runs += stats["num_spans"]
            labels.append(batch["labels"][batch["labels"][..., 0] >= 0])  # (labelled frames, N)
        y = torch.cat(labels) if labels else torch.zeros(0, self.quantizer.num_codebooks, dtype=torch.long)
        hist = [torch.bincount(y[:, n], minlength=self.quantizer.codebook_size) for n in range(y.shape[1])]
        perplexity = float(code_perplexity(y, self.quantizer.codebook_size))
        most = float(np.mean([float(h.max()) / max(len(y), 1) for h in hist])) if len(y) else 0.0
        report = {
            "batches": len(plan), "frames": int(len(y)), "lengths_from": source,
            "masked_fraction": masked / real if real else 0.0, "mean_span_length": masked / runs if runs else 0.0,
            "codes_used": int(np.mean([int((h > 0).sum()) for h in hist])) if hist else 0,
            "code_perplexity": perplexity, "code_usage": perplexity / max(min(self.quantizer.codebook_size, len(y)), 1),
            "majority_code_fraction": most, "codebook_size": self.quantizer.codebook_size, "num_codebooks": self.quantizer.num_codebooks,
        }
        logger.info("Preflight (first %d batches of %s): %.1f%% of frames masked, mean masked run %.1f frames; labels use %d of %d "
                    "codewords (perplexity %.1f over %d frames), the most frequent one %.1f%% of frames.", len(plan), source,
                    100 * report["masked_fraction"], report["mean_span_length"], report["codes_used"], self.quantizer.codebook_size,
                    perplexity, len(y), 100 * most)
        if len(y) and report["code_usage"] < cfg.collapse_usage:
            logger.warning("Preflight: the quantizer's labels use few codewords (code_usage %.3f < collapse_usage %s): the targets "
                           "carry little information. Check the audio (silence, clipping, a constant channel).",
                           report["code_usage"], cfg.collapse_usage)
        if self.main:
            (Path(cfg.output_dir) / "preflight.json").write_text(json.dumps({"masking_and_labels": report, "data": self.data_report},
                                                                            indent=1, default=str))
        return report

    # ------------------------------------------------------------------ loop hooks
    def state_dict(self) -> dict:
        return {"quantizer_sha1": self.quantizer.fingerprint(), "low_usage_streak": self._low_usage_streak,
                "collapse_reported": self._collapse_reported}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("quantizer_sha1")
        if saved is not None and saved != self.quantizer.fingerprint():
            raise ConfigError(f"The checkpoint was trained on another quantizer's labels (sha1 {saved}, now {self.quantizer.fingerprint()}): "
                              f"resume with --quantizer_path {Path(self.cfg.output_dir) / QUANTIZER_FILE} or the same quantizer_seed.")
        self._low_usage_streak = int(state.get("low_usage_streak", 0))
        self._collapse_reported = bool(state.get("collapse_reported", False))

    def check_health(self, window: list[dict]) -> Optional[str]:
        """Warn (once per episode) when the labels' codebook usage stays below collapse_usage for collapse_patience updates."""
        if not window:
            return None
        row = self._last_row = window[-1]
        usage = row.get("code_usage")
        if usage is None or not np.isfinite(usage) or not row.get("num_targets", 1):
            return None
        if usage >= self.cfg.collapse_usage:
            self._low_usage_streak, self._collapse_reported = 0, False
            return None
        self._low_usage_streak += 1
        if self._low_usage_streak >= self.cfg.collapse_patience and not self._collapse_reported:
            logger.warning("Codebook usage collapse at step %d: the labels use %.3f of the codewords they could (perplexity %.1f) for %d "
                           "updates; masked accuracy %.3f, predictions' perplexity %.1f. The quantizer is frozen, so this comes from the "
                           "audio (silence, clipping, a constant channel) or too few frames per batch.", row["step"], usage,
                           row.get("code_perplexity", float("nan")), self._low_usage_streak, row.get("accuracy", float("nan")),
                           row.get("pred_perplexity", float("nan")))
            self._collapse_reported = True
        return None

    def eval_summary(self, metrics: dict) -> dict:
        metrics["eval_chance_accuracy"] = 1.0 / self.quantizer.codebook_size
        if self.preflight:
            metrics["eval_majority_accuracy"] = self.preflight["majority_code_fraction"]
        return metrics

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        from safetensors.torch import save_file

        from hfssl.hub import write_model_card

        cfg, model, q = self.cfg, self.model, self.quantizer
        out = Path(output_dir)
        model.encoder.save_pretrained(output_dir)
        conv = cfg.encoder == "wav2vec2"
        if conv:
            from transformers import Wav2Vec2FeatureExtractor

            Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=cfg.sampling_rate, padding_value=0.0, do_normalize=cfg.do_normalize,
                                     return_attention_mask=self.uses_attention_mask).save_pretrained(output_dir)
        else:
            self.frontend.feature_extractor().save_pretrained(output_dir)
        q.save(out / QUANTIZER_FILE, self._quantizer_metadata())
        save_file({f"head.{k}": v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(out / HEAD_FILE),
                  metadata={"format": "hfssl-best-rq-head-1", "num_codebooks": str(q.num_codebooks),
                            "codebook_size": str(q.codebook_size), "quantizer_sha1": q.fingerprint()})
        config = model.encoder.config
        seconds = summary.get("audio_seconds_seen", 0.0)
        if conv:
            window, hop = conv_geometry(config.conv_kernel, config.conv_stride)
            frames, frame_ms = int(num_frames(self.max_samples, config.conv_kernel, config.conv_stride)), 1000 * hop / cfg.sampling_rate
        else:
            frames, frame_ms = int(self.frontend.num_frames(self.max_samples)), 10 * cfg.stack_frames
        masked = expected_masked_fraction(cfg.mask_time_prob, cfg.mask_time_length, frames, min_masks=cfg.mask_time_min_masks)
        pf = self.preflight or {}
        last = {k: v for k, v in self._last_row.items() if k in ("loss", "accuracy", "code_perplexity", "pred_perplexity")}
        n_params = sum(p.numel() for p in model.encoder.parameters())
        arch = config.architectures[0]
        if conv:
            encoder_input = (f"the waveform{' normalized per utterance' if cfg.do_normalize else ''}, through the conv front end "
                             f"({window}-sample receptive field, one frame per {hop} samples); preprocessor_config.json is a "
                             f"Wav2Vec2FeatureExtractor. Labels: each conv frame takes the quantizer's label of the nearest (by centre) "
                             f"stacked log-mel frame")
        else:
            encoder_input = "the same frames; preprocessor_config.json (SeamlessM4TFeatureExtractor) computes the same features"
        write_model_card(output_dir, objective="BEST-RQ (masked prediction of random-projection quantizer labels)",
                         pipeline_tag="feature-extraction", summary=summary, tags=["best-rq", config.model_type, "audio", "speech", "self-supervised"],
                         config=cfg, datasets=[cfg.dataset_name] if cfg.dataset_name else None, details={
            "Base": cfg.model_name_or_path or f"from scratch ({arch}, {config.num_hidden_layers} layers x {config.hidden_size}, "
                                              f"{n_params / 1e6:.1f}M parameters)",
            "Audio": cfg.dataset_name or cfg.train_dir or cfg.train_file,
            "Hours of audio seen": f"{seconds / 3600:.3f} h ({summary.get('steps', 0)} updates)",
            "Input": f"quantizer: {cfg.num_mel_bins}-dim Kaldi log-mel filterbank (torchaudio.compliance.kaldi.fbank), normalized per "
                     f"utterance and mel bin, {cfg.stack_frames} frames stacked ({10 * cfg.stack_frames} ms); encoder: {encoder_input}",
            "Quantizer": f"{q.num_codebooks} codebook(s) of {q.codebook_size} x {int(q.codebooks.shape[2])}, random projection "
                         f"{q.input_dim} -> {int(q.projections.shape[2])}, frozen, {self.quantizer_source} ({QUANTIZER_FILE}, sha1 {q.fingerprint()})",
            "Label usage (preflight)": (f"perplexity {pf['code_perplexity']:.1f} over {pf['frames']} frames, most frequent codeword "
                                        f"{100 * pf['majority_code_fraction']:.1f}% of frames") if pf else "n/a",
            "Masking": f"spans of {cfg.mask_time_length} frames ({frame_ms * cfg.mask_time_length:g} ms), mask_time_prob "
                       f"{cfg.mask_time_prob} (~{100 * masked:.0f}% of the frames of a {cfg.max_duration_in_seconds:g} s crop), "
                       f"replaced by N(0, {cfg.noise_std}^2) noise" + (" (every sample in a masked frame's receptive field)" if conv else ""),
            "Final training metrics": ", ".join(f"{k} {v:.4g}" for k, v in last.items()) or "n/a",
            "Files": f"{arch} weights (AutoModel.from_pretrained), preprocessor_config.json, {QUANTIZER_FILE}, "
                     f"{HEAD_FILE} (softmax heads)",
        })
