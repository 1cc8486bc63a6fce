"""wav2vec 2.0: config.py (settings), loss.py (pure loss terms), model.py (forward), objective.py."""
