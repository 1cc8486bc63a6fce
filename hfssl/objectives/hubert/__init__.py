"""HuBERT: config.py, loss.py (pure), model.py, features.py (MFCC, layer features, alignment), kmeans.py,
labels.py (the target pipeline and its cache), objective.py."""
