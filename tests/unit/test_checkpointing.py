"""Tests for hfssl.checkpointing with a real (CPU) accelerate.Accelerator and a tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from hfssl.checkpointing import (
    MANIFEST,
    STATE,
    CheckpointError,
    find_latest_checkpoint,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
    verify_checkpoint,
)


@pytest.fixture(scope="module")
def setup():
    # Accelerate keeps one process-wide state: start from a clean one (another test may have made a
    # GPU Accelerator) and leave a clean one behind.
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    yield accelerator, model, optimizer
    AcceleratorState._reset_state(reset_partial_state=True)


def _train_step(model, optimizer, accelerator):
    loss = model(torch.randn(16, 4)).pow(2).mean()
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()


def _save(setup, out: Path, step: int, limit=None) -> Path:
    accelerator, model, optimizer = setup
    _train_step(model, optimizer, accelerator)
    return save_checkpoint(accelerator, out, step, {"global_step": step, "epoch": 0}, total_limit=limit)


def test_save_then_verify_and_restore(setup, tmp_path):
    accelerator, model, optimizer = setup
    path = _save(setup, tmp_path, 10)
    assert path == tmp_path / "checkpoint-10" and path.is_dir()
    assert verify_checkpoint(path) == {"global_step": 10, "epoch": 0}
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["step"] == 10
    on_disk = {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert manifest["files"] == on_disk
    assert STATE in on_disk and any(n.endswith(".safetensors") for n in on_disk)
    assert not list(tmp_path.glob(".tmp-checkpoint-*"))  # renamed into place
    # The checkpoint really restores the weights it saved.
    saved = [p.detach().clone() for p in model.parameters()]
    _train_step(model, optimizer, accelerator)
    assert any(not torch.equal(a, b) for a, b in zip(saved, model.parameters()))
    accelerator.load_state(str(path))
    assert all(torch.equal(a, b) for a, b in zip(saved, model.parameters()))


def test_truncated_file_names_the_file(setup, tmp_path):
    path = _save(setup, tmp_path, 10)
    victim = next(p for p in sorted(path.iterdir()) if p.suffix == ".safetensors")
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(path)
    assert victim.name in str(err.value) and "truncated" in str(err.value)


def test_deleted_file_names_the_file(setup, tmp_path):
    path = _save(setup, tmp_path, 10)
    (path / STATE).unlink()
    with pytest.raises(CheckpointError, match=STATE):
        verify_checkpoint(path)


def test_missing_manifest_is_incomplete(setup, tmp_path):
    path = _save(setup, tmp_path, 10)
    (path / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        verify_checkpoint(path)
    assert list_checkpoints(tmp_path) == []
    assert find_latest_checkpoint(tmp_path) is None


def test_damaged_manifest_and_missing_folder(setup, tmp_path):
    path = _save(setup, tmp_path, 10)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=MANIFEST):
        verify_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        verify_checkpoint(tmp_path / "checkpoint-99")


def test_latest_falls_back_to_previous_good_checkpoint(setup, tmp_path):
    for step in (10, 20, 30):
        _save(setup, tmp_path, step)
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-30"
    victim = next(p for p in (tmp_path / "checkpoint-30").iterdir() if p.suffix == ".safetensors")
    victim.write_bytes(victim.read_bytes()[:10])
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    (tmp_path / "checkpoint-20" / MANIFEST).unlink()  # also the next one is unusable
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert resolve_resume("latest", tmp_path) == tmp_path / "checkpoint-10"
    with pytest.raises(CheckpointError):
        resolve_resume(str(tmp_path / "checkpoint-30"), tmp_path)
    assert resolve_resume(None, tmp_path) is None


def test_leftover_tmp_folder_is_never_returned(setup, tmp_path):
    _save(setup, tmp_path, 10)
    # A run killed after writing the manifest but before the rename: complete-looking, still never used.
    shutil.copytree(tmp_path / "checkpoint-10", tmp_path / ".tmp-checkpoint-20")
    (tmp_path / ".tmp-checkpoint-30").mkdir()
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-10"]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    # Saving that step again replaces the leftover.
    path = _save(setup, tmp_path, 20)
    assert not (tmp_path / ".tmp-checkpoint-20").exists()
    assert verify_checkpoint(path)["global_step"] == 20
    assert find_latest_checkpoint(tmp_path) == path


def test_resave_same_step_replaces_it(setup, tmp_path):
    _save(setup, tmp_path, 10)
    (tmp_path / "checkpoint-10" / "stale.txt").write_text("from the old save")
    path = _save(setup, tmp_path, 10)
    assert not (path / "stale.txt").exists()
    verify_checkpoint(path)


def test_save_total_limit_prunes_oldest_in_numeric_order(setup, tmp_path):
    for step in (9, 10, 100):
        _save(setup, tmp_path, step, limit=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-100"]
    _save(setup, tmp_path, 200, limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-100", "checkpoint-200"]
    _save(setup, tmp_path, 300, limit=1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-300"]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-300"


def test_no_limit_keeps_everything(setup, tmp_path):
    for step in (1, 2, 3):
        _save(setup, tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert list_checkpoints(tmp_path / "nothing-here") == []
