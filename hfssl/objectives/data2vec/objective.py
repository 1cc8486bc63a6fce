"""data2vec (Baevski et al., 2022), one objective per modality, registered as `data2vec_text` and
`data2vec_audio` and sharing everything but the data and the backbone: the EMA teacher (`teacher.py`), the
targets and loss (`targets.py`), the schedule, the resumable state and the collapse guard (`Data2VecObjective`).

Two names rather than one with a `modality` key: the text and speech settings are different dataclasses with
keys of the same name and different meaning (train_file is a text file or an audio manifest, streaming,
validation_file, ...); one registered name per config class keeps every recipe key checked exactly.

Per optimizer update n (`on_update`): tau = ema_decay(n) and teacher <- tau * teacher + (1 - tau) * student
(fairseq steps its EMA before the forward of update n + 1: the same sequence). The teacher's parameters, tau and
the guard's counters are the objective's state: a checkpoint resumes them exactly, a rollback restores them.

Collapse guard (`check_health`): fairseq stops when target_var < 0.1 or pred_var < 0.01 after 5000 updates; here
the same test warns, stops or rolls back (`on_collapse`) after `collapse_patience` updates in a row. The values are
per micro-batch (averaged over the update by the loop), where fairseq's are over the whole update.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import torch

from hfssl.attention import use_attn_implementation
from hfssl.errors import ConfigError
from hfssl.objectives.base import Objective
from hfssl.objectives.collapse import CollapseGuard
from hfssl.objectives.data2vec.targets import ema_decay
from hfssl.objectives.data2vec.teacher import TEXT_LAYOUTS
from hfssl.objectives.speech_base import SpeechObjective

logger = logging.getLogger(__name__)

TEACHER = "teacher."  # prefix of the teacher's tensors in the objective state
# Text architectures whose feed-forward outputs the teacher knows how to read (teacher.TEXT_LAYOUTS): the BERT
# layout (block.output.dense is the feed-forward output before the residual; these have a pooler) and ModernBERT.
BERT_LAYOUT_TYPES = ("data2vec-text", "roberta", "bert", "xlm-roberta", "camembert")
TEXT_MODEL_TYPES = (*BERT_LAYOUT_TYPES, *TEXT_LAYOUTS)


class Data2VecObjective(Objective):
    """What both modalities share; a subclass builds `self.model` (with `.teacher`) and names the averaged module."""

    def _start_state(self) -> None:
        self._tau = self.cfg.ema_decay
        self.guard = CollapseGuard(self.cfg)
        self._last_row: dict = {}

    def ema_source(self) -> torch.nn.Module:
        """The student module the teacher is an EMA of (same parameter names)."""
        raise NotImplementedError

    def _check_top_k(self, num_layers: int) -> None:
        if self.cfg.average_top_k_layers > num_layers:
            raise ConfigError(f"average_top_k_layers ({self.cfg.average_top_k_layers}) is more than the model's "
                              f"{num_layers} layers (num_hidden_layers): lower it or use a deeper model.")

    # ------------------------------------------------------------------ loop hooks
    def on_update(self, step: int, total_steps: int) -> dict:
        cfg = self.cfg
        self._tau = ema_decay(step, cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_end_step)
        if self._tau < 1:  # tau 1: a frozen teacher (fairseq skips the step too)
            self.model.teacher.update(self.ema_source(), self._tau)
        return {"ema_decay": self._tau}

    def state_dict(self) -> dict:
        return {**self.model.teacher.state_dict(TEACHER), "ema_decay": self._tau, **self.guard.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.teacher.load_state_dict(state, TEACHER)
        self._tau = float(state["ema_decay"])
        self.guard.load_state_dict(state)

    def check_health(self, window: list[dict]) -> Optional[str]:
        """Collapse: target_var < min_target_var or pred_var < min_pred_var for collapse_patience updates in a row."""
        if not window:
            return None
        cfg, row = self.cfg, window[-1]
        self._last_row = row
        target_var, pred_var = row.get("target_var"), row.get("pred_var")
        if not row.get("num_targets") or not all(isinstance(v, float) and math.isfinite(v) for v in (target_var, pred_var)):
            collapsed = None  # a skipped (non-finite or empty) update says nothing about the targets
        else:
            collapsed = row["step"] > cfg.collapse_check_after and (target_var < cfg.min_target_var or pred_var < cfg.min_pred_var)
        return self.guard.check(
            row["step"], collapsed,
            lambda streak: (f"data2vec collapse at step {row['step']}: target_var {target_var:.4f} (threshold {cfg.min_target_var}), "
                            f"pred_var {pred_var:.4f} (threshold {cfg.min_pred_var}) for {streak} update(s); EMA decay {self._tau:.6f}."),
            "Lower the learning rate, raise ema_decay/ema_end_decay (a slower teacher), or mask more.")

    def _card_details(self, n_params: int) -> dict[str, str]:
        cfg = self.cfg
        last = {k: v for k, v in self._last_row.items() if k in ("loss", "baseline_loss", "target_var", "pred_var", "ema_decay")}
        scale = "1/sqrt(hidden_size)" if cfg.loss_scale is None else f"{cfg.loss_scale}"
        return {
            "Teacher": f"EMA of the student, tau {cfg.ema_decay} -> {cfg.ema_end_decay} over {cfg.ema_anneal_end_step} updates "
                       f"(final {self._tau:.6f}); not saved (the student is the model)",
            "Targets": f"mean of the teacher's top {cfg.average_top_k_layers} "
                       f"{'feed-forward outputs' if cfg.target_source == 'feed_forward' else 'block outputs'}, each {cfg.target_layer_norm}-normed",
            "Loss": (f"smooth L1 (beta {cfg.loss_beta})" if cfg.loss_beta else "squared error") + f" x {scale}, "
                    f"{cfg.head_layers}-layer regression head",
            "Parameters": f"{n_params / 1e6:.1f}M (encoder)",
            "Final training metrics": ", ".join(f"{k} {v:.4g}" for k, v in last.items()) or "n/a",
        }


# ============================================================================ text

class Data2VecTextCollator:
    """The MLM collator's batch, with num_targets = the positions that show the mask token (where the loss is)."""

    def __init__(self, mlm, mask_token_id: int):
        self.mlm, self.mask_token_id = mlm, mask_token_id

    def __call__(self, examples: list[dict], seed: int, progress: float = 0.0) -> dict:
        batch = self.mlm(examples, seed=seed, progress=progress)
        batch.pop("masked_positions")  # the MLM head's flat indices; the regression finds [MASK] from labels
        batch["num_targets"] = int(((batch["input_ids"] == self.mask_token_id) & (batch["labels"] != -100)).sum())
        return batch


class Data2VecTextObjective(Data2VecObjective):
    name = "data2vec_text"
    input_unit = "tokens"

    def __init__(self, cfg, accelerator=None):
        from hfssl.data.text.corpus import load_text_datasets
        from hfssl.data.text.prepare import prepare_text_splits
        from hfssl.data.text.tokenizer import load_or_train_tokenizer
        from hfssl.objectives.data2vec.model import Data2VecTextPretraining
        from hfssl.objectives.data2vec.teacher import text_teacher
        from hfssl.objectives.text_base import check_vocab_fits, mlm_collator, usable_positions

        super().__init__(cfg)
        raw = load_text_datasets(cfg)
        self.tokenizer = load_or_train_tokenizer(cfg, raw["train"], accelerator)
        encoder = self._encoder()
        check_vocab_fits(encoder.config, self.tokenizer)
        self._check_top_k(encoder.config.num_hidden_layers)
        teacher = text_teacher(encoder, cfg.average_top_k_layers, accelerator.device if accelerator is not None else "cpu",
                               source=cfg.target_source)
        self.model = Data2VecTextPretraining(encoder, teacher, self.tokenizer.mask_token_id, head_layers=cfg.head_layers,
                                             target_norm=cfg.target_layer_norm, loss_beta=cfg.loss_beta, loss_scale=cfg.loss_scale)
        self.collator = Data2VecTextCollator(mlm_collator(cfg, self.tokenizer), self.tokenizer.mask_token_id)
        data = prepare_text_splits(cfg, self.tokenizer, raw, usable_positions(encoder.config), accelerator)
        self.train_dataset, self.eval_dataset, self.data_summary = data.train, data.validation, data.summary
        self._start_state()
        logger.info("data2vec text: %s, %d layers x %d, %.1fM parameters; targets: top %d layers' %s outputs, %s norm; tau %s -> %s "
                    "over %d updates.", encoder.config.model_type, encoder.config.num_hidden_layers, encoder.config.hidden_size,
                    sum(p.numel() for p in encoder.parameters()) / 1e6, cfg.average_top_k_layers, cfg.target_source, cfg.target_layer_norm,
                    cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_end_step)

    def _encoder(self):
        from transformers import AutoConfig, AutoModel

        from hfssl.objectives.text_base import text_model_config

        cfg = self.cfg
        config = AutoConfig.from_pretrained(cfg.model_name_or_path) if cfg.model_name_or_path else \
            text_model_config(cfg, self.tokenizer, cfg.max_seq_length)
        if config.model_type not in TEXT_MODEL_TYPES:
            raise ConfigError(f"data2vec_text supports the model types {', '.join(TEXT_MODEL_TYPES)} (the teacher reads their "
                              f"feed-forward outputs); {cfg.model_name_or_path or 'model_type'} is '{config.model_type}'.")
        # No pooler: it would get no gradient (DDP rejects unused parameters) and fine-tuning heads do not use it.
        no_pooler = {"add_pooling_layer": False} if config.model_type in BERT_LAYOUT_TYPES else {}
        model = AutoModel.from_pretrained(cfg.model_name_or_path, **no_pooler) if cfg.model_name_or_path else \
            AutoModel.from_config(config, **no_pooler)
        use_attn_implementation(model, cfg.attn_implementation, cfg.mixed_precision)
        return model

    def ema_source(self) -> torch.nn.Module:
        return self.model.encoder

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        from hfssl.data.text.corpus import BUILTIN_CORPUS
        from hfssl.hub import write_model_card
        from hfssl.objectives.text_base import masking_description

        cfg, encoder = self.cfg, self.model.encoder
        encoder.save_pretrained(output_dir)
        self.tokenizer.save_pretrained(output_dir)
        details = {
            "Base": cfg.model_name_or_path or f"from scratch ({encoder.config.model_type}, {encoder.config.num_hidden_layers} layers x "
                                               f"{encoder.config.hidden_size})",
            "Corpus": cfg.dataset_name or cfg.train_file or f"built-in {BUILTIN_CORPUS}",
            "Training data": self.data_summary,
            "Tokens seen": f"{summary.get('tokens_seen', 0):,.0f}",
            "Masking": masking_description(cfg) + "; loss at the [MASK] positions",
            "Sequence length": f"{cfg.max_seq_length} ({'line by line' if cfg.line_by_line else 'packed'})",
            **self._card_details(sum(p.numel() for p in encoder.parameters())),
        }
        write_model_card(output_dir, objective="data2vec (text)", pipeline_tag="feature-extraction", summary=summary,
                         tags=["data2vec", "self-supervised"], details=details,
                         datasets=[cfg.dataset_name] if cfg.dataset_name else None, config=cfg)


# ============================================================================ speech

class Data2VecAudioObjective(Data2VecObjective, SpeechObjective):
    name = "data2vec_audio"

    def __init__(self, cfg, accelerator=None):
        from transformers import Wav2Vec2FeatureExtractor

        from hfssl.collators.speech import AudioPretrainingCollator
        from hfssl.data.audio.geometry import receptive_field
        from hfssl.data.audio.splits import build_audio_splits
        from hfssl.objectives.data2vec.model import Data2VecAudioPretraining
        from hfssl.objectives.data2vec.teacher import audio_teacher

        super().__init__(cfg)
        main = accelerator is None or accelerator.is_main_process
        student = self._student()
        config = student.config
        teacher = audio_teacher(student, cfg.average_top_k_layers, accelerator.device if accelerator is not None else "cpu",
                                source=cfg.target_source)
        self.model = Data2VecAudioPretraining(student, teacher, cfg.feature_grad_scale, head_layers=cfg.head_layers,
                                              target_norm=cfg.target_layer_norm, loss_beta=cfg.loss_beta, loss_scale=cfg.loss_scale)
        # Data2VecAudio's conv layers are layer-normed: downstream batches need the attention mask.
        self.feature_extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=cfg.sampling_rate, padding_value=0.0,
                                                          do_normalize=cfg.do_normalize, return_attention_mask=True)
        self.check_crop_holds_a_span(config.conv_kernel, config.conv_stride)
        self.train_dataset, self.eval_dataset, self.data_report = build_audio_splits(
            cfg, cfg.output_dir if main else None, receptive_field(config.conv_kernel, config.conv_stride))
        if cfg.streaming and accelerator is not None and accelerator.num_processes > 1:
            from datasets.distributed import split_dataset_by_node

            rank = accelerator.process_index
            self.train_dataset.stream = split_dataset_by_node(self.train_dataset.stream, rank, accelerator.num_processes)
            if cfg.on_bad_audio == "skip":  # each process lists what it skips in its own file
                self.train_dataset.report_path = str(Path(cfg.output_dir) / f"skipped_audio_stream.rank{rank}.tsv")
        # The model takes frame_lengths (not a sample-level attention mask): the conv encoder does not use one.
        self.collator = AudioPretrainingCollator(
            config.conv_kernel, config.conv_stride, max_samples=self.max_samples, do_normalize=cfg.do_normalize,
            return_attention_mask=False, mask_prob=cfg.mask_time_prob, mask_length=cfg.mask_time_length,
            min_masks=cfg.mask_time_min_masks, num_negatives=0, sampling_rate=cfg.sampling_rate)
        self._start_state()

    def _student(self):
        from transformers import Data2VecAudioConfig, Data2VecAudioModel

        from hfssl.objectives.speech_base import load_initial_weights, speech_model_config

        cfg = self.cfg
        config = speech_model_config(cfg, "data2vec-audio", Data2VecAudioConfig())
        if config.add_adapter:
            raise ConfigError("add_adapter is a fine-tuning option; pretraining needs add_adapter=false.")
        self._check_top_k(config.num_hidden_layers)
        student = load_initial_weights(Data2VecAudioModel, cfg, config) if cfg.model_name_or_path \
            else Data2VecAudioModel(config)
        use_attn_implementation(student, cfg.attn_implementation, cfg.mixed_precision)
        logger.info("data2vec audio %s: %d layers x %d, %.1fM parameters; targets: top %d layers' %s outputs, %s norm; tau %s -> "
                    "%s over %d updates; feature grad scale %s.", "continued from " + cfg.model_name_or_path if cfg.model_name_or_path
                    else "from scratch", config.num_hidden_layers, config.hidden_size, sum(p.numel() for p in student.parameters()) / 1e6,
                    cfg.average_top_k_layers, cfg.target_source, cfg.target_layer_norm, cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_end_step,
                    cfg.feature_grad_scale)
        return student

    def ema_source(self) -> torch.nn.Module:
        return self.model.student.encoder

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        from hfssl.hub import write_model_card

        cfg, student = self.cfg, self.model.student
        student.save_pretrained(output_dir)
        self.feature_extractor.save_pretrained(output_dir)
        config = student.config
        details = {
            "Base": cfg.model_name_or_path or f"from scratch (Data2VecAudioModel, {config.num_hidden_layers} layers x {config.hidden_size})",
            "Audio": cfg.dataset_name or cfg.train_dir or cfg.train_file,
            "Hours of audio seen": f"{summary.get('audio_seconds_seen', 0.0) / 3600:.3f} h ({summary.get('steps', 0)} updates)",
            "Masking": f"mask_time_prob {cfg.mask_time_prob}, spans of {cfg.mask_time_length} frames, at least {cfg.mask_time_min_masks}",
            "Input": f"{cfg.sampling_rate} Hz, crops of {cfg.max_duration_in_seconds} s, do_normalize={cfg.do_normalize}, "
                     f"feature grad scale {cfg.feature_grad_scale}",
            **self._card_details(sum(p.numel() for p in student.parameters())),
        }
        write_model_card(output_dir, objective="data2vec (speech)", pipeline_tag="feature-extraction", summary=summary,
                         tags=["data2vec", "audio", "speech", "self-supervised"], details=details,
                         datasets=[cfg.dataset_name] if cfg.dataset_name else None, config=cfg)
