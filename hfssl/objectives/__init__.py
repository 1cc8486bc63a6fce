"""Objectives: each builds its model, data and collator and tells the loop how to score a batch.

A plain dict maps recipe names to them; modules are imported on use so text users never load audio code.
"""

import importlib

OBJECTIVES = {
    "mlm": "hfssl.objectives.mlm:MLMObjective",
    "wav2vec2": "hfssl.objectives.wav2vec2:Wav2Vec2Objective",
    "hubert": "hfssl.objectives.hubert:HubertObjective",
}


def build_objective(cfg, accelerator=None):
    from accelerate.utils import set_seed

    set_seed(cfg.seed)  # model initialization is part of the run's reproducibility
    module, name = OBJECTIVES[cfg.objective].split(":")
    return getattr(importlib.import_module(module), name)(cfg, accelerator)
