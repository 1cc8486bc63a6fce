"""ELECTRA replaced-token detection: config.py, loss.py (pure), model.py (generator + discriminator), objective.py."""
