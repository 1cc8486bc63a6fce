"""fp16 overflows are the loss scaler's: the update is skipped, the scale halves, training goes on.

Accelerate gives no loss scaler on a CPU (fp16 autocast needs a GPU), so these tests build the
Accelerator themselves and give it `torch.amp.GradScaler("cpu")`, with autocast off: the loop's
code path is the one it takes on a GPU with `--mixed_precision fp16`, and the arithmetic stays fp32.
The scale is a power of two, so scaling and unscaling are exact: a run whose update 3 overflowed must
end with the same weights as an fp32 run whose update 3 was skipped for a non-finite loss.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hfssl.config import TrainingArguments
from hfssl.data.batching import shuffled_batches
from hfssl.objectives.base import Objective

N, DIM, BATCH, SEED = 48, 4, 4, 7
POISON = shuffled_batches(N, BATCH, SEED, 0)[2][0]  # an example of update 3's (only) micro-batch
INIT_SCALE = 2.0**8


class InfIntoGradient(torch.autograd.Function):
    """Identity forward; backward puts +inf into one entry of the gradient when `poison` is set."""

    @staticmethod
    def forward(ctx, weight, poison):
        ctx.poison = bool(poison)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        if ctx.poison:
            grad = grad.clone()
            grad[0, 0] = float("inf")
        return grad, None


class ToyModel(torch.nn.Module):
    def __init__(self, poison_mode: str):
        super().__init__()
        self.hidden = torch.nn.Linear(DIM, 8)
        self.out = torch.nn.Linear(8, 1)
        self.poison_mode = poison_mode  # "gradient": inf in one gradient; "loss": a NaN loss

    def forward(self, x, y, poison):
        weight = InfIntoGradient.apply(self.hidden.weight, poison) if self.poison_mode == "gradient" else self.hidden.weight
        h = torch.nn.functional.linear(x, weight, self.hidden.bias).tanh()
        loss = ((self.out(h).squeeze(-1) - y) ** 2).sum()
        if self.poison_mode == "loss" and poison:
            loss = loss * float("nan")
        return {"loss_sum": loss}


class ToyObjective(Objective):
    name = "toy-fp16"

    def __init__(self, cfg, poison_mode: str, poisoned: frozenset = frozenset({POISON})):
        super().__init__(cfg)
        self.poisoned = poisoned
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, DIM, generator=g)
        self.train_dataset = [{"id": i, "x": x[i], "y": float(x[i].sum())} for i in range(N)]
        torch.manual_seed(0)
        self.model = ToyModel(poison_mode)

    def collator(self, rows, seed, progress=0.0):
        return {"x": torch.stack([r["x"] for r in rows]), "y": torch.tensor([r["y"] for r in rows]),
                "poison": torch.tensor(any(r["id"] in self.poisoned for r in rows)), "num_targets": len(rows), "num_inputs": len(rows)}

    def save_pretrained(self, output_dir, summary):
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(Path(output_dir) / "toy.safetensors"))


@dataclass
class ToyConfig(TrainingArguments):
    pass


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # each test builds its own Accelerator
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _train(out: Path, poison_mode: str, scaler: bool, poisoned=frozenset({POISON}), **overrides) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs

    from hfssl.trainer import train

    settings = dict(seed=SEED, per_device_train_batch_size=BATCH, max_steps=8, learning_rate=0.05, lr_scheduler_type="linear",
                    warmup_steps=2, logging_steps=1, save_steps=0, max_grad_norm=1.0)
    cfg = ToyConfig(output_dir=str(out), **{**settings, **overrides})
    if scaler:  # what Accelerate sets up for --mixed_precision fp16 on a GPU, minus the fp16 arithmetic
        accelerator = Accelerator(cpu=True, mixed_precision="fp16", kwargs_handlers=[AutocastKwargs(enabled=False)])
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=1000)
    else:
        accelerator = Accelerator(cpu=True)
    return train(cfg, ToyObjective(cfg, poison_mode, poisoned), accelerator)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.parametrize("fused", [True, False], ids=["fused-adamw", "unfused-adamw"])
def test_overflow_skips_the_update_lowers_the_scale_and_matches_a_skipped_batch(tmp_path, caplog, monkeypatch, fused):
    """Both AdamW kernels: the fused one (what the loop uses on CPU and GPU) skips an overflowed update inside
    the kernel; an unfused one is not called by the scaler. The loop must see the overflow either way."""
    if not fused:
        monkeypatch.setattr("hfssl.schedules._get_fused_kernels_supported_devices", lambda: [])
    caplog.set_level(logging.INFO, logger="hfssl")
    overflowed = _train(tmp_path / "fp16", "gradient", scaler=True)
    skipped = _train(tmp_path / "fp32", "loss", scaler=False)

    assert overflowed["overflow_updates"] == 1 and overflowed["skipped_updates"] == 0  # not a bad update
    assert skipped["skipped_updates"] == 1 and "overflow_updates" not in skipped
    rows = _rows(tmp_path / "fp16")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["loss_scale"] for r in rows] == [INIT_SCALE] * 2 + [INIT_SCALE / 2] * 6
    assert rows[2]["grad_norm"] is None and all(r["grad_norm"] is not None for r in rows if r["step"] != 3)
    assert "Update 3: fp16 overflow, scale now 128" in caplog.text
    # The scheduler did not step at the overflow, as it does not at a skipped update: same learning rates.
    assert [r["lr"] for r in rows] == [r["lr"] for r in _rows(tmp_path / "fp32")]
    a, b = load_file(tmp_path / "fp16" / "toy.safetensors"), load_file(tmp_path / "fp32" / "toy.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    initial = ToyModel("loss").state_dict()  # same seed: the weights did change
    assert not torch.equal(a["out.weight"], initial["out.weight"])


def test_a_scale_that_keeps_falling_stops_the_run(tmp_path):
    """Gradients that are not finite at any scale (here: every update overflows) end the run with a
    message, instead of halving the scale forever."""
    from hfssl.errors import TrainingStopped

    with pytest.raises(TrainingStopped, match="fp16 loss scale fell to"):
        _train(tmp_path / "nan", "gradient", scaler=True, poisoned=frozenset(range(N)), max_steps=40)
