"""The loop never trains on a non-finite loss: the update is skipped, weights unchanged, samples named;
K bad updates in a row stop the run with a clear error."""

import json

import pytest
import torch

from hfssl.config import TrainingArguments
from hfssl.errors import TrainingStopped
from hfssl.data.batching import shuffled_batches
from hfssl.objectives.base import Objective
from hfssl.trainer import train


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(1, 1)

    def forward(self, x, y):
        return {"loss_sum": ((self.w(x) - y) ** 2).sum()}


class ToyObjective(Objective):
    """y = 2x on 16 points; samples listed in `poison` carry x = inf."""

    name = "toy"

    def __init__(self, poison=()):
        torch.manual_seed(0)
        self.model = Regression()
        self.train_dataset = [{"x": float("inf") if i in poison else i / 16, "y": 2 * i / 16} for i in range(16)]
        self.snapshots = []

    def collator(self, rows, seed, progress):
        x = torch.tensor([[r["x"]] for r in rows])
        return {"x": x, "y": torch.tensor([[r["y"]] for r in rows]), "num_targets": len(rows), "num_inputs": len(rows)}

    def batch_plan(self, epoch, seed):
        return shuffled_batches(16, 4, seed, epoch, shuffle=False)

    def on_update(self, step, total):
        self.snapshots.append([p.detach().clone() for p in self.model.parameters()])
        return {}

    def save_pretrained(self, output_dir, summary):
        pass


def _cfg(tmp_path, **kw):
    settings = dict(output_dir=str(tmp_path / "o"), max_steps=4, per_device_train_batch_size=4,
                    learning_rate=0.1, save_steps=0, logging_steps=1)
    return TrainingArguments(**{**settings, **kw})


def test_non_finite_batch_changes_no_weights_and_is_reported(tmp_path, caplog):
    objective = ToyObjective(poison={5})  # sample 5 sits in the second batch (indices 4..7)
    summary = train(_cfg(tmp_path), objective)
    before, after = objective.snapshots[0], objective.snapshots[1]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # update 2 was skipped
    assert not all(torch.equal(a, b) for a, b in zip(objective.snapshots[1], objective.snapshots[2]))  # 3 trained
    assert all(torch.isfinite(p).all() for p in objective.model.parameters())
    assert summary["skipped_updates"] == 1
    assert "Update 2 skipped" in caplog.text and "[4, 5, 6, 7]" in caplog.text
    rows = [json.loads(l) for l in (tmp_path / "o" / "training_log.jsonl").read_text().splitlines()]
    assert rows[1]["step"] == 2 and not rows[1]["loss"] < float("inf")


def test_k_bad_updates_in_a_row_stop_the_run(tmp_path):
    objective = ToyObjective(poison={1, 5, 9})
    with pytest.raises(TrainingStopped, match=r"3 updates in a row had a non-finite loss.*samples \[8, 9, 10, 11\]"):
        train(_cfg(tmp_path, max_bad_steps=3), objective)


class EmptyObjective(ToyObjective):
    """Batches whose samples listed in `empty` leave nothing to predict (num_targets 0, as a batch with nothing masked)."""

    def __init__(self, empty=()):
        super().__init__()
        self.empty = set(empty)

    def collator(self, rows, seed, progress):
        batch = super().collator(rows, seed, progress)
        if any(r["x"] * 16 in self.empty for r in rows):
            batch.update(x=batch["x"][:0], y=batch["y"][:0], num_targets=0)
        return batch


def test_update_without_targets_is_skipped_and_named_as_such(tmp_path, caplog):
    """An update with nothing to predict is not a non-finite one: it is skipped with its own reason, and K of them in
    a row stop the run saying so (before, both read "non-finite loss/gradient")."""
    objective = EmptyObjective(empty={5})
    summary = train(_cfg(tmp_path), objective)
    assert summary["skipped_updates"] == 1 and all(torch.equal(a, b) for a, b in zip(*objective.snapshots[:2]))
    assert "Update 2 skipped: no targets" in caplog.text and "non-finite" not in caplog.text
    with pytest.raises(TrainingStopped, match=r"3 updates in a row had no targets .*samples \[8, 9, 10, 11\]"):
        train(_cfg(tmp_path / "k", max_bad_steps=3), EmptyObjective(empty={1, 5, 9}))


class CollapsingObjective(ToyObjective):
    """Asks for one rollback to checkpoint-4 at step 6, as wav2vec2's on_collapse=rollback does."""

    def __init__(self, output_dir):
        super().__init__()
        self.output_dir = output_dir
        self.seeds = []
        self.asked = 0

    def collator(self, rows, seed, progress):
        self.seeds.append(seed)
        return super().collator(rows, seed, progress)

    def check_health(self, window):
        from hfssl.errors import RollbackRequested

        if window and window[-1]["step"] == 6 and not self.asked:
            self.asked += 1
            raise RollbackRequested(f"{self.output_dir}/checkpoint-4", "Codebook collapse (test).")
        return None


def test_rollback_reloads_the_checkpoint_and_continues_with_fresh_randomness(tmp_path, caplog):
    out = tmp_path / "o"
    objective = CollapsingObjective(out)
    summary = train(_cfg(tmp_path, max_steps=8, save_steps=4), objective)
    assert summary["steps"] == 8 and objective.asked == 1
    assert "Rolling back to" in caplog.text
    rows = [json.loads(l) for l in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))  # rows 5-6 of the abandoned branch were dropped
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["rollbacks"] == 1
    # Updates 5-6 were redone with other seeds (new masks/noise), not replayed.
    first_try, second_try = objective.seeds[4:6], objective.seeds[6:8]
    assert len(objective.seeds) == 10 and set(first_try).isdisjoint(second_try)
