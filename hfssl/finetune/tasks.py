"""What every fine-tuning task shares: the loop's `Objective` protocol, model loading
(pretrained vs. same architecture from random init), and the probe switch.

A task provides: `model` (a wrapper from `hfssl.finetune.heads`), `collator`, `train_dataset`,
`eval_dataset`, `test_dataset` (map-style, rows already carrying `labels`), `evaluate_outputs`
(per-example outputs -> metrics + prediction rows) and `save_outputs`.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch

from hfssl.attention import use_attn_implementation
from hfssl.errors import ConfigError
from hfssl.objectives.base import Objective

logger = logging.getLogger(__name__)


class Rows(torch.utils.data.Dataset):
    """A list of example dicts (or a Dataset) plus a fixed `train` flag the collators read."""

    def __init__(self, rows, train: bool):
        self.rows, self.train = rows, train

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {**self.rows[int(i)], "train": self.train}

    def __getitems__(self, indices):
        if hasattr(self.rows, "__getitems__"):
            return [{**r, "train": self.train} for r in self.rows.__getitems__([int(i) for i in indices])]
        return [self[i] for i in indices]


class Task(Objective):
    """What the three tasks share: the loop's `Objective` members plus the fine-tuning ones below.

    A task also provides `test_dataset` (or None), `evaluate_outputs(split, outputs)` (per-example
    outputs -> metrics + prediction rows) and `save_pretrained`.
    """

    name = "finetune"
    input_unit = "examples"
    test_dataset: Any = None
    last_confusion: Optional[np.ndarray] = None  # set by evaluate_outputs for single-label classification

    def __init__(self, cfg, accelerator=None):
        super().__init__(cfg)
        # processes: evaluation plans give each the same number of batches
        self.world = accelerator.num_processes if accelerator is not None else 1

    def eval_plan(self) -> list[list[int]]:
        return plan_for(self.eval_dataset, self.cfg.per_device_eval_batch_size, self.world)

    def eval_batches(self, dataset) -> list[list[int]]:
        """Batches for predicting over a whole split (validation or test), in any order; see `plan_for`."""
        return plan_for(dataset, self.cfg.per_device_eval_batch_size)

    def extra_results(self) -> dict:
        """Counts worth reporting next to the metrics (e.g. filtered examples)."""
        return {}

    # ------------------------------------------------------------------ probe
    @property
    def is_probe(self) -> bool:
        return bool(self.cfg.probe)

    def probe_report(self) -> Optional[dict]:
        if not self.is_probe:
            return None
        weights = self.model.layer_weights()
        return {"layer_weights": weights, "best_layer": int(np.argmax(weights)), "num_hidden_states": len(weights)}


def plan_for(dataset, batch_size: int, world: int = 1, order=None) -> list[list[int]]:
    """Evaluation batches in `order` (default: dataset order) of at most `batch_size` examples, as many
    as a multiple of `world` (when there are enough examples): under DDP every process must run
    the same number of forwards, since each forward may broadcast buffers."""
    n = len(dataset)
    order = np.arange(n) if order is None else np.asarray(order)
    count = -(-n // batch_size)
    if world > 1 and n >= world:
        count = -(-count // world) * world
    return [chunk.tolist() for chunk in np.array_split(order, count) if len(chunk)]


def model_source(cfg) -> tuple[str, bool]:
    """(where the architecture comes from, pretrained?)."""
    return (cfg.model_name_or_path, True) if cfg.model_name_or_path else (cfg.config_name, False)


def load_or_init(auto_class, cfg, config, pretrained: bool, source: str):
    """`auto_class.from_pretrained(source, config=config)` or `auto_class.from_config(config)` (random init),
    with the attention kernel of `cfg.attn_implementation` (unset: the fastest available).

    Heads whose shape changed (another label set) are re-initialized; the encoder weights load. A head saved
    by another task class (a pretraining head) is re-initialized too unless cfg.reuse_pretraining_head: some
    architectures name their task heads alike (ModernBERT's `head` in ForMaskedLM, ForTokenClassification and
    ForSequenceClassification). Loaded into a classifier, an ELECTRA discriminator's one-logit head cost 10 points
    of Debian-topic accuracy; a masked-LM head between -0.2 and +2.3 (docs/payoff/ablations.md). A fresh head is
    also what the random-init side starts from.
    """
    if pretrained:
        saved_as = list(config.architectures or [])  # the checkpoint's task classes (config was read from source)
        try:
            model, info = auto_class.from_pretrained(source, config=config, ignore_mismatched_sizes=True, output_loading_info=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"Could not load model '{source}': {e}") from None
        if not getattr(cfg, "reuse_pretraining_head", False):
            fresh_foreign_head(model, auto_class, config, info, saved_as)
    else:
        model = auto_class.from_config(config)
    use_attn_implementation(model, cfg.attn_implementation, cfg.mixed_precision)
    return model


def fresh_foreign_head(model, auto_class, config, info: dict, saved_as: Optional[list]) -> list[str]:
    """Re-initialize the weights outside the encoder that came from a checkpoint of another task class
    (as a fresh `auto_class.from_config(config)` initializes them); returns their names.

    info: from_pretrained's loading info (missing/mismatched keys were initialized fresh already).
    saved_as: the checkpoint config's `architectures`."""
    if not saved_as or type(model).__name__ in saved_as or model.base_model is model:
        return []  # the same task (e.g. fine-tuning a fine-tuned classifier further): its head is the point
    fresh_keys = set(info.get("missing_keys", [])) | {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])}
    prefix = model.base_model_prefix + "."
    loaded_head = [k for k in model.state_dict() if not k.startswith(prefix) and k not in fresh_keys]
    if loaded_head:
        fresh = auto_class.from_config(config).state_dict()
        model.load_state_dict({k: fresh[k] for k in loaded_head}, strict=False)
        logger.info("Re-initialized %s: saved by %s, not a %s head (reuse_pretraining_head keeps them).",
                    ", ".join(loaded_head), "/".join(saved_as), type(model).__name__)
    return loaded_head


def apply_overrides(config, overrides: dict) -> None:
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ConfigError(f"config_overrides: '{key}' is not a field of {type(config).__name__}.")
        setattr(config, key, value)
