"""CTC speech recognition fine-tuning: transcript normalization, the character vocabulary, and the task
(`speech-recognition-ctc`), on the speech fine-tuning base in `hfssl.finetune.speech`."""

from __future__ import annotations

import functools
import json
import logging
import re
import tempfile
from pathlib import Path

import numpy as np

from hfssl.errors import DataError
from hfssl.finetune.heads import CTCRecognizer
from hfssl.finetune.speech import SpeechTask, label_budget
from hfssl.finetune.tasks import load_or_init

logger = logging.getLogger(__name__)


def normalize_transcript(text: str, lowercase: bool, chars_to_ignore: str) -> str:
    """Lowercase (optionally), drop the characters of the regex character class `[chars_to_ignore]`,
    collapse whitespace."""
    if lowercase:
        text = text.lower()
    if chars_to_ignore:
        text = ignored_characters(chars_to_ignore).sub("", text)
    return " ".join(text.split())


@functools.lru_cache(maxsize=8)
def ignored_characters(chars_to_ignore: str) -> re.Pattern:
    """`chars_to_ignore` is the contents of a regex character class: `\\-` or a final `-` is a
    hyphen, `a-z` a range. Raises re.error when it is not a valid class."""
    return re.compile(f"[{chars_to_ignore}]")


def build_vocab(transcripts: list[str], word_delimiter: str) -> dict[str, int]:
    """Character vocabulary: [PAD] (the CTC blank) = 0, [UNK] = 1, the delimiter, then the sorted
    characters of the (normalized) transcripts, space mapped to the delimiter."""
    chars = sorted({c for t in transcripts for c in t} - {" "})
    if word_delimiter in chars:
        raise DataError(f"Transcripts contain the word delimiter '{word_delimiter}'; choose another word_delimiter_token.")
    tokens = ["[PAD]", "[UNK]", word_delimiter, *chars]
    return {t: i for i, t in enumerate(tokens)}


def ctc_min_frames(ids: list[int]) -> int:
    """Frames CTC needs for this target: one per token plus a blank between repeated tokens."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


class CTCTask(SpeechTask):
    name = "speech-recognition-ctc"
    _key_name = "transcription_column_name"
    head_suffix = "ForCTC"

    def __init__(self, cfg, accelerator=None):
        from transformers import AutoModelForCTC, AutoTokenizer, Wav2Vec2CTCTokenizer

        super().__init__(cfg, accelerator)
        self.label_key = cfg.transcription_column_name
        texts = {}
        for split, ds in self.splits.items():
            if split == "test" and self.label_key not in {k for r in ds.rows for k in r}:
                continue
            raw = self._column(ds, self.label_key, "transcription_column_name", split)
            norm = [normalize_transcript(t or "", cfg.lowercase, cfg.chars_to_ignore) for t in raw]
            empty = [r["path"] for r, t in zip(ds.rows, norm) if not t]
            if empty:
                shown = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
                raise DataError(f"{len(empty)} {split} file(s) have an empty transcript in '{self.label_key}' "
                                f"(after normalization): {shown}. Fix or remove these rows.")
            texts[split] = norm
        if cfg.do_train:
            vocab = build_vocab(texts["train"], cfg.word_delimiter_token)
            folder = tempfile.mkdtemp(prefix="hfssl-vocab-")
            (Path(folder) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
            self.tokenizer = Wav2Vec2CTCTokenizer(str(Path(folder) / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                                  word_delimiter_token=cfg.word_delimiter_token, do_lower_case=False,
                                                  bos_token=None, eos_token=None)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_name or self.source)
        encode = lambda t: self.tokenizer(t).input_ids  # noqa: E731
        self.texts = texts
        for split in ("validation", "test"):
            if split in texts:
                unk = sum(i == self.tokenizer.unk_token_id for t in texts[split] for i in encode(t))
                if unk:
                    logger.warning("%s transcripts hold %d characters not in the training vocabulary (scored as [UNK]).", split, unk)

        # Transcripts too long for their audio cannot be aligned: drop them from training, counted.
        self.filtered_too_long = 0
        if cfg.do_train:
            ds = self.splits["train"]
            keep = [i for i, (r, t) in enumerate(zip(ds.rows, texts["train"]))
                    if self._num_frames(int(r["num_samples"])) >= ctc_min_frames(encode(t))]
            self.filtered_too_long = len(ds) - len(keep)
            if self.filtered_too_long:
                logger.warning("Dropped %d of %d training files whose transcript is too long for their audio (CTC cannot align them).",
                               self.filtered_too_long, len(ds))
                if not keep:
                    raise DataError("Every training transcript is too long for its audio: CTC cannot align any of them.")
                self.splits["train"], texts["train"] = ds.select(keep), [texts["train"][i] for i in keep]
            if cfg.max_batch_seconds is not None:  # utterances are never cropped: each must fit a batch on its own
                ds = self.splits["train"]
                longest = int(np.argmax(ds.lengths))
                if ds.lengths[longest] > cfg.max_batch_seconds * self.sr:
                    raise DataError(f"max_batch_seconds {cfg.max_batch_seconds} is shorter than the training file "
                                    f"{ds.rows[longest]['path']} ({ds.lengths[longest] / self.sr:.1f} s); CTC keeps utterances whole, "
                                    f"so raise max_batch_seconds to at least {ds.lengths[longest] / self.sr:.1f} or drop that file.")
            chosen = label_budget(["all"] * len(texts["train"]), cfg)
            if chosen is not None:
                self.splits["train"], texts["train"] = self.splits["train"].select(chosen), [texts["train"][i] for i in chosen]

        config = self._finetune_config()
        config.vocab_size = len(self.tokenizer)
        config.pad_token_id = self.tokenizer.pad_token_id
        config.ctc_zero_infinity = cfg.ctc_zero_infinity
        config.ctc_loss_reduction = "mean"  # for users of the saved model; hfssl sums and normalizes itself
        blank = self.tokenizer.pad_token_id
        if cfg.probe:
            self.model = self._upstream_probe(len(self.tokenizer), "ctc", blank)
        else:
            model = load_or_init(AutoModelForCTC, cfg, config, self.pretrained, self.source)
            if cfg.freeze_feature_encoder:
                self._freeze_feature_encoder(model)
            self.model = CTCRecognizer(model, blank, cfg.ctc_zero_infinity)
            self._start_frozen()
        self.collator = self._collator(True, None)
        self._datasets(lambda values, split: [encode(t) for t in texts[split]])
        if self.train_dataset is not None:
            logger.info("CTC: vocabulary of %d tokens; %d train / %d validation / %d test files.", len(self.tokenizer),
                        len(self.train_dataset), len(self.eval_dataset or []), len(self.test_dataset or []))

    def evaluate_outputs(self, split: str, outputs: list) -> tuple[dict, list[dict]]:
        from hfssl.finetune.metrics import asr_metrics

        preds = self.tokenizer.batch_decode([o.tolist() for o in outputs])
        rows = [{"file": f, "prediction": p} for f, p in zip(self._files(split), preds)]
        if split not in self.texts:
            return {}, rows
        refs = self.texts[split]
        for row, ref in zip(rows, refs):
            row["reference"] = ref
        return asr_metrics(preds, refs), rows

    def extra_results(self) -> dict:
        return {"train_filtered_too_long": self.filtered_too_long} if self.cfg.do_train else {}

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        from transformers import Wav2Vec2Processor

        self._save_model(output_dir)
        Wav2Vec2Processor(feature_extractor=self.feature_extractor, tokenizer=self.tokenizer).save_pretrained(output_dir)
