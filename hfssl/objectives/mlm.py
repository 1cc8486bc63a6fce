"""Masked language modeling on any AutoModelForMaskedLM.

The loss runs the prediction head on the masked positions only (about 15-30% of tokens), which
saves the (tokens x vocab) logits everywhere else; it returns the SUM of the token losses, and the
loop divides by the number of masked tokens in the whole update.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import datasets
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, CONFIG_MAPPING

from hfssl.collators import MLMCollator
from hfssl.config import MLMConfig
from hfssl.errors import ConfigError
from hfssl.data import text as textdata
from hfssl.trainer import shuffled_batches

logger = logging.getLogger(__name__)

# How each architecture turns hidden states (N, H) into vocabulary logits (N, V). Models not listed
# fall back to the full forward (all positions), which is correct but slower.
HEADS: dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = {
    "bert": lambda m, h: m.cls(h),
    "roberta": lambda m, h: m.lm_head(h),
    "xlm-roberta": lambda m, h: m.lm_head(h),
    "camembert": lambda m, h: m.lm_head(h),
    "data2vec-text": lambda m, h: m.lm_head(h),
    "modernbert": lambda m, h: m.decoder(m.head(h)),
    "distilbert": lambda m, h: m.vocab_projector(m.vocab_layer_norm(m.activation(m.vocab_transform(h)))),
}


class SparseMaskedLM(torch.nn.Module):
    """Wraps an AutoModelForMaskedLM; forward returns the summed loss over masked positions.

    Wrapping (instead of calling parts of the model from the loop) keeps DDP/FSDP and
    torch.compile seeing one module with one forward.
    """

    def __init__(self, mlm: torch.nn.Module):
        super().__init__()
        self.mlm = mlm
        self.head = HEADS.get(mlm.config.model_type)

    def forward(self, input_ids, attention_mask, labels):
        selected = labels != -100  # (B, T)
        target = labels[selected]  # (N,) note: boolean indexing syncs with the GPU once
        if self.head is None:
            logits = self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits[selected]
        else:
            hidden = self.mlm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
            logits = self.head(self.mlm, hidden[selected])  # (N, V)
        loss_sum = F.cross_entropy(logits.float(), target, reduction="sum")
        accuracy = (logits.argmax(-1) == target).float().mean() if target.numel() else loss_sum.new_zeros(())
        return {"loss_sum": loss_sum, "accuracy": accuracy}


class MLMObjective:
    name = "mlm"
    input_unit = "tokens"

    def __init__(self, cfg: MLMConfig, accelerator=None):
        self.cfg = cfg
        main = accelerator is None or accelerator.is_main_process
        self.raw = textdata.load_text_datasets(cfg)
        self.tokenizer = self._tokenizer(accelerator)
        mlm = self._model()
        if mlm.config.vocab_size < len(self.tokenizer):
            raise ConfigError(
                f"The model's vocab_size ({mlm.config.vocab_size}) is smaller than the tokenizer's vocabulary "
                f"({len(self.tokenizer)}): token ids would index past the embeddings. Use the model's own tokenizer, "
                f"or start from a config (config_name/model_type) so hfssl sizes the model to the tokenizer.")
        self.model = SparseMaskedLM(mlm)
        self.collator = MLMCollator.from_tokenizer(
            self.tokenizer, mlm_probability=cfg.mlm_probability, mlm_probability_final=cfg.mlm_probability_final,
            mask_replace_prob=cfg.mask_replace_prob, random_replace_prob=cfg.random_replace_prob,
            mask_strategy=cfg.mask_strategy, span_geometric_p=cfg.span_geometric_p, span_max_length=cfg.span_max_length)
        self.train_dataset, self.eval_dataset = self._prepare(accelerator)
        if main and not cfg.streaming:
            stats = textdata.document_stats(self.train_dataset)
            logger.info("Training data: %d blocks, %d tokens", stats["rows"], stats["tokens"])

    # ------------------------------------------------------------------ build
    def _tokenizer(self, accelerator):
        cfg = self.cfg
        source = cfg.tokenizer_name or cfg.model_name_or_path or (cfg.config_name if cfg.config_name and Path(cfg.config_name).is_dir() else None)
        if source:
            tok = AutoTokenizer.from_pretrained(source)
            if not tok.is_fast and cfg.mask_strategy != "token":
                raise ConfigError(f"mask_strategy={cfg.mask_strategy} needs a fast tokenizer (word ids); '{source}' is not one.")
            return tok
        # A trained tokenizer is saved at once and reused on resume and by the other processes:
        # `tokenizers` training breaks frequency ties in hash order, so two trainings can differ.
        saved = Path(cfg.output_dir) / "tokenizer"
        if (saved / "tokenizer.json").is_file() and cfg.resume_from_checkpoint:
            logger.info("Reusing the tokenizer trained at the start of this run: %s", saved)
            return AutoTokenizer.from_pretrained(saved)
        if accelerator is not None and not accelerator.is_main_process:
            accelerator.wait_for_everyone()
            return AutoTokenizer.from_pretrained(saved)
        kind = cfg.tokenizer_type
        if kind == "auto":
            kind = "bpe" if cfg.model_type in ("roberta", "xlm-roberta", "camembert", "data2vec-text", "modernbert") else "wordpiece"
        train = self.raw["train"]
        n = len(train) if cfg.tokenizer_train_samples == 0 else min(cfg.tokenizer_train_samples, len(train))
        logger.info("Training a %s tokenizer (vocab %d) on %d documents", kind, cfg.vocab_size, n)
        texts = (train[i : i + 1000]["text"] for i in range(0, n, 1000))
        tok = textdata.train_tokenizer((t for chunk in texts for t in chunk), kind, cfg.vocab_size)
        tok.save_pretrained(saved)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        return tok

    def _model(self):
        cfg = self.cfg
        if cfg.model_name_or_path:
            return AutoModelForMaskedLM.from_pretrained(cfg.model_name_or_path)
        model_type = AutoConfig.from_pretrained(cfg.config_name).model_type if cfg.config_name else cfg.model_type
        if model_type not in CONFIG_MAPPING:
            raise ConfigError(f"model_type '{model_type}' is unknown to transformers; e.g. bert, roberta, modernbert, distilbert.")
        reference = CONFIG_MAPPING[model_type]()
        for key in cfg.config_overrides:
            if not hasattr(reference, key):
                raise ConfigError(f"config_overrides: '{key}' is not a field of {type(reference).__name__}.")
        # Overrides go through the constructor so derived fields (e.g. ModernBERT's layer_types) follow them.
        if cfg.config_name:
            config = AutoConfig.from_pretrained(cfg.config_name, **cfg.config_overrides)
        else:
            config = CONFIG_MAPPING[model_type](**cfg.config_overrides)
        # A fresh model is sized to its tokenizer, with the tokenizer's special token ids.
        config.vocab_size = len(self.tokenizer)
        config.pad_token_id = self.tokenizer.pad_token_id
        for name in ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
            tok_id = getattr(self.tokenizer, name, None)
            if tok_id is not None and hasattr(config, name):
                setattr(config, name, tok_id)
        needed = cfg.max_seq_length + (2 if config.model_type in ("roberta", "xlm-roberta", "camembert", "data2vec-text") else 0)
        if getattr(config, "max_position_embeddings", needed) < needed:
            config.max_position_embeddings = needed
        try:
            return AutoModelForMaskedLM.from_config(config)
        except ValueError as e:
            raise ConfigError(f"model_type '{config.model_type}' has no masked-LM head in transformers: {e}") from None

    def _prepare(self, accelerator):
        cfg, tok = self.cfg, self.tokenizer
        with_words = cfg.mask_strategy != "token"
        max_pos = getattr(self.model.mlm.config, "max_position_embeddings", None)
        if max_pos is not None and self.model.mlm.config.model_type in ("roberta", "xlm-roberta", "camembert", "data2vec-text"):
            max_pos -= 2  # RoBERTa position ids start after the padding index
        if max_pos is not None and cfg.max_seq_length > max_pos:
            raise ConfigError(f"max_seq_length {cfg.max_seq_length} exceeds the model's {max_pos} positions.")
        cls_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        sep_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        splits = {}
        for split, ds in self.raw.items():
            if cfg.streaming:
                if accelerator is not None and accelerator.num_processes > 1 and split == "train":
                    from datasets.distributed import split_dataset_by_node

                    ds = split_dataset_by_node(ds, accelerator.process_index, accelerator.num_processes)
                toks = textdata.tokenize(ds, tok, with_words, max_length=cfg.max_seq_length if cfg.line_by_line else None)
                if not cfg.line_by_line:
                    toks = _PackedStream(toks, cfg.max_seq_length, cls_id, sep_id, with_words)
                splits[split] = toks
                continue
            ctx = accelerator.main_process_first() if accelerator is not None else _null()
            with ctx:  # the main process tokenizes; the others read its cache
                toks = textdata.tokenize(ds, tok, with_words, cfg.preprocessing_num_workers,
                                         max_length=cfg.max_seq_length if cfg.line_by_line else None)
            if not cfg.line_by_line:
                toks = textdata.pack_blocks(toks, cfg.max_seq_length, cls_id, sep_id, with_words)
            if len(toks) == 0:
                raise ConfigError(f"The {split} split is empty after tokenization.")
            splits[split] = toks.with_format("numpy")
        if cfg.streaming and "validation" in splits:
            splits["validation"] = datasets.Dataset.from_list(list(splits["validation"].__iter__())[:2000]).with_format("numpy")
        return splits["train"], splits.get("validation")

    # ------------------------------------------------------------------ loop hooks
    def batch_plan(self, epoch: int, seed: int) -> list[list[int]]:
        return shuffled_batches(len(self.train_dataset), self.cfg.per_device_train_batch_size, seed, epoch)

    def eval_plan(self) -> list[list[int]]:
        return shuffled_batches(len(self.eval_dataset), self.cfg.per_device_eval_batch_size, 0, 0, shuffle=False)

    def on_update(self, step: int, total_steps: int) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def enable_gradient_checkpointing(self) -> None:
        self.model.mlm.gradient_checkpointing_enable()

    def eval_summary(self, metrics: dict) -> dict:
        import math

        loss = metrics.get("eval_loss", float("nan"))
        metrics["eval_perplexity"] = math.exp(loss) if loss < 50 else float("inf")
        return metrics

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        from hfssl.hub import write_model_card

        self.model.mlm.save_pretrained(output_dir)
        self.tokenizer.save_pretrained(output_dir)
        cfg = self.cfg
        corpus = cfg.dataset_name or cfg.train_file or f"built-in {textdata.BUILTIN_CORPUS}"
        write_model_card(output_dir, objective="Masked language modeling", pipeline_tag="fill-mask", summary=summary, details={
            "Base": cfg.model_name_or_path or f"from scratch ({self.model.mlm.config.model_type}, {sum(p.numel() for p in self.model.parameters()) / 1e6:.1f}M parameters)",
            "Corpus": corpus,
            "Tokens seen": f"{summary.get('tokens_seen', 0):,.0f}",
            "Masking": f"{cfg.mask_strategy}, rate {cfg.mlm_probability}" + (f" -> {cfg.mlm_probability_final}" if cfg.mlm_probability_final else "")
                       + f", [MASK]/random/unchanged {cfg.mask_replace_prob:.2f}/{cfg.random_replace_prob:.2f}/{1 - cfg.mask_replace_prob - cfg.random_replace_prob:.2f}",
            "Sequence length": f"{cfg.max_seq_length} ({'line by line' if cfg.line_by_line else 'packed'})",
        }, datasets=[cfg.dataset_name] if cfg.dataset_name else None, config=cfg)


class _PackedStream(torch.utils.data.IterableDataset):
    """Streaming packing: blocks built on the fly from the tokenized stream (no length)."""

    def __init__(self, tokenized, block_size, cls_id, sep_id, with_words):
        self.tokenized, self.args = tokenized, (block_size, cls_id, sep_id, with_words)

    def __iter__(self):
        return textdata.pack_stream(iter(self.tokenized), *self.args)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
