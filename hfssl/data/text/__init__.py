"""Text data, one concern per module; knows nothing about training.

corpus.py     load files / globs of shards / a Hub dataset / the built-in corpus into text splits
readers.py    read local text files document by document, naming the file and line of any problem
tokenizer.py  train a WordPiece or byte-level BPE tokenizer (from a split or a stream), or load one
pack.py       tokenize and pack documents into blocks through datasets.map (bounded memory, exact)
stream.py     the same on the fly for a streamed corpus, resumable from a saved position
cache.py      reuse tokenized and packed corpora across runs (keyed by everything they depend on)
progress.py   documents/s and tokens/s bars for maps running in worker processes
prepare.py    all of it for a text objective: splits + tokenizer -> model-ready examples
"""
