"""Progress of a `datasets.map` over a corpus, in documents/s and tokens/s, also when `num_proc`
workers do the work: each worker writes its running counts to a small file in a folder that the
parent watches (works with fork and spawn, needs nothing shared but the folder's name)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import datasets
from tqdm.auto import tqdm

_counts: dict[str, list[int]] = {}  # folder -> [documents, tokens] done by this process


def report(folder: Optional[str], documents: int, tokens: int) -> None:
    """Called by the map function after each batch (in whichever process runs it)."""
    if folder is None:
        return
    done = _counts.setdefault(folder, [0, 0])
    done[0] += documents
    done[1] += tokens
    tmp = Path(folder) / f".{os.getpid()}"
    tmp.write_text(f"{done[0]} {done[1]}")
    os.replace(tmp, Path(folder) / str(os.getpid()))


class MapProgress:
    """`with MapProgress("Tokenizing train", total_documents) as folder:` run the map with `folder`
    passed to `report`; a tqdm bar shows documents/s and tokens/s. datasets' own bar is paused meanwhile."""

    def __init__(self, desc: str, total_documents: int, enabled: bool = True):
        self.desc, self.total, self.enabled = desc, total_documents, enabled
        self.documents = self.tokens = 0

    def __enter__(self) -> Optional[str]:
        if not self.enabled:
            return None
        self.folder = tempfile.mkdtemp(prefix="hfssl-progress-")
        self.bar = tqdm(total=self.total, desc=self.desc, unit=" docs", unit_scale=True, dynamic_ncols=True)
        self.started = time.perf_counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        self.restore_datasets_bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        return self.folder

    def _read(self) -> None:
        documents = tokens = 0
        for f in Path(self.folder).iterdir():
            if not f.name.startswith("."):
                try:
                    d, t = f.read_text().split()
                except (OSError, ValueError):  # replaced while being read: counted next time
                    continue
                documents, tokens = documents + int(d), tokens + int(t)
        self.documents, self.tokens = documents, tokens
        self.bar.n = documents
        rate = tokens / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{rate / 1e6:.2f}M tokens/s" if rate >= 1e5 else f"{rate / 1e3:.1f}k tokens/s", refresh=False)
        self.bar.refresh()

    def _watch(self) -> None:
        while not self.stop.wait(0.5):
            self._read()

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self.stop.set()
        self.thread.join()
        self._read()
        self.bar.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.restore_datasets_bars:
            datasets.enable_progress_bars()
