"""BEST-RQ: config.py, quantizer.py (the frozen random-projection quantizer), loss.py (pure), model.py, objective.py."""
