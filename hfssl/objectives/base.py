"""The objective protocol: everything the training loop asks of an objective, and nothing more.

The loop (`hfssl.trainer.train`) knows no objective by name. It is handed an `Objective` and uses
exactly the members declared here. `Objective` gives every optional member an empty default, so an
objective writes only what it needs; the required ones are `model`, `collator`, `train_dataset` and
`save_pretrained` (a toy objective in tests/unit/test_objective_protocol.py is the smallest example).

The data contract between the parts (B = examples in a micro-batch):

* `collator(examples, seed, progress)` -> dict of model inputs (tensors) plus
    - `num_targets`: an int (one loss term) or `{term: int}` (several): how many predictions each
      loss term sums over in this micro-batch (masked tokens, masked frames, real tokens, labels);
    - `num_inputs`: tokens / audio seconds / examples, for throughput logs.
* `model(**inputs)` -> dict with
    - `loss_sum`: a scalar (one term) or `{term: scalar}`, each the SUM over that term's targets,
      already multiplied by the term's weight;
    - any other scalar: a metric, the mean over this micro-batch's targets. The loop weights it by the
      micro-batch's count of the term its name starts with (`discriminator_accuracy` -> term
      `discriminator`), else by the first term's count.
  The loop counts every term's targets over the whole update (all accumulation steps and processes)
  before the forward passes and divides each term by its own global count, so the result does not
  depend on how the update is cut into micro-batches or processes.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Callable, Optional

import torch

from hfssl.data.batching import shuffled_batches


class Objective:
    """Base class: the loop's view of an objective, with empty defaults for the optional members."""

    name: str = "objective"
    input_unit: str = "examples"  # what num_inputs counts: "tokens", "audio_seconds", "examples"
    model: torch.nn.Module  # forward(**inputs) -> {"loss_sum": ..., **metrics}; see the module docstring
    collator: Callable[..., dict]  # (examples, seed, progress) -> inputs + num_targets + num_inputs
    train_dataset: Any  # map-style (indexed by batch_plan) or iterable (a stream, sharded per process)
    eval_dataset: Any = None

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def streaming(self) -> bool:
        """The training data is a stream (no length): batches come in stream order, epochs restart it."""
        return not isinstance(self.train_dataset, Sized)

    def batch_plan(self, epoch: int, seed: int) -> list[list[int]]:
        """Micro-batches of training indices for one epoch, a pure function of (epoch, seed)."""
        return shuffled_batches(len(self.train_dataset), self.cfg.per_device_train_batch_size, seed, epoch)

    def eval_plan(self) -> list[list[int]]:
        """Evaluation batches, the same at every evaluation."""
        return shuffled_batches(len(self.eval_dataset), self.cfg.per_device_eval_batch_size, 0, 0, shuffle=False)

    def on_update(self, step: int, total_steps: int) -> dict[str, float]:
        """After optimizer update `step`: advance schedules the objective owns; return values to log."""
        return {}

    def check_health(self, window: list[dict]) -> Optional[str]:
        """Look at the log rows since the last report; return a reason to stop, or None to go on.

        May raise `hfssl.errors.RollbackRequested` to go back to an earlier checkpoint."""
        return None

    def state_dict(self) -> dict:
        """Objective state that a checkpoint must carry for exact resume: JSON values (saved in
        trainer_state.json) and top-level tensors (saved as safetensors, e.g. an EMA teacher's weights)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def enable_gradient_checkpointing(self) -> None:
        """Turn on activation checkpointing in every `transformers` model inside `self.model`."""
        from transformers import PreTrainedModel

        found = [m for m in self.model.modules() if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing]
        if not found:
            from hfssl.errors import ConfigError

            raise ConfigError(f"gradient_checkpointing: the {self.name} model has no transformers model that supports it.")
        for m in found:
            if not m.is_gradient_checkpointing:
                m.gradient_checkpointing_enable()

    def eval_summary(self, metrics: dict[str, float]) -> dict[str, float]:
        """Add derived figures to the evaluation metrics (e.g. perplexity)."""
        return metrics

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        """Write the final model so that it loads with `from_pretrained` (and a model card)."""
        raise NotImplementedError(f"{type(self).__name__} must implement save_pretrained.")
