"""Atomic, resumable checkpoints.

A checkpoint is written into a hidden temporary folder, then a manifest (every file with its size)
is written LAST, then the folder is renamed to `checkpoint-<step>`. Only folders whose manifest
exists and matches the files on disk are ever resumed from, so a run killed during a save never
leaves a checkpoint that `--resume_from_checkpoint latest` picks up half-written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from hfssl.errors import CheckpointError

logger = logging.getLogger(__name__)

MANIFEST = "hfssl_checkpoint.json"
STATE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def save_checkpoint(accelerator, output_dir: str | Path, step: int, trainer_state: dict, total_limit: Optional[int] = None) -> Path:
    """Save model/optimizer/registered objects/RNG of every process, then trainer_state, atomically."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(tmp / STATE, trainer_state)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        _write_json(tmp / MANIFEST, {"step": step, "files": files})  # written last: marks completeness
        if final.exists():  # a rollback re-saves a step: replace the old one only now
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def verify_checkpoint(path: str | Path) -> dict:
    """Check the manifest and every file it lists; return trainer_state. Raises CheckpointError naming the file."""
    path = Path(path)
    manifest = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"Checkpoint '{path}' does not exist.")
    if not manifest.is_file():
        if not (path / STATE).is_file() and not _NAME.match(path.name):
            raise CheckpointError(f"'{path}' is not a checkpoint: it has no {MANIFEST}. Pass a checkpoint-<step> folder of an "
                                  f"hfssl run, or --resume_from_checkpoint latest to take the newest one in output_dir.")
        raise CheckpointError(f"Checkpoint '{path}' is incomplete: '{manifest}' is missing (the save was interrupted). "
                              f"Resume from an earlier checkpoint, or --resume_from_checkpoint latest.")
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"Checkpoint manifest '{manifest}' is damaged: {e}") from None
    for name, size in listed.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"Checkpoint file '{f}' is missing.")
        if f.stat().st_size != size:
            raise CheckpointError(f"Checkpoint file '{f}' is truncated or changed: {f.stat().st_size} bytes, expected {size}.")
    return json.loads((path / STATE).read_text())


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Folders named checkpoint-<step> that have a manifest, oldest first (not yet size-verified)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name)) and (p / MANIFEST).is_file()]
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """Newest checkpoint that verifies; damaged ones are skipped with a warning (fall back to the previous)."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            logger.warning("Skipping damaged checkpoint: %s", e)
    return None


def resolve_resume(resume: Optional[str], output_dir: str | Path) -> Optional[Path]:
    """'latest' -> newest good checkpoint in output_dir (None if there is none); a path -> verified path."""
    if resume is None:
        return None
    if resume == "latest":
        return find_latest_checkpoint(output_dir)
    verify_checkpoint(resume)
    return Path(resume)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
