"""Every advertised learning-rate schedule runs in the loop with its own settings, checked at load."""

from __future__ import annotations

import json
import math

import pytest

from hfssl.config import SCHEDULERS, TrainingArguments
from hfssl.errors import ConfigError
from hfssl.trainer import train
from test_trainer_guards import ToyObjective, _cfg

# The settings each schedule needs; 8 updates, 2 of warmup (none for plateau and constant, which have none).
SETTINGS = {
    "cosine_with_min_lr": {"min_lr": 0.01},
    "warmup_stable_decay": {"num_decay_steps": 3, "min_lr": 0.01},
    "cosine_with_restarts": {"num_cycles": 2},
    "reduce_lr_on_plateau": {"eval_steps": 2, "warmup_steps": 0, "plateau_patience": 0, "plateau_factor": 0.5},
    "constant": {"warmup_steps": 0},
}


class _WithEvalSet(ToyObjective):
    """An eval set whose loss never improves (y has nothing to do with x), for reduce_lr_on_plateau."""

    def __init__(self):
        super().__init__()
        self.eval_dataset = [{"x": i / 8, "y": (-1) ** i * 5.0} for i in range(8)]

    def eval_plan(self):
        return [list(range(8))]


def _lrs(out) -> list[float]:
    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    return [r["lr"] for r in rows if "lr" in r]


REFERENCE_KINDS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")


def _reference_lrs(kind: str, settings: dict) -> list[float]:
    """The rate transformers.get_scheduler gives after each of 8 updates (peak 0.1, as the toy config)."""
    import torch
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    extra = {"num_cycles": settings["num_cycles"]} if "num_cycles" in settings else None
    schedule = get_scheduler(kind, opt, num_warmup_steps=settings["warmup_steps"], num_training_steps=8,
                             scheduler_specific_kwargs=extra)
    out = []
    for _ in range(8):
        opt.step()
        schedule.step()
        out.append(schedule.get_last_lr()[0])
    return out


@pytest.mark.parametrize("kind", SCHEDULERS)
def test_every_scheduler_runs_with_its_settings(tmp_path, kind):
    settings = {"max_steps": 8, "warmup_steps": 2, "lr_scheduler_type": kind, **SETTINGS.get(kind, {})}
    objective = _WithEvalSet() if kind == "reduce_lr_on_plateau" else ToyObjective()
    summary = train(_cfg(tmp_path, **settings), objective)
    assert summary["steps"] == 8
    lrs = _lrs(tmp_path / "o")
    assert len(lrs) == 8 and all(math.isfinite(x) and x >= 0 for x in lrs)
    if kind in REFERENCE_KINDS:  # the same values as transformers' own schedule with these settings
        assert lrs == pytest.approx(_reference_lrs(kind, settings), abs=1e-9)
    if kind == "cosine_with_min_lr":
        assert lrs[-1] == pytest.approx(0.01, rel=0.05) and min(lrs[2:]) >= 0.01 - 1e-12  # ends at min_lr, never below
    if kind == "warmup_stable_decay":
        assert lrs[2:5] == pytest.approx([0.1] * 3)  # stable at the peak until the 3 decay updates
        assert lrs[-1] == pytest.approx(0.01, abs=0.01) and lrs[-1] < lrs[-2] < lrs[-3] < 0.1
    if kind == "reduce_lr_on_plateau":
        # Evaluations at steps 2, 4, 6: the first sets the best loss, each later one (no improvement,
        # patience 0) halves the rate after it.
        assert lrs == pytest.approx([0.1] * 4 + [0.05] * 2 + [0.025] * 2)


def test_scheduler_settings_are_checked_at_load():
    with pytest.raises(ConfigError, match="cosine_with_min_lr needs min_lr"):
        TrainingArguments(lr_scheduler_type="cosine_with_min_lr")
    with pytest.raises(ConfigError, match="warmup_stable_decay needs num_decay_steps"):
        TrainingArguments(lr_scheduler_type="warmup_stable_decay")
    with pytest.raises(ConfigError, match="reduce_lr_on_plateau .* needs evaluations during training: set eval_steps"):
        TrainingArguments(lr_scheduler_type="reduce_lr_on_plateau")
    with pytest.raises(ConfigError, match="has no warmup"):
        TrainingArguments(lr_scheduler_type="reduce_lr_on_plateau", eval_steps=10, warmup_steps=5)
    with pytest.raises(ConfigError, match="constant has no warmup .* use constant_with_warmup"):  # transformers drops it
        TrainingArguments(lr_scheduler_type="constant", warmup_steps=5)
    with pytest.raises(ConfigError, match="min_lr is a setting of cosine_with_min_lr and warmup_stable_decay, not of lr_scheduler_type linear"):
        TrainingArguments(min_lr=1e-6)
    with pytest.raises(ConfigError, match=r"min_lr must be in \[0, learning_rate"):
        TrainingArguments(lr_scheduler_type="cosine_with_min_lr", learning_rate=1e-4, min_lr=1e-3)
    with pytest.raises(ConfigError, match="nothing is left for the stable phase"):
        TrainingArguments(lr_scheduler_type="warmup_stable_decay", num_decay_steps=80, warmup_steps=30, max_steps=100)
    with pytest.raises(ConfigError, match="plateau_factor must be in"):
        TrainingArguments(lr_scheduler_type="reduce_lr_on_plateau", eval_steps=10, plateau_factor=1.5)


def test_plateau_without_an_eval_set_stops_before_training(tmp_path):
    from hfssl.errors import TrainingStopped

    with pytest.raises(TrainingStopped, match="no evaluation set"):
        train(_cfg(tmp_path, lr_scheduler_type="reduce_lr_on_plateau", eval_steps=2), ToyObjective())


def test_adamw_is_fused_on_the_cpu_and_wherever_torch_has_the_kernel():
    """The fused kernel (one pass over all parameters) on the training device, the CPU included; torch's
    default elsewhere. The model may still be on the CPU when the optimizer is built for a GPU run."""
    import torch

    from hfssl.schedules import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    cfg = TrainingArguments(output_dir="unused", weight_decay=0.01)
    assert build_optimizer(cfg, model, "cpu").defaults["fused"] is True
    assert build_optimizer(cfg, model, torch.device("cuda", 1)).defaults["fused"] is True
    assert not build_optimizer(cfg, model, "meta").defaults["fused"]  # no fused kernel on this device type
    decay, no_decay = build_optimizer(cfg, model, "cpu").param_groups
    assert [p.shape for p in decay["params"]] == [(4, 4)] and decay["weight_decay"] == 0.01
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # bias, norm weight and bias
