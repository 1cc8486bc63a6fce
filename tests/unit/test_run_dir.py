"""output_dir safety: the lock, overwriting, what `latest` resumes, the run's tokenizer, the log,
and the loop's checkpoints under damage, hostile files, a full disk and non-finite weights."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hfssl.checkpointing import MANIFEST, file_hash, find_latest_checkpoint, list_checkpoints, verify_checkpoint
from hfssl.errors import CheckpointError, OutputDirError, RollbackRequested, TrainingStopped
from hfssl.output_lock import LOCK_FILE, STALE_AFTER_S, OutputDirLock
from hfssl.run_dir import RUN_FILE, close_run_dir, open_run_dir, trim_log
from hfssl.trainer import train
from test_trainer_guards import ToyObjective, _cfg

# ----------------------------------------------------------------------------------- the lock

_HOLD = """
import sys, time
from hfssl.output_lock import OutputDirLock
lock = OutputDirLock(sys.argv[1]); lock.acquire(); print("locked", flush=True); time.sleep(60)
"""


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError) as err:
            OutputDirLock(tmp_path).acquire()
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(err.value) and "in use by another run" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed (no clean-up): its lock is stale and is taken over.
    lock = OutputDirLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def _race(path, barrier, results):
    barrier.wait()
    try:
        OutputDirLock(path).acquire()
        results.put("locked")
        time.sleep(2)  # hold it while the other one tries
    except OutputDirError as e:
        results.put(f"refused: {e}")


def test_two_runs_started_together_one_gets_the_lock(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert outcomes[0] == "locked" and all(o.startswith("refused: ") and "in use by another run" in o for o in outcomes[1:]), outcomes


def test_lock_from_another_host_is_refused_while_fresh_and_taken_when_stale(tmp_path, caplog):
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text(json.dumps({"pid": 1, "host": "some-other-node", "started": "earlier"}))
    with pytest.raises(OutputDirError, match="pid 1 on host some-other-node.*If that run is gone"):
        OutputDirLock(tmp_path).acquire()
    old = time.time() - STALE_AFTER_S - 10
    os.utime(lock_file, (old, old))
    lock = OutputDirLock(tmp_path)
    lock.acquire()
    assert "Taking over the lock" in caplog.text and "some-other-node" in caplog.text
    lock.release()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    lock = OutputDirLock(tmp_path)
    lock.acquire()
    lock.release()


# ----------------------------------------------------------------------------------- opening output_dir

def test_training_refuses_an_output_dir_in_use(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "o")], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError, match="in use by another run"):
            train(_cfg(tmp_path), ToyObjective())
    finally:
        holder.kill()
        holder.wait()


def test_overwrite_moves_the_earlier_run_aside_and_its_checkpoints_never_mix(tmp_path, caplog):
    out = tmp_path / "o"
    train(_cfg(tmp_path, max_steps=8, save_steps=2), ToyObjective())  # earlier run: checkpoints 2..8
    earlier = {p.name for p in out.iterdir()}
    train(_cfg(tmp_path, max_steps=4, save_steps=2, save_total_limit=2, overwrite_output_dir=True), ToyObjective())
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]  # not the earlier run's 6 and 8
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("o.overwritten-")]
    assert len(aside) == 1 and {p.name for p in aside[0].iterdir()} == earlier
    assert f"to {aside[0]}" in caplog.text
    # Each checkpoint names the run that wrote it, the run output_dir holds.
    run_id = json.loads((out / RUN_FILE).read_text())["run_id"]
    assert all(json.loads((p / MANIFEST).read_text())["run_id"] == run_id for p in list_checkpoints(out))
    assert json.loads((aside[0] / "checkpoint-8" / MANIFEST).read_text())["run_id"] != run_id


def test_latest_skips_checkpoints_of_another_run(tmp_path, caplog):
    out = tmp_path / "o"
    train(_cfg(tmp_path, max_steps=4, save_steps=2), ToyObjective())
    (out / RUN_FILE).write_text(json.dumps({"run_id": "someone-else"}))  # output_dir now holds another run
    with pytest.raises(CheckpointError, match="belongs to run"):
        train(_cfg(tmp_path, max_steps=6, save_steps=2, resume_from_checkpoint="latest"), ToyObjective())


def test_resuming_a_checkpoint_into_another_runs_folder_is_refused(tmp_path):
    """--resume_from_checkpoint A/checkpoint-2 --output_dir B, where B holds another run: refused, B unchanged (B's log
    rows and checkpoints were kept beside the resumed run's). Into an empty folder, or its own run's, it resumes."""
    a, b = tmp_path / "a", tmp_path / "b"
    train(_cfg(a, max_steps=4, save_steps=2), ToyObjective())
    train(_cfg(b, max_steps=4, save_steps=2), ToyObjective())
    other = (b / "o" / "training_log.jsonl").read_text()
    resume = dict(max_steps=4, save_steps=2, resume_from_checkpoint=str(a / "o" / "checkpoint-2"))
    with pytest.raises(OutputDirError, match="holds files of another run than the checkpoint"):
        train(_cfg(b, **resume), ToyObjective())
    assert (b / "o" / "training_log.jsonl").read_text() == other  # nothing changed
    assert train(_cfg(tmp_path / "c", **resume), ToyObjective())["steps"] == 4  # an empty folder
    log = (tmp_path / "c" / "o" / "training_log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in log] == [3, 4]  # the resumed run's rows only
    assert train(_cfg(a, **resume), ToyObjective())["steps"] == 4  # its own run's folder


def test_latest_without_a_good_checkpoint_refuses_and_changes_nothing(tmp_path):
    out = tmp_path / "o"
    train(_cfg(tmp_path, max_steps=4, save_steps=2), ToyObjective())
    for ckpt in list_checkpoints(out):
        weights = ckpt / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:50])
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_FILE}
    with pytest.raises(CheckpointError) as err:
        train(_cfg(tmp_path, max_steps=6, save_steps=2, resume_from_checkpoint="latest"), ToyObjective())
    message = str(err.value)
    assert str(out / "checkpoint-4" / "model.safetensors") in message and str(out / "checkpoint-2" / "model.safetensors") in message
    assert "train_results.json" in message and "--on_no_good_checkpoint start_over" in message
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_FILE} == before
    # Asked to start over: the damaged run is moved aside and training starts at step 0.
    summary = train(_cfg(tmp_path, max_steps=2, save_steps=2, resume_from_checkpoint="latest", on_no_good_checkpoint="start_over"),
                    ToyObjective())
    assert summary["steps"] == 2 and [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert any(p.name.startswith("o.overwritten-") for p in tmp_path.iterdir())


def test_latest_on_an_empty_output_dir_starts_from_scratch(tmp_path):
    assert train(_cfg(tmp_path, resume_from_checkpoint="latest"), ToyObjective())["steps"] == 4


def test_latest_with_files_but_no_checkpoint_refuses_or_moves_them_aside(tmp_path):
    """No checkpoint and no train_results.json, but an earlier run's (or another tool's) files: a start from step 0
    would empty their log and replace their config and model. Refused unchanged, or moved aside with start_over."""
    out = tmp_path / "o"
    out.mkdir()
    earlier = {"config.json": '{"user": "original"}', "README.md": "user notes",
               "training_log.jsonl": "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3))}
    for name, text in earlier.items():
        (out / name).write_text(text)
    with pytest.raises(CheckpointError) as err:
        train(_cfg(tmp_path, resume_from_checkpoint="latest"), ToyObjective())
    assert f"'{out}'" in str(err.value) and "README.md, config.json, training_log.jsonl and no checkpoint" in str(err.value)
    assert "--on_no_good_checkpoint start_over" in str(err.value)
    assert {p.name: p.read_text() for p in out.iterdir() if p.name != LOCK_FILE} == earlier  # nothing written
    assert train(_cfg(tmp_path, resume_from_checkpoint="latest", on_no_good_checkpoint="start_over"), ToyObjective())["steps"] == 4
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("o.overwritten-")]
    assert len(aside) == 1 and {p.name: p.read_text() for p in aside[0].iterdir()} == earlier
    assert [json.loads(r)["step"] for r in (out / "training_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    # an hfssl run killed before its first checkpoint (a requeued job with `latest`): started again in place
    for path in out.glob("checkpoint-*"):
        shutil.rmtree(path)
    for name in ("train_results.json", "model.safetensors"):
        (out / name).unlink(missing_ok=True)
    assert (out / RUN_FILE).is_file() and (out / "training_log.jsonl").is_file()
    assert train(_cfg(tmp_path, resume_from_checkpoint="latest"), ToyObjective())["steps"] == 4
    assert [json.loads(r)["step"] for r in (out / "training_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("o.overwritten-")]) == 1  # nothing more moved


def test_a_folder_with_only_the_run_file_of_a_failed_setup_is_empty(tmp_path):
    """A run whose setup failed (a config error) wrote only its run file: the corrected rerun starts there. A run
    that wrote anything else is still an earlier run."""
    out = tmp_path / "o"
    cfg = _cfg(tmp_path)
    close_run_dir(open_run_dir(cfg))  # the failed attempt
    assert sorted(p.name for p in out.iterdir()) == [RUN_FILE]
    close_run_dir(open_run_dir(cfg))  # the corrected rerun is accepted
    (out / "training_log.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(OutputDirError, match="already holds files from an earlier run"):
        open_run_dir(cfg)
    assert (out / "training_log.jsonl").read_text() == '{"step": 1}\n'


def test_overwrite_output_dir_dot_moves_the_current_folder_aside(tmp_path, monkeypatch):
    out = tmp_path / "o"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "model.safetensors").write_text("weights")
    (out / "training_log.jsonl").write_text('{"step": 2}\n')
    monkeypatch.chdir(out)
    close_run_dir(open_run_dir(_cfg(tmp_path, output_dir=".", overwrite_output_dir=True)))
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("o.overwritten-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["checkpoint-2", "training_log.jsonl"]
    assert (aside[0] / "checkpoint-2" / "model.safetensors").read_text() == "weights"
    assert sorted(p.name for p in out.iterdir()) == [RUN_FILE]  # the new run's, and nothing left half moved


def test_stale_partial_saves_are_removed_at_start(tmp_path):
    out = tmp_path / "o"
    (out / ".tmp-checkpoint-7").mkdir(parents=True)
    (out / ".tmp-checkpoint-7" / "optimizer.bin").write_bytes(b"\0" * 1000)
    (out / ".tmp-final" / "o").mkdir(parents=True)
    run = open_run_dir(_cfg(tmp_path, resume_from_checkpoint="latest"))
    close_run_dir(run)
    assert not (out / ".tmp-checkpoint-7").exists() and not (out / ".tmp-final").exists()


def test_the_run_tokenizer_comes_back_from_the_checkpoint(tmp_path, caplog):
    out = tmp_path / "o"
    cfg = _cfg(tmp_path, max_steps=4, save_steps=2, resume_from_checkpoint="latest")
    first = open_run_dir(cfg)  # as the entry point does, before it trains the run's tokenizer into output_dir
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0, "b": 1}}}')
    (out / "tokenizer" / "tokenizer_config.json").write_text("{}")
    try:
        train(cfg, ToyObjective())
    finally:
        close_run_dir(first)
    saved = (out / "checkpoint-4" / "tokenizer" / "tokenizer.json").read_text()
    for damage in ("missing", "truncated"):
        if damage == "missing":
            (out / "tokenizer" / "tokenizer.json").unlink()
        else:
            (out / "tokenizer" / "tokenizer.json").write_text(saved[:10])
        run = open_run_dir(_cfg(tmp_path, max_steps=6, resume_from_checkpoint="latest"))
        close_run_dir(run)
        assert (out / "tokenizer" / "tokenizer.json").read_text() == saved
        assert f"{out / 'tokenizer' / 'tokenizer.json'} {'is missing' if damage == 'missing' else 'differs'}" in caplog.text


class _Interrupted(ToyObjective):
    """Rolls back once at update `rollback_at` to checkpoint-`rollback_to` (if given), then dies during update `dies_at`
    as a kill would: after its optimizer step, before its log row and its checkpoint."""

    def __init__(self, out, dies_at, rollback_at=None, rollback_to=None):
        super().__init__()
        self.out, self.dies_at, self.rollback_at, self.rollback_to, self.rolled = out, dies_at, rollback_at, rollback_to, False

    def check_health(self, window):
        if window and window[-1]["step"] == self.rollback_at and not self.rolled:
            self.rolled = True
            raise RollbackRequested(str(self.out / f"checkpoint-{self.rollback_to}"), "Collapse (test).")
        return None

    def on_update(self, step, total):
        if step == self.dies_at and (self.rolled or self.rollback_at is None):
            raise RuntimeError("killed (test)")
        return super().on_update(step, total)


def _abandoned(out: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 2)[0] for p in out.glob("abandoned-checkpoint-*"))  # without the time stamp


def test_resuming_an_older_checkpoint_sets_the_later_ones_aside(tmp_path, caplog):
    """Resumed from checkpoint-2 with 4 and 6 on disk, save_total_limit 1, killed after saving 4 again: the new 4 is
    kept (rotation used to delete it and keep 6) and `latest` resumes it, not the abandoned 6. The old ones are renamed, intact."""
    out = tmp_path / "o"
    train(_cfg(tmp_path, max_steps=6, save_steps=2), ToyObjective())
    again = dict(max_steps=6, save_steps=2, save_total_limit=1)
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(tmp_path, **again, resume_from_checkpoint=str(out / "checkpoint-2")), _Interrupted(out, dies_at=5))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]
    assert _abandoned(out) == ["abandoned-checkpoint-4", "abandoned-checkpoint-6"]
    assert verify_checkpoint(next(out.glob("abandoned-checkpoint-6-*")))["step"] == 6  # nothing lost
    with caplog.at_level(logging.INFO):
        assert train(_cfg(tmp_path, **again, resume_from_checkpoint="latest"), ToyObjective())["steps"] == 6
    assert f"Resumed from {out / 'checkpoint-4'} at step 4" in caplog.text


def test_a_rollback_sets_the_abandoned_checkpoints_aside(tmp_path):
    """Rolled back at update 6 to checkpoint-2 (3, 4, 5 on disk), killed during update 4 of the new trajectory: `latest`
    is the new trajectory's checkpoint-3, not the collapsed run's checkpoint-5."""
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(tmp_path, max_steps=8, save_steps=1), _Interrupted(out, dies_at=4, rollback_at=6, rollback_to=2))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["rollbacks"] == 1
    assert _abandoned(out) == ["abandoned-checkpoint-3", "abandoned-checkpoint-4", "abandoned-checkpoint-5"]
    assert find_latest_checkpoint(out)[0] == out / "checkpoint-3"


# ----------------------------------------------------------------------------------- the log

def test_a_partial_last_log_line_is_dropped_on_resume(tmp_path, caplog):
    log = tmp_path / "training_log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    trim_log(log, 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    assert "dropping its last line" in caplog.text
    log.write_text('{"step": 1}\n{"ste\n{"step": 2}\n')
    with pytest.raises(CheckpointError, match="line 2 is not JSON"):
        trim_log(log, 2)


def test_resume_after_a_kill_during_a_log_write(tmp_path):
    out = tmp_path / "o"
    train(_cfg(tmp_path, max_steps=4, save_steps=2), ToyObjective())
    with open(out / "training_log.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.')
    (out / "train_results.json").unlink()
    summary = train(_cfg(tmp_path, max_steps=6, save_steps=2, resume_from_checkpoint="latest"), ToyObjective())
    assert summary["steps"] == 6
    steps = [json.loads(line)["step"] for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------------- checkpoints in the loop

def _rewrite_manifest(path: Path) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    for p in path.rglob("*"):
        rel = str(p.relative_to(path))
        if p.is_file() and p.name != MANIFEST:
            old = manifest["files"].get(rel)
            manifest["files"][rel] = p.stat().st_size if isinstance(old, int) else {"size": p.stat().st_size, "xxh3_128": file_hash(p)}
    (path / MANIFEST).write_text(json.dumps(manifest))


class _Hostile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resuming_a_hostile_checkpoint_runs_no_code(tmp_path):
    out = tmp_path / "o"
    train(_cfg(tmp_path, max_steps=4, save_steps=4), ToyObjective())
    ckpt = out / "checkpoint-4"
    marker = tmp_path / "pwned"
    torch.save({"state": _Hostile(marker)}, ckpt / "custom_checkpoint_0.pkl")  # what Accelerate unpickles for registered objects
    _rewrite_manifest(ckpt)
    with pytest.raises(CheckpointError):
        train(_cfg(tmp_path, max_steps=6, resume_from_checkpoint=str(ckpt)), ToyObjective())
    assert not marker.exists()


def test_a_byte_flipped_in_the_optimizer_state_falls_back_to_the_previous_checkpoint(tmp_path, caplog):
    out = tmp_path / "o"
    train(_cfg(tmp_path, max_steps=8, save_steps=4), ToyObjective())
    victim = out / "checkpoint-8" / "optimizer.bin"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    (out / "train_results.json").unlink()
    with caplog.at_level(logging.INFO):
        summary = train(_cfg(tmp_path, max_steps=10, save_steps=4, resume_from_checkpoint="latest"), ToyObjective())
    assert f"Resumed from {out / 'checkpoint-4'} at step 4" in caplog.text
    assert "Skipping damaged checkpoint" in caplog.text and str(victim) in caplog.text
    assert summary["steps"] == 10


class _SavesThenDiskFull(ToyObjective):
    def save_pretrained(self, output_dir, summary):
        (Path(output_dir) / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_at_the_final_save_leaves_output_dir_as_it_was(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(TrainingStopped) as err:
        train(_cfg(tmp_path, max_steps=4, save_steps=4), _SavesThenDiskFull())
    assert str(err.value).startswith(f"Disk full while writing {out / '.tmp-final' / 'o' / 'config.json'}; ")
    assert f"previous checkpoint {out / 'checkpoint-4'} is intact" in str(err.value)
    assert not (out / "config.json").exists() and not (out / ".tmp-final").exists()


class _DivergesAtTheEnd(ToyObjective):
    """The last update leaves non-finite weights (too few bad updates for max_bad_steps to stop the run)."""

    def on_update(self, step, total):
        if step == total:
            with torch.no_grad():
                self.model.w.weight.fill_(float("nan"))
        return super().on_update(step, total)

    def save_pretrained(self, output_dir, summary):
        (Path(output_dir) / "model.safetensors").write_text("weights")


def test_a_final_model_with_non_finite_weights_is_not_saved(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(TrainingStopped, match=r"final weights are not finite \(w.weight\): the model was not saved"):
        train(_cfg(tmp_path, max_steps=4, save_steps=2), _DivergesAtTheEnd())
    assert not (out / "model.safetensors").exists() and not (out / "train_results.json").exists()


def test_an_output_dir_holding_the_runs_own_input_is_refused_before_anything_moves(tmp_path):
    """output_dir = the data folder (or the model continued from): overwrite_output_dir moved the input aside, then the
    run failed for want of it; without it the refusal blamed "an earlier run". Refused, nothing moved."""
    from hfssl.objectives.mlm.config import MLMConfig

    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.txt").write_text("a line of text\n" * 20)
    before = sorted(p.name for p in data.iterdir())
    for extra in ({"overwrite_output_dir": True}, {}, {"resume_from_checkpoint": "latest", "on_no_good_checkpoint": "start_over"}):
        for source in (str(data / "corpus.txt"), str(data / "*.txt")):
            cfg = MLMConfig(train_file=source, output_dir=str(data), **extra)
            with pytest.raises(OutputDirError, match=rf"holds this run's own input \(train_file '{re.escape(source)}'\)"):
                open_run_dir(cfg)
            assert sorted(p.name for p in data.iterdir()) == before and not list(tmp_path.glob("data.overwritten-*"))
    # HuBERT iteration 2's k-means file kept in its own output_dir (as recipes/hubert/base-iter2.yaml suggests)
    from hfssl.objectives.hubert.config import HubertPretrainConfig

    hubert = tmp_path / "hubert"
    hubert.mkdir()
    (hubert / "kmeans.pt").write_bytes(b"k")
    cfg = HubertPretrainConfig(train_dir=str(data), kmeans_model=str(hubert / "kmeans.pt"), output_dir=str(hubert),
                               overwrite_output_dir=True)
    with pytest.raises(OutputDirError, match=r"holds this run's own input \(kmeans_model "):
        open_run_dir(cfg)
    assert (hubert / "kmeans.pt").is_file()
    # a Hub id is not a path: never "inside" the current folder
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    cfg = MLMConfig(train_file=str(data / "corpus.txt"), model_name_or_path="bert-base-uncased", output_dir=str(busy),
                    overwrite_output_dir=True)
    cwd = os.getcwd()
    os.chdir(busy)
    try:
        close_run_dir(open_run_dir(cfg))
    finally:
        os.chdir(cwd)
    # an output_dir beside the input, or a model folder that holds the new output_dir, are fine
    close_run_dir(open_run_dir(MLMConfig(train_file=str(data / "corpus.txt"), output_dir=str(tmp_path / "out"))))
    close_run_dir(open_run_dir(MLMConfig(train_file=str(data / "corpus.txt"), model_name_or_path=str(data),
                                         output_dir=str(data / "continued"))))


def test_resuming_into_a_model_of_another_shape_names_the_mismatch(tmp_path):
    """Another model size on resume: one error naming the first mismatching tensor, not torch's wall of text."""
    train(_cfg(tmp_path, save_steps=2), ToyObjective())
    wider = ToyObjective()
    wider.model.w = torch.nn.Linear(1, 3)
    with pytest.raises(TrainingStopped, match=r"checkpoint-4 holds a model of another shape than this run builds "
                                              r"\(size mismatch for w\.weight: .*\)\. Resume with the model settings"):
        train(_cfg(tmp_path, resume_from_checkpoint=str(tmp_path / "o" / "checkpoint-4")), wider)
