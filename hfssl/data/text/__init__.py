"""Text data, one concern per module; knows nothing about training.

corpus.py     load files / globs of shards / a Hub dataset / the built-in corpus into text splits
tokenizer.py  train a WordPiece or byte-level BPE tokenizer, or load the run's tokenizer
pack.py       tokenize, pack documents into blocks (in memory or streamed)
prepare.py    all of it for a text objective: splits + tokenizer -> model-ready examples
"""
