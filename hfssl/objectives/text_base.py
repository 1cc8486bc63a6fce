"""Settings shared by the text objectives (MLM, ELECTRA, ...): model source, tokenizer and corpus,
masking. An objective's config is `TextPretrainConfig` plus its own fields; every check runs at load."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Optional

from hfssl import attention
from hfssl.attention import OFFSET_POSITIONS  # RoBERTa family: positions start at padding_idx + 1
from hfssl.config import TrainingArguments, _help
from hfssl.data.files import TEXT_FILE_EXTENSIONS, data_format, resolve_data_files
from hfssl.collators.packing import PackedLayout
from hfssl.data.text.corpus import BUILTIN_FILES
from hfssl.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class TextModelArguments:
    """Where the model comes from: a checkpoint to continue, a config, or a fresh architecture."""

    model_name_or_path: Optional[str] = _help("Continue pretraining from this checkpoint (local folder or Hub id).", None)
    config_name: Optional[str] = _help("Build a fresh model from this config (local folder, config.json or Hub id).", None)
    model_type: str = _help("Architecture for a fresh model when neither model_name_or_path nor config_name is set.", "bert")
    config_overrides: dict = _help("Config fields for a fresh model, e.g. {hidden_size: 256} or 'hidden_size=256,num_hidden_layers=4' on the CLI (merged over the recipe's; '' clears them).", {})
    attn_implementation: Optional[Literal["sdpa", "flash_attention_2", "eager"]] = _help(attention.HELP, None)

    def _check_text_model(self) -> None:
        if self.model_name_or_path and self.config_name:
            raise ConfigError("Can't provide both model_name_or_path and config_name: the first continues a checkpoint, "
                              "the second builds a fresh model. Choose one.")
        attention.check_attn_implementation(self.attn_implementation, self.mixed_precision)


@dataclass
class TextDataArguments:
    """The corpus, its tokenizer, and how documents become examples."""

    tokenizer_name: Optional[str] = _help("Tokenizer to use; default: the model's, or one trained on the corpus.", None)
    tokenizer_type: Literal["auto", "wordpiece", "bpe"] = _help("Kind of tokenizer to train: WordPiece (BERT), byte-level BPE (RoBERTa); auto picks by model_type.", "auto")
    vocab_size: int = _help("Vocabulary size of a tokenizer trained on the corpus.", 30522)
    tokenizer_train_samples: int = _help("Documents used to train a tokenizer (0 = all).", 200000)
    builtin_corpus: Literal["python-docstrings", "debian-descriptions"] = _help(
        "Offline corpus used when neither train_file nor dataset_name is given: python-docstrings (the running Python's "
        "standard-library docstrings, on any machine) or debian-descriptions (59,547 Debian package descriptions that ship "
        "with the source checkout: the unlabeled side of the Debian topic payoff benchmark).", "python-docstrings")
    dataset_name: Optional[str] = _help("A `datasets` dataset (Hub id or local path).", None)
    dataset_config_name: Optional[str] = _help("Its configuration name.", None)
    train_file: Optional[str] = _help("Training text: .txt (one document per line), .csv, .json, .jsonl or .parquet, or a glob of such shards ('data/*.txt.gz'; with streaming and several processes each reads its own shards).", None)
    validation_file: Optional[str] = _help("Validation text in the same formats (a path or a glob).", None)
    validation_split_percentage: float = _help("Percent of train held out when no validation set is given.", 5.0)
    text_column_name: Optional[str] = _help("Column holding the text (default 'text', or the only string column).", None)
    max_seq_length: int = _help("Tokens per example (block size when packing).", 128)
    line_by_line: bool = _help("One example per document (truncated) instead of packed blocks.", False)
    padding_free: Optional[bool] = _help("line_by_line: pack each micro-batch's examples into rows without padding, attention kept "
                                         "within each example (position ids restart per example). Unset: on where the model "
                                         "supports it (" + ", ".join(attention.PACKABLE) + "), except on a CUDA GPU with sdpa or "
                                         "eager attention (slower than padding there); else padded batches.", None)
    streaming: bool = _help("Stream the corpus instead of loading it (needs max_steps).", False)
    preprocessing_num_workers: Optional[int] = _help("Processes for tokenization.", None)
    max_train_samples: Optional[int] = _help("Keep only the first N documents (debugging, quick runs).", None)

    def _check_text_data(self) -> None:
        if self.dataset_name and (self.train_file or self.validation_file):
            raise ConfigError("Can't provide both dataset_name and train_file/validation_file. Choose one.")
        if self.dataset_name is None and self.train_file is None and self.builtin_corpus in BUILTIN_FILES:
            path = BUILTIN_FILES[self.builtin_corpus]
            if not path.is_file():
                raise ConfigError(f"builtin_corpus '{self.builtin_corpus}' is read from {path}, which is missing (it ships with the "
                                  f"source checkout, not with an installed wheel): pass --train_file with your text, or "
                                  f"--builtin_corpus python-docstrings.")
            self.train_file = str(path)  # from here on exactly `--train_file <that file>`
        formats: dict[str, str] = {}  # extension -> the first file of it
        for key in ("train_file", "validation_file"):
            for f in resolve_data_files(key, getattr(self, key), TEXT_FILE_EXTENSIONS):
                formats.setdefault(data_format(f), f"{key} {f}")
        if len(formats) > 1:
            found = "; ".join(f"{fmt} ({where})" for fmt, where in sorted(formats.items()))
            raise ConfigError(f"train_file and validation_file must all have one format (extension); found {found}. "
                              f"Convert them to one format (one loader reads every split).")
        if self.max_seq_length < 8:
            raise ConfigError(f"max_seq_length must be >= 8, got {self.max_seq_length}.")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError("validation_split_percentage must be in [0, 100).")
        if self.streaming and self.max_steps < 1:
            raise ConfigError("streaming needs max_steps: a stream has no known length. Set --max_steps.")
        if self.vocab_size < 100:
            raise ConfigError(f"vocab_size must be >= 100, got {self.vocab_size}.")
        if self.tokenizer_train_samples < 0:  # else itertools.islice's ValueError when the tokenizer is trained
            raise ConfigError(f"tokenizer_train_samples must be >= 0 (0 = every document), got {self.tokenizer_train_samples}.")
        if self.max_train_samples is not None and self.max_train_samples < 1:  # else "0 documents: too few to hold out"
            raise ConfigError(f"max_train_samples must be >= 1 (leave it unset for every document), got {self.max_train_samples}.")
        if self.padding_free and not self.line_by_line:
            raise ConfigError("padding_free packs line_by_line examples; packed blocks (line_by_line false) have no padding. "
                              "Set line_by_line true or unset padding_free.")


@dataclass
class MaskingArguments:
    """Which tokens are hidden and how they are corrupted (hfssl.masking.tokens)."""

    mlm_probability: float = _help("Fraction of tokens to predict.", 0.15)
    mlm_probability_final: Optional[float] = _help("If set, the masking rate moves linearly from mlm_probability to this over training.", None)
    mask_replace_prob: float = _help("Of the selected tokens, fraction replaced by [MASK].", 0.8)
    random_replace_prob: float = _help("Of the selected tokens, fraction replaced by a random token.", 0.1)
    mask_strategy: Literal["token", "whole_word", "span"] = _help("Mask single tokens, whole words, or SpanBERT word spans. A word is what the tokenizer's pre-tokenizer calls one (word_ids()); BERT's splits off punctuation.", "token")
    span_geometric_p: float = _help("SpanBERT: span length in words ~ Geometric(p), clipped to span_max_length.", 0.2)
    span_max_length: int = _help("SpanBERT: longest span in words.", 10)

    def _check_masking(self) -> None:
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}.")
        if self.mlm_probability_final is not None and not 0 < self.mlm_probability_final < 1:
            raise ConfigError(f"mlm_probability_final must be in (0, 1), got {self.mlm_probability_final}.")
        if min(self.mask_replace_prob, self.random_replace_prob) < 0 or self.mask_replace_prob + self.random_replace_prob > 1:
            raise ConfigError("mask_replace_prob and random_replace_prob must be >= 0 and sum to at most 1.")
        if not 0 < self.span_geometric_p <= 1 or self.span_max_length < 1:
            raise ConfigError("span_geometric_p must be in (0, 1] and span_max_length >= 1.")


@dataclass
class TextPretrainConfig(MaskingArguments, TextDataArguments, TextModelArguments, TrainingArguments):
    """Loop settings + model source + corpus + masking (fields listed in that order by --help)."""

    def __post_init__(self) -> None:
        super().__post_init__()  # TrainingArguments: types and loop settings
        self._check_text_model()
        self._check_text_data()
        self._check_masking()


def text_model_config(cfg: TextModelArguments, tokenizer, max_seq_length: int, model_type: Optional[str] = None):
    """A fresh model's config: `config_name` or `model_type` (or the given one), `config_overrides`,
    then sized to the tokenizer (vocab, special token ids) and to `max_seq_length` positions.

    Overrides go through the config constructor so derived fields (e.g. ModernBERT's layer_types) follow them.
    """
    from transformers import CONFIG_MAPPING

    from hfssl.hub import read_model_config

    if model_type is None:
        model_type = read_model_config(cfg.config_name, "config_name").model_type if cfg.config_name else cfg.model_type
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"model_type '{model_type}' is unknown to transformers; e.g. bert, roberta, modernbert, distilbert.")
    reference = CONFIG_MAPPING[model_type]()
    for key in cfg.config_overrides:
        if not hasattr(reference, key):
            raise ConfigError(f"config_overrides: '{key}' is not a field of {type(reference).__name__}.")
    if cfg.config_name:
        config = read_model_config(cfg.config_name, "config_name", **cfg.config_overrides)
    else:
        config = CONFIG_MAPPING[model_type](**cfg.config_overrides)
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    # A BERT-style tokenizer has [CLS]/[SEP] but no BOS/EOS: those play their part (as the corpus encoders do);
    # an id left at the architecture's default (ModernBERT: 50281/50282) would point outside a small vocabulary.
    fallback = {"bos_token_id": "cls_token_id", "eos_token_id": "sep_token_id"}
    for name in ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
        tok_id = getattr(tokenizer, name, None)
        if tok_id is None and name in fallback:
            tok_id = getattr(tokenizer, fallback[name], None)
        if hasattr(config, name):
            if tok_id is not None:
                setattr(config, name, tok_id)
            elif getattr(config, name) is not None and getattr(config, name) >= config.vocab_size:
                setattr(config, name, None)
    needed = max_seq_length + (2 if config.model_type in OFFSET_POSITIONS else 0)
    if getattr(config, "max_position_embeddings", needed) < needed:
        if "max_position_embeddings" in cfg.config_overrides:  # the user's own value is overruled: say so
            logger.warning("config_overrides max_position_embeddings=%d is below what max_seq_length %d needs: raised to %d. "
                           "Set max_position_embeddings >= %d, or lower max_seq_length.", config.max_position_embeddings,
                           max_seq_length, needed, needed)
        config.max_position_embeddings = needed
    return config


def usable_positions(config) -> Optional[int]:
    """Tokens per example the model can take (None: no limit in its config)."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and config.model_type in OFFSET_POSITIONS:
        positions -= 2  # position ids start after the padding index
    return positions


def check_vocab_fits(config, tokenizer) -> None:
    if config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"The model's vocab_size ({config.vocab_size}) is smaller than the tokenizer's vocabulary "
            f"({len(tokenizer)}): token ids would index past the embeddings. Use the model's own tokenizer, "
            f"or start from a config (config_name/model_type) so hfssl sizes the model to the tokenizer.")


def text_packing(cfg: TextPretrainConfig, config) -> Optional[PackedLayout]:
    """The padding-free layout of line-by-line batches for a model with this config, or None (padded batches).

    Packed blocks (line_by_line false) are full: nothing to gain. padding_free true for a model that cannot
    take packed input is a ConfigError; unset, such a model falls back to padded batches (logged)."""
    if not cfg.line_by_line:
        return None
    return attention.packed_layout(config, cfg.max_seq_length, cfg.padding_free)


def mlm_collator(cfg: MaskingArguments, tokenizer, packing: Optional[PackedLayout] = None):
    """The MLM collator for the recipe's masking settings (and padding-free layout)."""
    from hfssl.collators import MLMCollator

    return MLMCollator.from_tokenizer(
        tokenizer, mlm_probability=cfg.mlm_probability, mlm_probability_final=cfg.mlm_probability_final,
        mask_replace_prob=cfg.mask_replace_prob, random_replace_prob=cfg.random_replace_prob,
        mask_strategy=cfg.mask_strategy, span_geometric_p=cfg.span_geometric_p, span_max_length=cfg.span_max_length,
        packing=packing)


def masking_description(cfg: MaskingArguments) -> str:
    """One line for model cards."""
    rate = f"{cfg.mlm_probability}" + (f" -> {cfg.mlm_probability_final}" if cfg.mlm_probability_final else "")
    keep = 1 - cfg.mask_replace_prob - cfg.random_replace_prob
    return (f"{cfg.mask_strategy}, rate {rate}, [MASK]/random/unchanged "
            f"{cfg.mask_replace_prob:.2f}/{cfg.random_replace_prob:.2f}/{keep:.2f}")
