"""Local evaluate module (loaded by path with evaluate.load)."""
