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
    file_hash,
    list_checkpoints,
    save_checkpoint,
    set_aside_checkpoints_after,
    verify_checkpoint,
)
from hfssl.checkpointing import find_latest_checkpoint as _find_latest


def find_latest_checkpoint(output_dir):
    return _find_latest(output_dir)[0]


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
    return save_checkpoint(accelerator, out, step, {"step": step, "epoch": 0}, total_limit=limit, run_id="run-a")


def test_save_then_verify_and_restore(setup, tmp_path):
    accelerator, model, optimizer = setup
    path = _save(setup, tmp_path, 10)
    assert path == tmp_path / "checkpoint-10" and path.is_dir()
    assert verify_checkpoint(path) == {"step": 10, "epoch": 0}
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["step"] == 10 and manifest["run_id"] == "run-a" and manifest["format"] == 2
    on_disk = {str(p.relative_to(path)): {"size": p.stat().st_size, "xxh3_128": file_hash(p)}
               for p in path.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert manifest["files"] == on_disk
    assert not any(n.startswith("custom_checkpoint") for n in on_disk)  # no pickled objects of ours
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
    with pytest.raises(CheckpointError, match="not a complete hfssl checkpoint"):
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
    with pytest.raises(CheckpointError):
        verify_checkpoint(tmp_path / "checkpoint-30")


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
    assert verify_checkpoint(path)["step"] == 20
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


def test_checkpoints_after_a_resumed_step_are_renamed_never_deleted(setup, tmp_path):
    for step in (300, 400, 500):
        _save(setup, tmp_path, step)
    (tmp_path / "checkpoint-600").mkdir()  # an incomplete one is set aside too
    moved = set_aside_checkpoints_after(tmp_path, 300)
    assert [p.name.rsplit("-", 2)[0] for p in moved] == [f"abandoned-checkpoint-{s}" for s in (400, 500, 600)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")] == ["checkpoint-300"]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-300"
    assert verify_checkpoint(moved[1])["step"] == 500  # intact


def test_no_limit_keeps_everything(setup, tmp_path):
    for step in (1, 2, 3):
        _save(setup, tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert list_checkpoints(tmp_path / "nothing-here") == []


# ----------------------------------------------------------------------------------- damage of the same size

def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage(kind: str, path: Path) -> Path:
    """Damage checkpoint `path` without changing any file's size; returns the damaged file."""
    if kind == "weights_data":
        victim = path / "model.safetensors"
        _flip_byte(victim, victim.stat().st_size - 3)  # inside a tensor
    elif kind == "weights_header":
        victim = path / "model.safetensors"
        _flip_byte(victim, 12)  # inside the JSON header
    elif kind == "optimizer":
        victim = path / "optimizer.bin"
        _flip_byte(victim, victim.stat().st_size // 2)
    elif kind == "manifest_list":
        victim = path / MANIFEST
        victim.write_text(json.dumps([1, 2, 3]))
    elif kind == "manifest_types":
        victim = path / MANIFEST
        manifest = json.loads(victim.read_text())
        manifest["files"] = {k: v["size"] for k, v in manifest["files"].items()}  # sizes only
        victim.write_text(json.dumps(manifest))
    elif kind == "state_step":
        victim = path / STATE
        state = json.loads(victim.read_text())
        state["step"] += 1
        victim.write_text(json.dumps(state))
        _rewrite_manifest(path)  # a consistent manifest: the step disagreement alone must be caught
    else:
        raise ValueError(kind)
    return victim


def _rewrite_manifest(path: Path) -> None:
    """What someone who edits a checkpoint's files and then its manifest does (sizes and hashes updated)."""
    manifest = json.loads((path / MANIFEST).read_text())
    files = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = str(p.relative_to(path))
            old = manifest["files"].get(rel)
            files[rel] = p.stat().st_size if isinstance(old, int) else {"size": p.stat().st_size, "xxh3_128": file_hash(p)}
    manifest["files"] = files
    (path / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind", ["weights_data", "weights_header", "optimizer", "manifest_list", "manifest_types", "state_step"])
def test_same_size_damage_falls_back_to_the_previous_checkpoint_naming_the_file(setup, tmp_path, kind, caplog):
    for step in (10, 20):
        _save(setup, tmp_path, step)
    newest = tmp_path / "checkpoint-20"
    victim = _damage(kind, newest)
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(newest)
    assert str(victim) in str(err.value)
    found, damaged = _find_latest(tmp_path)
    assert found == tmp_path / "checkpoint-10"
    assert len(damaged) == 1 and str(victim) in damaged[0]
    assert "Skipping damaged checkpoint" in caplog.text and str(victim) in caplog.text


def test_file_not_in_the_manifest_is_refused(setup, tmp_path):
    path = _save(setup, tmp_path, 10)
    (path / "custom_checkpoint_0.pkl").write_bytes(b"not from the save")
    with pytest.raises(CheckpointError, match="custom_checkpoint_0.pkl' is not in the manifest"):
        verify_checkpoint(path)


def test_checkpoint_of_another_run_is_refused(setup, tmp_path):
    path = _save(setup, tmp_path, 10)
    verify_checkpoint(path, run_id="run-a")
    with pytest.raises(CheckpointError, match="belongs to run run-a, not to this output_dir's run run-b"):
        verify_checkpoint(path, run_id="run-b")


# ----------------------------------------------------------------------------------- no code from checkpoints

class _Hostile:
    """Unpickling this creates a file: what a malicious checkpoint would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"])
def test_hostile_pickle_in_a_checkpoint_never_runs(setup, tmp_path, name):
    path = _save(setup, tmp_path, 10)
    marker = tmp_path / "pwned"
    torch.save({"state": _Hostile(marker)}, path / name)
    _rewrite_manifest(path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"].setdefault(name, {"size": (path / name).stat().st_size, "xxh3_128": file_hash(path / name)})
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=f"{name}' is not plain tensors and numbers"):
        verify_checkpoint(path)
    assert not marker.exists()


def test_fsdp_sharded_metadata_is_read_without_code(tmp_path):
    import torch.distributed.checkpoint as dcp

    from hfssl.checkpointing import check_no_code

    shards = tmp_path / "pytorch_model_fsdp_0"
    with pytest.warns(UserWarning):  # "torch.distributed is disabled ... single process"
        dcp.save({"w": torch.randn(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16), "groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]},
                 checkpoint_id=str(shards))
    check_no_code(shards / ".metadata")  # torch's own metadata classes, sizes and dtypes are allowed
    marker = tmp_path / "pwned"
    import pickle

    (shards / ".metadata").write_bytes(pickle.dumps(_Hostile(marker)))
    with pytest.raises(CheckpointError, match="could run code"):
        check_no_code(shards / ".metadata")
    assert not marker.exists()


def test_fsdp_shard_entry_that_would_run_code_is_refused(tmp_path):
    """torch.distributed.checkpoint stores non-tensor entries (an optimizer's param_groups) as pickles
    and loads them with weights_only=False: a hostile entry must be caught before any load."""
    import torch.distributed.checkpoint as dcp

    from hfssl.checkpointing import check_no_code

    marker = tmp_path / "pwned"
    plain, hostile = tmp_path / "plain", tmp_path / "hostile"
    with pytest.warns(UserWarning):
        dcp.save({"w": torch.randn(3), "groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]}, checkpoint_id=str(plain))
        dcp.save({"w": torch.randn(3), "groups": [{"lr": 0.1, "evil": _Hostile(marker)}]}, checkpoint_id=str(hostile))
    check_no_code(plain / ".metadata")
    with pytest.raises(CheckpointError, match="could run code"):
        check_no_code(hostile / ".metadata")
    assert not marker.exists()


def test_files_another_process_wrote_are_named_until_the_main_process_sees_them(tmp_path):
    from hfssl.distributed import unseen

    (tmp_path / "model.safetensors").write_bytes(b"x")
    views = [(0, "node-a", ["model.safetensors", "random_states_0.pkl"]), (1, "node-b", ["random_states_1.pkl"])]
    (tmp_path / "random_states_0.pkl").write_bytes(b"x")
    assert unseen(tmp_path, views) == [("random_states_1.pkl", 1, "node-b")]
    (tmp_path / "random_states_1.pkl").write_bytes(b"x")
    assert unseen(tmp_path, views) == []


# ----------------------------------------------------------------------------------- full disk

def test_disk_full_names_the_file_and_keeps_the_previous_checkpoint(setup, tmp_path, monkeypatch):
    import errno

    from hfssl.errors import TrainingStopped

    previous = _save(setup, tmp_path, 10)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # writes part of the file, then the disk is full
        if str(f).endswith("optimizer.bin"):
            Path(f).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainingStopped) as err:
        _save(setup, tmp_path, 20)
    message = str(err.value)
    assert message.startswith(f"Disk full while writing {tmp_path / '.tmp-checkpoint-20' / 'optimizer.bin'}; ")
    assert " bytes free; " in message and f"previous checkpoint {previous} is intact" in message
    assert not (tmp_path / ".tmp-checkpoint-20").exists()  # the partial save is removed, freeing its space
    monkeypatch.setattr(torch, "save", real_save)
    assert verify_checkpoint(previous)["step"] == 10
