"""The optimizer (AdamW, no weight decay on biases and norms) and the learning-rate schedules: every
`lr_scheduler_type` of the config, with its own typed settings.

Each schedule is one of transformers' (`get_scheduler`); this module passes each the settings it
needs (checked at load in `TrainingArguments`) and says when it steps: after every update, or,
for reduce_lr_on_plateau, on the eval loss after every evaluation.
"""

from __future__ import annotations

import torch
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
from transformers import get_scheduler

from hfssl.errors import ConfigError


def build_optimizer(cfg, model: torch.nn.Module, device: torch.device | str = "cpu") -> torch.optim.AdamW:
    """AdamW over the trainable parameters: weight decay on matrices, none on biases, norms and other vectors.

    `device` is where the parameters will train (the model may still be on the CPU here). The fused kernel
    (one pass over all parameters) is used wherever torch has one, the CPU included, where torch's default
    is a loop over the tensors: on 2 CPU cores the small MLM recipe's update (vocabulary 16,384) takes 139
    instead of 156 ms (docs/performance.md)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                             fused=torch.device(device).type in _get_fused_kernels_supported_devices())


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, total_steps: int):
    """The schedule named by cfg.lr_scheduler_type over `total_steps` updates."""
    kind = cfg.lr_scheduler_type
    extra: dict = {}
    if kind == "cosine_with_min_lr":
        extra["min_lr"] = cfg.min_lr
    elif kind == "warmup_stable_decay":
        if cfg.warmup_steps + cfg.num_decay_steps > total_steps:
            raise ConfigError(f"warmup_steps ({cfg.warmup_steps}) + num_decay_steps ({cfg.num_decay_steps}) exceed the "
                              f"{total_steps} updates of this run: lower num_decay_steps.")
        # transformers' own default decay shape is cosine; min_lr_ratio is relative to the peak rate.
        extra = {"num_decay_steps": cfg.num_decay_steps, "min_lr_ratio": (cfg.min_lr or 0.0) / cfg.learning_rate}
    elif kind == "cosine_with_restarts" and cfg.num_cycles is not None:
        extra["num_cycles"] = cfg.num_cycles
    elif kind == "reduce_lr_on_plateau":
        # mode min: the metric is the eval loss. Patience counts evaluations, not updates.
        extra = {"mode": "min", "factor": cfg.plateau_factor if cfg.plateau_factor is not None else 0.1,
                 "patience": cfg.plateau_patience if cfg.plateau_patience is not None else 10}
    return get_scheduler(kind, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps,
                         scheduler_specific_kwargs=extra)


def steps_on_eval_loss(scheduler) -> bool:
    """True for reduce_lr_on_plateau: step it with the eval loss after each evaluation, not after each update."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
