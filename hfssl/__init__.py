"""hfssl: self-supervised pretraining (MLM, wav2vec 2.0, HuBERT) and downstream fine-tuning on transformers + Accelerate."""

__version__ = "0.1.0"
