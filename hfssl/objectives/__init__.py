"""The objectives, one folder each (`<name>/config.py`, `loss.py`, `objective.py`), registered in one line.

`register(name, config, objective)` takes the classes, or "module:Class" strings that are imported only
when that objective is used (text users never load audio code). `base.py` holds the protocol the loop
relies on; `text_base.py` and `speech_base.py` what several objectives share.
"""

from __future__ import annotations

import importlib

_REGISTRY: dict[str, tuple[object, object]] = {}


def register(name: str, config, objective) -> None:
    """Make `objective: <name>` available to recipes and run_pretrain.py."""
    _REGISTRY[name] = (config, objective)


register("mlm", "hfssl.objectives.mlm.config:MLMConfig", "hfssl.objectives.mlm.objective:MLMObjective")
register("wav2vec2", "hfssl.objectives.wav2vec2.config:Wav2Vec2PretrainConfig", "hfssl.objectives.wav2vec2.objective:Wav2Vec2Objective")
register("electra", "hfssl.objectives.electra.config:ElectraPretrainConfig", "hfssl.objectives.electra.objective:ElectraObjective")
register("hubert", "hfssl.objectives.hubert.config:HubertPretrainConfig", "hfssl.objectives.hubert.objective:HubertObjective")
register("data2vec_text", "hfssl.objectives.data2vec.config:Data2VecTextPretrainConfig", "hfssl.objectives.data2vec.objective:Data2VecTextObjective")
register("data2vec_audio", "hfssl.objectives.data2vec.config:Data2VecAudioPretrainConfig", "hfssl.objectives.data2vec.objective:Data2VecAudioObjective")
register("best_rq", "hfssl.objectives.best_rq.config:BestRQPretrainConfig", "hfssl.objectives.best_rq.objective:BestRQObjective")


def _load(ref):
    if not isinstance(ref, str):
        return ref
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def config_classes() -> dict[str, type]:
    """Objective name -> its config dataclass (what `objective:` in a recipe selects)."""
    return {name: _load(config) for name, (config, _) in _REGISTRY.items()}


def build_objective(cfg, accelerator=None):
    """The registered objective for `cfg.objective`, built (model, data, collator) with a seeded init."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)  # model initialization is part of the run's reproducibility
    return _load(_REGISTRY[cfg.objective][1])(cfg, accelerator)


def load_config(argv: list[str], default_objective: str = "mlm"):
    """A pretraining config from `[RECIPE.yaml] [--key value ...]`, for any registered objective."""
    from hfssl import config

    return config.load_config(argv, config_classes(), default_objective)
