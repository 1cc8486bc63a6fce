"""The output folder of a run: one run at a time, what is resumed, what an earlier run left.

`open_run_dir` is the first thing an entry point does with output_dir, before anything is written
to it (the MLM tokenizer, the audio scan report, k-means):

* It takes an exclusive lock: `output_dir/.hfssl.lock` holds the holder's pid, host and start time
  and is `flock`ed while the run lives (the kernel frees it when the process dies, even on kill -9).
  A lock whose holder is gone is taken over with a warning: on this host when the flock is free;
  from another host when its heartbeat (the file's mtime, refreshed every 30 s) is older than 5 min.
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

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import threading
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

logger = logging.getLogger(__name__)

LOCK_FILE = ".hfssl.lock"
RUN_FILE = "hfssl_run.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # a lock from another host not refreshed for this long belongs to a run that is gone
# Files that mean output_dir holds a finished model (a run that `latest` must not silently replace).
FINAL_FILES = ("train_results.json",)


# ----------------------------------------------------------------------------------- the lock

class OutputDirLock:
    """Exclusive lock on one output_dir for this process (see the module docstring)."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: Optional[int] = None
        self._stop = threading.Event()
        self._record: dict = {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:  # released between the two opens: try again
                    continue
            flocked = _try_flock(fd)
            if flocked is False:
                holder = _read_holder(self.path)
                os.close(fd)
                raise OutputDirError(_busy(self.path, holder))
            if not _same_file(fd, self.path):  # the holder released (unlinked) it after our open: try again
                os.close(fd)
                continue
            holder = None if created else _read_holder(self.path)
            if not created and not self._stale(holder, flocked):
                os.close(fd)
                raise OutputDirError(_busy(self.path, holder, other_host=bool(holder) and holder.get("host") != socket.gethostname()))
            if holder:
                logger.warning("Taking over the lock %s left by pid %s on %s (started %s): that run is gone.",
                               self.path, holder.get("pid"), holder.get("host"), holder.get("started"))
            break
        self._fd = fd
        self._record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "command": " ".join(sys.argv)[:500]}
        data = json.dumps(self._record).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        threading.Thread(target=self._heartbeat, name="hfssl-lock-heartbeat", daemon=True).start()

    @property
    def record(self) -> dict:
        """What this lock's file holds (pid, host, start, command) while it is held."""
        return dict(self._record)

    def _stale(self, holder: Optional[dict], flocked: Optional[bool]) -> bool:
        """An existing lock file we could flock: stale unless a live holder on another host (or, where
        the filesystem has no flock, a live pid here) may still be refreshing it."""
        age = time.time() - self.path.stat().st_mtime
        if not holder:  # empty: a holder between creating and writing it, unless long ago
            return bool(flocked) or age > STALE_AFTER_S
        if holder.get("host") == socket.gethostname():
            return bool(flocked) or not _pid_alive(int(holder.get("pid", -1)))
        return age > STALE_AFTER_S

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        try:
            if _read_holder(self.path) == self._record:
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)  # frees the flock
        self._fd = None


def _try_flock(fd: int) -> Optional[bool]:
    """True: locked; False: another process holds it; None: this filesystem has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _read_holder(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _busy(path: Path, holder: Optional[dict], other_host: bool = False) -> str:
    who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}" if holder
           else "a run that is starting")
    msg = (f"output_dir '{path.parent}' is in use by another run ({who}; lock file {path}). Wait for it to finish, "
           f"or choose another --output_dir.")
    if other_host:
        msg += (f" If that run is gone, its lock is taken over {STALE_AFTER_S / 60:.0f} minutes after its last heartbeat, "
                f"or delete {path}.")
    return msg


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
        if damaged or finals:
            what = damaged + [f"{path / name} is the final output of a finished run" for name in finals]
            if cfg.on_no_good_checkpoint == "error":
                raise CheckpointError(
                    f"resume_from_checkpoint latest: no checkpoint in '{path}' can be resumed, and the folder holds an earlier "
                    f"run: {'; '.join(what)}. Nothing was changed. Restore the damaged files, give --resume_from_checkpoint "
                    f"a checkpoint folder, or set --on_no_good_checkpoint start_over to move these files aside and start over.")
            _move_aside(path, "on_no_good_checkpoint start_over")
        elif _earlier_files(path):
            logger.info("resume_from_checkpoint latest: no checkpoint in %s yet; starting from step 0.", path)
        return _start(path), None
    if resume:
        checkpoint = Path(resume)
        verify_checkpoint(checkpoint)
        return _continue(path, checkpoint), str(checkpoint)
    if _earlier_files(path):
        if not cfg.overwrite_output_dir:
            raise OutputDirError(
                f"output_dir '{path}' already holds files from an earlier run. Use --overwrite_output_dir true to move "
                f"them aside and start over, --resume_from_checkpoint latest to continue it, or choose another --output_dir.")
        _move_aside(path, "overwrite_output_dir")
    return _start(path), None


def _earlier_files(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name != LOCK_FILE] if path.is_dir() else []


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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.parent / f"{path.name}.overwritten-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = path.parent / f"{path.name}.overwritten-{stamp}-{n}"
    dest.mkdir()
    entries = _earlier_files(path)
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
