"""The output folder of a run: one run at a time, what is resumed, what an earlier run left.

`open_run_dir` is the first thing an entry point does with output_dir, before anything is written
to it (the MLM tokenizer, the audio scan report, k-means):

* It takes an exclusive lock (`hfssl.output_lock`): `output_dir/.hfssl.lock` is `flock`ed while the run
  lives; a lock whose holder is gone is taken over with a warning.
* It removes `.tmp-*` folders of interrupted saves (they may fill a disk that is already full).
* It decides what the run starts from: a verified checkpoint of this run (`resume_from_checkpoint`,
  `latest` falling back past damaged ones), or nothing; an earlier run's files are refused, moved
  aside (`overwrite_output_dir`, `on_no_good_checkpoint start_over`) to `<output_dir>.overwritten-<time>`,
  never silently mixed with the new run's.
* It restores the run's working tokenizer (`output_dir/tokenizer`) from the checkpoint when it is
  missing or differs, so a resumed run never trains a new one whose ids mean other tokens.

Every run has a run id (`hfssl_run.json`), written into each checkpoint's manifest; `latest` only
resumes checkpoints of the run output_dir holds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from hfssl import errors
from hfssl.checkpointing import (
    TOKENIZER,
    checkpoint_run_id,
    clean_partial_saves,
    file_hash,
    find_latest_checkpoint,
    fsync_dir,
    read_manifest,
    save_failure,
    verify_checkpoint,
    write_json,
)
from hfssl.distributed import check_shared
from hfssl.errors import CheckpointError, OutputDirError
from hfssl.output_lock import LOCK_FILE, OutputDirLock

logger = logging.getLogger(__name__)

RUN_FILE = "hfssl_run.json"
# Files that mean output_dir holds a finished model (a run that `latest` must not silently replace).
FINAL_FILES = ("train_results.json",)
# Settings that name what a run reads: a folder or file of them inside output_dir would be moved aside with it.
INPUT_KEYS = ("train_file", "validation_file", "test_file", "train_dir", "validation_dir", "test_dir", "dataset_name",
              "model_name_or_path", "config_name", "tokenizer_name", "generator_name_or_path", "label_model", "kmeans_model",
              "quantizer_path")


# ----------------------------------------------------------------------------------- the run's folder

@dataclass
class RunDir:
    """An opened output_dir: the run's id, the checkpoint to resume from (verified) or None."""

    path: Path
    run_id: str
    resume: Optional[Path]
    lock: Optional[OutputDirLock] = None  # held by the main process only
    users: int = field(default=1, repr=False)


_OPEN: dict[str, RunDir] = {}


def open_run_dir(cfg, accelerator=None, train: bool = True) -> RunDir:
    """Lock output_dir and decide what the run starts from (see the module docstring).

    Opened once per process and output_dir: a second call (the training loop after the entry point)
    returns the same RunDir. Close with `close_run_dir`. `train=False` (evaluation only) only locks.
    The main process does the work; the others receive its outcome, or raise the same error.
    """
    path = Path(cfg.output_dir)
    key = str(path.resolve())
    if key in _OPEN:
        _OPEN[key].users += 1
        return _OPEN[key]
    main = accelerator is None or accelerator.is_main_process
    lock, outcome, failure = None, None, None
    if main:
        try:
            if path.exists() and not path.is_dir():
                raise OutputDirError(f"output_dir '{path}' exists and is a file.")
            lock = OutputDirLock(path)
            lock.acquire()
            outcome = ("ok", *_prepare(cfg, path, train), lock.record)
        except Exception as e:  # noqa: BLE001 - every process must learn that the main one failed
            if lock is not None:
                lock.release()
            failure = e
            outcome = ("error", type(e).__name__ if isinstance(e, errors.HfsslError) else "", str(e))
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        outcome = broadcast_object_list([outcome])[0]
    if failure is not None:
        raise failure
    if outcome[0] == "error":
        error = getattr(errors, outcome[1], None) if outcome[1] else None
        raise (error or RuntimeError)(outcome[2] if error else f"The main process failed to open output_dir: {outcome[2]}")
    _, run_id, resume, holder = outcome
    if accelerator is not None and accelerator.num_processes > 1:
        try:
            check_shared(accelerator, path / LOCK_FILE, holder)  # every process sees output_dir
        except OutputDirError:
            if lock is not None:
                lock.release()
            raise
    run = RunDir(path, run_id, Path(resume) if resume else None, lock)
    _OPEN[key] = run
    return run


def close_run_dir(run: RunDir) -> None:
    """Release output_dir when its last user closes it."""
    run.users -= 1
    if run.users > 0:
        return
    if run.lock is not None:
        run.lock.release()
    _OPEN.pop(str(run.path.resolve()), None)


def _prepare(cfg, path: Path, train: bool) -> tuple[str, Optional[str]]:
    """(run id, checkpoint to resume or None). Runs on the main process while holding the lock."""
    stale = clean_partial_saves(path)
    if stale:
        logger.warning("Removed %d unfinished save(s) left by an interrupted run: %s", len(stale), ", ".join(p.name for p in stale))
    if not train:
        return _read_run_id(path) or uuid.uuid4().hex, None
    resume = cfg.resume_from_checkpoint
    if resume == "latest":
        recorded = _read_run_id(path)
        found, damaged = find_latest_checkpoint(path, recorded)
        if found is not None:
            return _continue(path, found), str(found)
        finals = [name for name in FINAL_FILES if (path / name).exists()]
        # Files but no checkpoint and no hfssl run file (another tool's model, someone's notes) are not a run to
        # continue: a start from step 0 would empty their training_log.jsonl and replace their config.json and model.
        # An hfssl run killed before its first checkpoint (a requeued job) starts again from step 0 in place.
        earlier = _earlier_files(path)
        ours = (path / RUN_FILE).is_file()
        if damaged or finals or (earlier and not ours):
            what = damaged + [f"{path / name} is the final output of a finished run" for name in finals]
            names = sorted(p.name for p in earlier)
            what = what or [f"it holds {', '.join(names[:6])}{' ...' if len(names) > 6 else ''} and no checkpoint"]
            _refuse_inputs_inside(cfg, path)
            if cfg.on_no_good_checkpoint == "error":
                raise CheckpointError(
                    f"resume_from_checkpoint latest: no checkpoint in '{path}' can be resumed, and the folder holds an earlier "
                    f"run: {'; '.join(what)}. Nothing was changed. Restore the damaged files, give --resume_from_checkpoint "
                    f"a checkpoint folder, choose another --output_dir, or set --on_no_good_checkpoint start_over to move "
                    f"these files aside and start over.")
            _move_aside(path, "on_no_good_checkpoint start_over")
        elif earlier:
            logger.info("resume_from_checkpoint latest: the run in %s saved no checkpoint yet; starting it again from step 0.", path)
        return _start(path), None
    if resume:
        checkpoint = Path(resume)
        verify_checkpoint(checkpoint)
        # A checkpoint from elsewhere into a folder that holds another run would mix the two: refused, nothing changed.
        outside = path.resolve() not in checkpoint.resolve().parents
        if outside and _earlier_files(path) and _read_run_id(path) != checkpoint_run_id(checkpoint):
            raise OutputDirError(
                f"output_dir '{path}' holds files of another run than the checkpoint {checkpoint}; resuming there would mix "
                f"the two runs' logs, checkpoints and results. Choose another (or an empty) --output_dir, or move those files away.")
        return _continue(path, checkpoint), str(checkpoint)
    if _earlier_files(path):
        _refuse_inputs_inside(cfg, path)
        if not cfg.overwrite_output_dir:
            raise OutputDirError(
                f"output_dir '{path}' already holds files from an earlier run. Use --overwrite_output_dir true to move "
                f"them aside and start over, --resume_from_checkpoint latest to continue it, or choose another --output_dir.")
        _move_aside(path, "overwrite_output_dir")
    return _start(path), None


def _refuse_inputs_inside(cfg, path: Path) -> None:
    """An output_dir holding earlier files and this run's own input: moving the files aside would take the input too."""
    root, found = path.resolve(), []
    for key in INPUT_KEYS:
        value = getattr(cfg, key, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(item, str) or not item:
                continue
            stem = item.split("*")[0].split("?")[0].split("[")[0]
            base = Path(os.path.expanduser(stem))
            if stem != item and not base.exists():  # a glob cut inside a name ('data/part-*'): its folder
                base = base.parent
            if stem and base.exists() and (base.resolve() == root or root in base.resolve().parents):
                found.append(f"{key} '{item}'")
    if found:
        raise OutputDirError(
            f"output_dir '{path}' holds this run's own input ({', '.join(found)}): the run writes there, and moving its "
            f"earlier files aside would take the input with them. Nothing was changed. Choose another --output_dir.")


def _earlier_files(path: Path) -> list[Path]:
    """What an earlier run left in `path`, besides the lock; none when that is only its run file (its setup failed,
    e.g. on a config error, before it wrote anything: the corrected rerun may start there)."""
    found = [p for p in path.iterdir() if p.name != LOCK_FILE] if path.is_dir() else []
    return [] if [p.name for p in found] == [RUN_FILE] else found


def _start(path: Path) -> str:
    run_id = uuid.uuid4().hex
    write_json(path / RUN_FILE, {"run_id": run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return run_id


def _continue(path: Path, checkpoint: Path) -> str:
    """Resume `checkpoint` into `path`: the run keeps its id, and its working tokenizer comes back."""
    run_id = checkpoint_run_id(checkpoint)
    restore_tokenizer(checkpoint, path)
    if _read_run_id(path) != run_id:
        write_json(path / RUN_FILE, {"run_id": run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed_from": str(checkpoint)})
    return run_id


def _read_run_id(path: Path) -> Optional[str]:
    try:
        data = json.loads((path / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data.get("run_id") if isinstance(data, dict) and isinstance(data.get("run_id"), str) else None


def _move_aside(path: Path, why: str) -> Path:
    """Move everything but the lock from `path` into the sibling folder `<name>.overwritten-<time>`."""
    path = path.resolve()  # Path(".").name is "": the folder would be made inside path, then moved into itself
    entries = _earlier_files(path)  # listed before the new folder exists: it is never one of them
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.parent / f"{path.name}.overwritten-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = path.parent / f"{path.name}.overwritten-{stamp}-{n}"
    dest.mkdir()
    for entry in entries:
        shutil.move(str(entry), str(dest / entry.name))  # a rename on the same filesystem
    logger.warning("%s: moved the earlier run's %d file(s)/folder(s) from %s to %s; delete that folder when you no longer need it.",
                   why, len(entries), path, dest)
    return dest


def restore_tokenizer(checkpoint: Path, path: Path) -> None:
    """Make `path/tokenizer` equal to the checkpoint's copy (by the manifest's hashes), if it has one."""
    listed = read_manifest(checkpoint)["files"]
    saved = {rel[len(TOKENIZER) + 1:]: info["xxh3_128"] for rel, info in listed.items() if rel.startswith(TOKENIZER + "/")}
    if not saved:
        return
    working = path / TOKENIZER
    present = {p.relative_to(working).as_posix() for p in working.rglob("*") if p.is_file()} if working.is_dir() else set()
    problem = next((f"{working / rel} is missing" for rel in sorted(saved) if rel not in present), None)
    problem = problem or next((f"{working / rel} differs from the checkpoint's copy" for rel in sorted(saved)
                               if file_hash(working / rel) != saved[rel]), None)
    problem = problem or next((f"{working / rel} is not in the checkpoint's copy" for rel in sorted(present - set(saved))), None)
    if problem is None:
        return
    logger.warning("The run's tokenizer does not match %s (%s): restoring it from the checkpoint.", checkpoint, problem)
    tmp = path / ".tmp-tokenizer"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint / TOKENIZER, tmp)
    shutil.rmtree(working, ignore_errors=True)
    os.replace(tmp, working)


# ----------------------------------------------------------------------------------- files of a run

def trim_log(path: Path, step: int) -> None:
    """On resume keep the log rows up to `step` (the interrupted run wrote some after its checkpoint).

    A last line cut by a kill during its write is dropped; a damaged line elsewhere is an error naming it."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines):
                logger.warning("%s: dropping its last line, cut off by the interruption: %r", path, line[:80])
                continue
            raise CheckpointError(f"{path} line {number} is not JSON: {line[:80]!r}. Delete or fix that line, then resume.") from None
        if row.get("step", 0) <= step:
            rows.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    os.replace(tmp, path)


def save_final(write: Callable[[str], None], output_dir: Path) -> None:
    """Write the final model like a checkpoint: into a hidden folder first, then move each file into
    output_dir. A failure (a full disk) leaves output_dir as it was and names the file."""
    staging = output_dir / ".tmp-final"
    shutil.rmtree(staging, ignore_errors=True)
    # The inner folder has output_dir's name: model cards title themselves with their folder's name.
    inner = staging / output_dir.resolve().name
    inner.mkdir(parents=True)
    try:
        write(str(inner))
    except Exception as e:
        raise save_failure(e, staging, output_dir) from e
    for entry in sorted(inner.iterdir()):
        target = output_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    shutil.rmtree(staging)
    fsync_dir(output_dir)
