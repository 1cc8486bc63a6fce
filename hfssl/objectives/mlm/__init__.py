"""Masked language modeling: config.py (settings), loss.py (sparse-head MLM loss), objective.py."""
