"""Data files named in a recipe: paths or globs of shards, checked at load so a typo or an empty shard
fails before training and not hours into a run."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Optional

from hfssl.errors import ConfigError

TEXT_FILE_EXTENSIONS = (".txt", ".csv", ".json", ".jsonl", ".parquet")
AUDIO_FILE_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl")


def check_file(key: str, path: Optional[str], extensions: tuple[str, ...]) -> None:
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        example = os.path.join(path, "*" + (extensions[0] if extensions else ""))
        raise ConfigError(f"{key}: '{path}' is a directory; give a file, or a glob of the files in it such as '{example}'.")
    if not p.is_file():
        raise ConfigError(f"{key}: file '{path}' does not exist. Check the path (relative paths start at {os.getcwd()}).")
    if p.stat().st_size == 0:
        raise ConfigError(f"{key}: file '{path}' is empty.")
    if data_format(path) not in extensions:
        raise ConfigError(f"{key}: '{path}' has extension '{p.suffix}'; supported: {', '.join(extensions)} "
                          f"(optionally compressed: {', '.join(COMPRESSIONS)}).")


def resolve_data_files(key: str, pattern: Optional[str], extensions: tuple[str, ...]) -> list[str]:
    """A path or a glob ('shards/*.txt.gz', '**' recursive) -> the sorted list of files, each checked
    like a single file, so a typo or an empty shard fails at load and not hours into a stream."""
    if pattern is None:
        return []
    if not any(c in pattern for c in "*?["):
        check_file(key, pattern, extensions)
        return [pattern]
    files = sorted(f for f in glob.glob(pattern, recursive=True) if Path(f).is_file())
    if not files:
        raise ConfigError(f"{key}: the pattern '{pattern}' matches no file (relative paths start at {os.getcwd()}).")
    for f in files:
        check_file(key, f, extensions)
    if len({data_format(f) for f in files}) > 1:
        raise ConfigError(f"{key}: the pattern '{pattern}' matches files of several formats; give one format.")
    return files


COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def data_format(path: str) -> str:
    """'.txt' for corpus.txt and corpus.txt.gz: the format under an optional compression suffix."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""
