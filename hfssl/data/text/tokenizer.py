"""Tokenizers: train one on the corpus (WordPiece or byte-level BPE), or load the one a run asks for."""

from __future__ import annotations

import itertools
import time
from typing import Iterable, Iterator

import datasets

from hfssl.errors import DataError

def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, lowercase: bool = True):
    """Train a fast tokenizer on the corpus: 'wordpiece' (BERT-style) or 'bpe' (byte-level, RoBERTa-style).

    Returns a `PreTrainedTokenizerFast` with the usual special tokens, ready for `save_pretrained`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2)
        tok.train_from_iterator(texts, trainer)
        # The trainer numbers the "##" continuation pieces in hash-map order, so two trainings on the same text give
        # the same vocabulary under different ids (measured: 306 of 8,192 ids differed between two runs on the
        # Debian corpus), and a "seeded" model then starts from different embeddings. Renumber: specials first, in
        # order, then the rest sorted. (A count tie can still pick a different merge upstream: tokenizers#1794.)
        vocab = tok.get_vocab()
        rest = sorted(t for t in vocab if t not in specials)
        tok.model = models.WordPiece({t: i for i, t in enumerate([*specials, *rest])}, unk_token="[UNK]")
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        tok.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    if kind == "bpe":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
        tok.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=512)
    raise ValueError(f"Unknown tokenizer kind '{kind}': use 'wordpiece' or 'bpe'.")


def load_or_train_tokenizer(cfg, train_split, accelerator=None):
    """The run's tokenizer: `tokenizer_name`, else the model's (`model_name_or_path`, or a `config_name`
    folder), else one trained on the first `tokenizer_train_samples` documents of `train_split`.

    A trained tokenizer is saved at once to output_dir/tokenizer and reused on resume and by the other
    processes: `tokenizers` training breaks frequency ties in hash order, so two trainings can differ.
    Raises ConfigError when a word-level masking strategy needs a fast tokenizer and there is none.
    """
    import logging
    from pathlib import Path

    from transformers import AutoTokenizer

    from hfssl.errors import ConfigError

    logger = logging.getLogger(__name__)
    source = cfg.tokenizer_name or cfg.model_name_or_path or (cfg.config_name if cfg.config_name and Path(cfg.config_name).is_dir() else None)
    if source:
        key = "tokenizer_name" if cfg.tokenizer_name else "model_name_or_path" if cfg.model_name_or_path else "config_name"
        try:
            tok = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:  # no such folder or Hub repository, or one without tokenizer files
            raise ConfigError(f"{key}: could not load a tokenizer from '{source}': {e}") from None
        if not tok.is_fast and cfg.mask_strategy != "token":
            raise ConfigError(f"mask_strategy={cfg.mask_strategy} needs a fast tokenizer (word ids); '{source}' is not one.")
        return tok
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
    docs = FirstDocuments(train_split, cfg.tokenizer_train_samples)
    logger.info("Training a %s tokenizer (vocab %d) on the first %s non-blank documents of the %s", kind, cfg.vocab_size,
                f"{cfg.tokenizer_train_samples:,}" if cfg.tokenizer_train_samples else "(all)", "stream (read once)" if docs.streamed else "train split")
    started = time.perf_counter()
    tok = train_tokenizer(docs, kind, cfg.vocab_size)
    if docs.count == 0:
        raise DataError("The train split has no non-blank text to train a tokenizer on: check train_file / dataset_name and "
                        "text_column_name.")
    logger.info("Trained the tokenizer on %d documents (%.1f MB of text) in %.1f s.", docs.count, docs.chars / 1e6,
                time.perf_counter() - started)
    if len(tok) < cfg.vocab_size / 2:  # a small corpus ends the merges early: the run silently gets a tiny vocabulary
        logger.warning("The trained tokenizer has %d tokens, far fewer than vocab_size %d: %d documents have too few "
                       "distinct words for that vocabulary. Lower vocab_size, or train the tokenizer on more text "
                       "(tokenizer_train_samples, a larger corpus).", len(tok), cfg.vocab_size, docs.count)
    tok.save_pretrained(saved)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return tok


class FirstDocuments:
    """The first `n` non-blank documents of a split (0: all), read once, in order, counted as they go.

    A map-style split is read in slices; a stream (`datasets.IterableDataset`, no length) is read from
    its start, and nothing past the n-th document is pulled from it."""

    def __init__(self, split, n: int):
        self.split, self.n = split, n
        self.streamed = isinstance(split, datasets.IterableDataset)
        self.count = self.chars = 0

    def __iter__(self) -> Iterator[str]:
        texts = (ex["text"] for ex in self.split) if self.streamed else _sliced(self.split)
        non_blank = (t for t in texts if t and not t.isspace())
        for text in itertools.islice(non_blank, self.n or None):
            self.count += 1
            self.chars += len(text)
            yield text


def _sliced(ds, size: int = 1000) -> Iterator[str]:
    for i in range(0, len(ds), size):
        yield from ds[i : i + size]["text"]
