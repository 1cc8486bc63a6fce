"""Collators: pad examples into batches and draw their masks (text in `text`, speech in `speech`,
fine-tuning in `finetune`). See `hfssl.collators.text` for the calling convention."""

from hfssl.collators.text import MLMCollator, pad_int_sequences
