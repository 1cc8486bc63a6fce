"""The exclusive lock on a run's output folder (`output_dir/.hfssl.lock`), taken by `hfssl.run_dir.open_run_dir`.

The file holds the holder's pid, host and start time and is `flock`ed while the run lives (the kernel frees it
when the process dies, even on kill -9). A lock whose holder is gone is taken over with a warning: on this host
when the flock is free; from another host when its heartbeat (the file's mtime, refreshed every 30 s) is older
than 5 min.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from hfssl.errors import OutputDirError

logger = logging.getLogger(__name__)

LOCK_FILE = ".hfssl.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # a lock from another host not refreshed for this long belongs to a run that is gone


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
