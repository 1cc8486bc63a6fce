"""A new objective is one file: this one defines a toy two-term objective and its config, registers it
in one line, and trains it through run_pretrain.py's machinery (recipe parsing, the loop, checkpoints,
saving) with no other file touched. It also proves the multi-term contract: each loss term is divided
by its own global target count, so 2 processes equal 1 process with gradient accumulation 2.

Run as a script (`torchrun ... test_objective_protocol.py RECIPE --key value`) it is the entry point.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from hfssl.config import TrainingArguments, _help
from hfssl.data.batching import batch_seed
from hfssl.objectives import register
from hfssl.objectives.base import Objective

N_EXAMPLES, DIM = 64, 4


@dataclass
class ToyConfig(TrainingArguments):
    """Toy: fit y = w.x and reconstruct randomly hidden coordinates of x."""

    objective: Literal["toy"] = _help("Pretraining objective.", "toy")
    hide_probability: float = _help("Chance that a coordinate of x is hidden (and must be reconstructed).", 0.3)


class ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fit = torch.nn.Linear(DIM, 1)
        self.recon = torch.nn.Linear(DIM, DIM)

    def forward(self, x, y, hidden):
        visible = x * ~hidden
        fit = ((self.fit(visible).squeeze(-1) - y) ** 2).sum()  # over examples
        recon = ((self.recon(visible) - x) ** 2)[hidden].sum()  # over hidden coordinates: varies per batch
        return {"loss_sum": {"fit": fit, "recon": recon}, "recon_mean_abs_x": x[hidden].abs().mean()}


class ToyObjective(Objective):
    name = "toy"

    def __init__(self, cfg: ToyConfig, accelerator=None):
        super().__init__(cfg)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N_EXAMPLES, DIM, generator=g)
        self.train_dataset = [{"x": x[i], "y": float(x[i] @ torch.tensor([0.5, -0.5, 0.25, 0.1]))} for i in range(N_EXAMPLES)]
        self.model = ToyModel()
        # Objective state with a tensor (like an EMA teacher) and a plain number: checkpointed, resumed exactly.
        self.ema, self.updates = torch.zeros(DIM), 0

    def on_update(self, step, total_steps):
        self.ema = 0.9 * self.ema + 0.1 * self.model.recon.weight.detach().sum(0)
        self.updates += 1
        return {"ema_norm": float(self.ema.norm())}

    def state_dict(self):
        return {"ema": self.ema.clone(), "updates": self.updates}

    def load_state_dict(self, state):
        self.ema, self.updates = state["ema"].clone(), state["updates"]

    def collator(self, rows, seed, progress=0.0):
        x = torch.stack([r["x"] for r in rows])
        hidden = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < self.cfg.hide_probability
        return {"x": x, "y": torch.tensor([r["y"] for r in rows]), "hidden": hidden,
                "num_targets": {"fit": len(rows), "recon": int(hidden.sum())}, "num_inputs": len(rows)}

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        from safetensors.torch import save_file

        save_file({**self.model.state_dict(), "ema": self.ema}, str(Path(output_dir) / "toy.safetensors"),
                  metadata={"updates": str(self.updates)})


register("toy", ToyConfig, ToyObjective)  # the one line that makes `objective: toy` exist


def _recipe(tmp_path: Path, **extra) -> list[str]:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("objective: toy\nper_device_train_batch_size: 4\nmax_steps: 6\nlearning_rate: 0.1\n"
                      "logging_steps: 1\nsave_steps: 3\nweight_decay: 0.0\n")
    return [str(recipe), *[str(a) for kv in extra.items() for a in (f"--{kv[0]}", kv[1])]]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines() if '"loss"' in line]


def test_toy_objective_trains_through_run_pretrain(tmp_path):
    from safetensors.torch import load_file

    from hfssl.pretrain import main

    out = tmp_path / "toy"
    assert main(_recipe(tmp_path, output_dir=out, gradient_accumulation_steps=2)) == 0
    rows = _log(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss_fit", "loss_recon", "num_fit_targets", "num_recon_targets"} <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert set(load_file(out / "toy.safetensors")) == {"fit.weight", "fit.bias", "recon.weight", "recon.bias", "ema"}
    assert (out / "checkpoint-6").is_dir()


def test_objective_tensor_state_is_checkpointed_and_resumed_exactly(tmp_path):
    import shutil

    from safetensors import safe_open

    from hfssl.pretrain import main

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(_recipe(tmp_path, output_dir=full)) == 0
    shutil.copytree(full, resumed)
    for name in ("toy.safetensors", "train_results.json"):
        (resumed / name).unlink()
    shutil.rmtree(resumed / "checkpoint-6")
    assert (resumed / "checkpoint-3" / "objective_tensors.safetensors").is_file()
    assert main(_recipe(tmp_path, output_dir=resumed, resume_from_checkpoint="latest")) == 0
    assert [r["ema_norm"] for r in _log(resumed)] == [r["ema_norm"] for r in _log(full)]
    with safe_open(str(full / "toy.safetensors"), "pt") as a, safe_open(str(resumed / "toy.safetensors"), "pt") as b:
        assert torch.equal(a.get_tensor("ema"), b.get_tensor("ema")) and a.metadata() == b.metadata() == {"updates": "6"}


def test_each_term_is_divided_by_its_own_count(tmp_path):
    """Step 1's logged loss equals sum over terms of (term sum over the update) / (term count over the
    update), recomputed here from the initial weights and the same batches; one divisor for all terms
    (or a per-micro-batch mean) gives another number."""
    from hfssl.objectives import build_objective, load_config
    from hfssl.pretrain import main

    out = tmp_path / "toy"
    args = _recipe(tmp_path, output_dir=out, gradient_accumulation_steps=2, seed=3)
    cfg = load_config(args)
    objective = build_objective(cfg)  # the same seeded init the run starts from
    plan = objective.batch_plan(0, cfg.seed)
    sums, counts = {"fit": 0.0, "recon": 0.0}, {"fit": 0, "recon": 0}
    with torch.no_grad():
        for g in (0, 1):  # update 1 = micro-batches 0 and 1
            batch = objective.collator([objective.train_dataset[i] for i in plan[g]], seed=batch_seed(cfg.seed, 0, g))
            outputs = objective.model(batch["x"], batch["y"], batch["hidden"])
            for k in sums:
                sums[k] += float(outputs["loss_sum"][k])
                counts[k] += batch["num_targets"][k]
    assert counts["recon"] not in (0, counts["fit"])
    expected = sums["fit"] / counts["fit"] + sums["recon"] / counts["recon"]
    one_divisor = (sums["fit"] + sums["recon"]) / (counts["fit"] + counts["recon"])
    assert main(args) == 0
    first = _log(out)[0]
    assert abs(first["loss"] - expected) < 1e-6 * abs(expected)
    assert abs(first["loss"] - one_divisor) > 1e-3
    assert first["num_recon_targets"] == counts["recon"]


def test_two_processes_equal_one_process_with_accumulation(tmp_path):
    from conftest import run_cli

    one, two = tmp_path / "one", tmp_path / "two"
    script = "tests/integration/test_objective_protocol.py"
    run_cli(script, _recipe(tmp_path, output_dir=one, gradient_accumulation_steps=2, save_steps=0))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29521"]
    run_cli(script, _recipe(tmp_path, output_dir=two, save_steps=0), launcher=torchrun, env={"OMP_NUM_THREADS": "1"})
    a, b = _log(one), _log(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        for key in ("loss", "loss_fit", "loss_recon"):
            assert abs(ra[key] - rb[key]) <= 1e-5 * max(1.0, abs(ra[key])), (ra["step"], key, ra[key], rb[key])
        assert ra["num_recon_targets"] == rb["num_recon_targets"]


if __name__ == "__main__":
    from hfssl.pretrain import main

    sys.exit(main(sys.argv[1:]))
