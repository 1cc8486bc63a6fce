"""Reuse tokenized and packed corpora across runs: each preparation step writes its Arrow files into a
folder named by a hash of everything its output depends on, and marks it complete last.

The key of a step holds the source files (path, size, modification time), how documents were chosen
(split, held-out share and seed, max_train_samples), the tokenizer (hash of its full definition),
whether word ids are kept, line by line or packed, and the block size; anything else that changes
leaves the key, and so the cache, as it was. Folders live in `$HF_DATASETS_CACHE/hfssl-text/`.

A step is built into a private temporary folder and renamed into place once complete, so a killed
build is never reused and two processes (e.g. one per node on a shared filesystem) may build the
same step at once: the first rename wins. Processes that do not build wait for the folder to appear
(by polling the file system, not in a collective, which would time out during a long build).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Optional

import datasets

logger = logging.getLogger(__name__)

VERSION = 1  # bump when the format of the cached data changes
DONE = "done.json"


def cache_root() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "hfssl-text"


def digest(key) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def tokenizer_hash(tokenizer) -> str:
    """Hash of everything that decides the ids: the full tokenizer definition and its special tokens."""
    definition = _fast_definition(tokenizer) if tokenizer.is_fast else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([type(tokenizer).__name__, tokenizer.special_tokens_map, tokenizer.all_special_ids], sort_keys=True, default=str)
    return hashlib.sha256((definition + extra).encode()).hexdigest()[:20]


def _fast_definition(tokenizer) -> str:
    """The fast tokenizer's JSON without its truncation and padding state: encoding line by line turns truncation
    on and leaves it on, so with that state the same tokenizer hashed differently before and after its first use,
    and processes that had tokenized a split waited on other cache folders than those that had not (a hang).
    The steps' keys hold the truncation that matters (max_length); `encode` never pads."""
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    return json.dumps(definition, sort_keys=True)


def files_signature(paths: list[str]) -> list[list]:
    """[absolute path, size, mtime in ns] per file: a changed, replaced or touched file changes it."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return out


class Cached:
    """The result of a step: the dataset (memory-mapped from the cache folder when cached), its stats
    (as measured when it was built), whether it was reused, and the folder (None: in memory)."""

    def __init__(self, dataset: datasets.Dataset, stats: dict, reused: bool, folder: Optional[Path]):
        self.dataset, self.stats, self.reused, self.folder = dataset, stats, reused, folder


def cached_step(name: str, key: Optional[dict], build: Callable[[Optional[str]], tuple[datasets.Dataset, dict]],
                builds_here: bool = True) -> Cached:
    """Run `build(cache_file)` -> (dataset, stats), or reuse its earlier output.

    key None: no cache (the source is in memory), build in memory. builds_here False: another process
    (the local main one) builds; wait for its folder."""
    if key is None:
        dataset, stats = build(None)
        return Cached(dataset, stats, False, None)
    folder = cache_root() / f"{name}-{digest({**key, 'step': name, 'version': VERSION})}"
    if not (folder / DONE).is_file() and not builds_here:
        _wait_for(folder / DONE)
    if (folder / DONE).is_file():
        info = json.loads((folder / DONE).read_text())
        return Cached(_load(folder, info["files"]), info["stats"], True, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    dataset, stats = build(str(tmp / "data.arrow"))
    files = sorted(Path(f["filename"]).name for f in dataset.cache_files)
    (tmp / DONE).write_text(json.dumps({"files": files, "stats": stats, "key": key, "version": VERSION}, indent=1, default=str))
    del dataset  # its files move with the folder: reopen them from there
    try:
        os.rename(tmp, folder)
    except OSError:  # another process finished the same step first: use its folder
        shutil.rmtree(tmp, ignore_errors=True)
    info = json.loads((folder / DONE).read_text())
    return Cached(_load(folder, info["files"]), info["stats"], False, folder)


def _load(folder: Path, files: list[str]) -> datasets.Dataset:
    parts = [datasets.Dataset.from_file(str(folder / f)) for f in files]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _wait_for(marker: Path, poll: float = 2.0) -> None:
    started = last = time.monotonic()
    logger.info("Waiting for the local main process to prepare %s", marker.parent)
    while not marker.is_file():
        time.sleep(poll)
        if time.monotonic() - last > 600:
            last = time.monotonic()
            logger.info("Still waiting for %s (%.0f min)", marker.parent, (last - started) / 60)


def _remove_stale(folder: Path) -> None:
    """Delete temporary folders of builds of this step that were killed (their process is gone)."""
    host = socket.gethostname()
    for tmp in folder.parent.glob(f".{folder.name}.tmp-{host}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            logger.info("Removing %s, left by an interrupted build", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
