"""Masked language modeling on any AutoModelForMaskedLM (BERT, RoBERTa, ModernBERT, DistilBERT, ...).

The loss runs the prediction head on the masked positions only (`loss.SparseMaskedLM`) and returns
the SUM of the token losses; the loop divides by the number of masked tokens in the whole update.
"""

from __future__ import annotations

import math

from transformers import AutoModelForMaskedLM

from hfssl.attention import use_attn_implementation
from hfssl.data.text.corpus import BUILTIN_CORPUS, load_text_datasets
from hfssl.data.text.prepare import prepare_text_splits
from hfssl.data.text.tokenizer import load_or_train_tokenizer
from hfssl.errors import ConfigError
from hfssl.objectives.base import Objective
from hfssl.objectives.mlm.config import MLMConfig
from hfssl.objectives.mlm.loss import SparseMaskedLM
from hfssl.objectives.text_base import (check_vocab_fits, masking_description, mlm_collator, text_model_config, text_packing,
                                       usable_positions)


class MLMObjective(Objective):
    name = "mlm"
    input_unit = "tokens"

    def __init__(self, cfg: MLMConfig, accelerator=None):
        super().__init__(cfg)
        raw = load_text_datasets(cfg)
        self.tokenizer = load_or_train_tokenizer(cfg, raw["train"], accelerator)
        mlm = self._model()
        check_vocab_fits(mlm.config, self.tokenizer)
        use_attn_implementation(mlm, cfg.attn_implementation, cfg.mixed_precision)
        self.model = SparseMaskedLM(mlm)
        self.collator = mlm_collator(cfg, self.tokenizer, text_packing(cfg, mlm.config))
        data = prepare_text_splits(cfg, self.tokenizer, raw, usable_positions(mlm.config), accelerator)
        self.train_dataset, self.eval_dataset, self.data_summary = data.train, data.validation, data.summary

    def _model(self):
        cfg = self.cfg
        if cfg.model_name_or_path:
            return AutoModelForMaskedLM.from_pretrained(cfg.model_name_or_path)
        config = text_model_config(cfg, self.tokenizer, cfg.max_seq_length)
        try:
            return AutoModelForMaskedLM.from_config(config)
        except ValueError as e:
            raise ConfigError(f"model_type '{config.model_type}' has no masked-LM head in transformers: {e}") from None

    def eval_summary(self, metrics: dict) -> dict:
        loss = metrics.get("eval_loss", float("nan"))
        if not math.isnan(loss):  # NaN: no targets (see evaluate), so no perplexity either, not inf
            metrics["eval_perplexity"] = math.exp(loss) if loss < 50 else float("inf")
        return metrics

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        from hfssl.hub import write_model_card

        mlm, cfg = self.model.mlm, self.cfg
        mlm.save_pretrained(output_dir)
        self.tokenizer.save_pretrained(output_dir)
        write_model_card(output_dir, objective="Masked language modeling", pipeline_tag="fill-mask", summary=summary, details={
            "Base": cfg.model_name_or_path or f"from scratch ({mlm.config.model_type}, {sum(p.numel() for p in mlm.parameters()) / 1e6:.1f}M parameters)",
            "Corpus": cfg.dataset_name or cfg.train_file or f"built-in {BUILTIN_CORPUS}",
            "Training data": self.data_summary,
            "Tokens seen": f"{summary.get('tokens_seen', 0):,.0f}",
            "Masking": masking_description(cfg),
            "Sequence length": f"{cfg.max_seq_length} ({'line by line' if cfg.line_by_line else 'packed'})",
        }, datasets=[cfg.dataset_name] if cfg.dataset_name else None, config=cfg)
