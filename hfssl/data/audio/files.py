"""Which audio files there are: recursive folder search, CSV/TSV/JSONL manifests, audiofolder layouts.

Nothing here opens an audio file; ``hfssl.data.audio.decode.scan_audio`` validates what these list.
"""

from __future__ import annotations

import csv
import json
import logging
import os

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS: tuple[str, ...] = (".flac", ".mp3", ".ogg", ".wav")
"""Lower-case file extensions that libsndfile (via soundfile) decodes; matched case-insensitively."""

METADATA_FILENAMES: tuple[str, ...] = ("metadata.csv", "metadata.jsonl")
"""Files that turn a directory into a Hugging Face ``audiofolder`` with metadata columns."""


def _is_audio(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def find_audio_files(root: str | os.PathLike) -> list[str]:
    """All audio files under ``root``, recursively, as sorted paths (``root`` joined with the relative path).

    Hidden files and folders (name starting with ".") are skipped, so ``.ipynb_checkpoints`` and
    editor droppings never become training data. Sorting is by the full path string, so the
    result is identical on every machine and filesystem.

    Raises:
        NotADirectoryError: ``root`` is not a directory.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"audio root is not a directory: {root}")
    found, seen = [], set()
    # Symlinked folders are followed (a class folder linked in from elsewhere is data too); each real
    # folder is read once, so a link back up the tree cannot loop.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and _is_audio(f))
    return sorted(found)


def _resolve(base_dir: str, value: str) -> str:
    value = os.path.expanduser(value)
    return os.path.normpath(value if os.path.isabs(value) else os.path.join(base_dir, value))


def _read_table(path: str) -> tuple[list[dict], list[str]]:
    """Rows and column names of a .csv / .tsv / .jsonl / .json manifest."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".csv", ".tsv"):
        # utf-8-sig: Excel's "CSV UTF-8" starts the file with a BOM, which would become part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
            rows = list(reader)
            columns = list(reader.fieldnames or [])
        return rows, columns
    if ext in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for lineno, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: invalid JSON line ({e})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: every JSON record must be an object")
        columns = list(dict.fromkeys(k for r in rows for k in r))
        return rows, columns
    raise ValueError(f"{path}: unsupported manifest type '{ext}' (use .csv, .tsv, .jsonl or .json)")


def read_manifest(path: str | os.PathLike, audio_column_name: str = "path") -> list[dict]:
    """Rows of a CSV/TSV/JSONL manifest, each with a resolved ``"path"`` plus the other columns.

    The audio column's value becomes ``row["path"]`` (relative values are resolved against the
    manifest's folder, so a manifest and its audio can move together); the audio column itself
    is dropped when it is not called ``"path"``. Other columns (labels, transcriptions) pass
    through unchanged: strings for CSV, JSON types for JSONL. Files are not opened here; use
    ``scan_audio`` to validate them.

    Raises:
        ValueError: the audio column is missing (message names the file and lists the
            available columns), a row has an empty path, or the manifest also has a
            different column named "path".
    """
    path = os.fspath(path)
    rows, columns = _read_table(path)
    if audio_column_name not in columns:
        raise ValueError(
            f"{path}: audio column '{audio_column_name}' not found; available columns: "
            f"{', '.join(columns) if columns else '(none)'}"
        )
    if audio_column_name != "path" and "path" in columns:
        raise ValueError(
            f"{path}: has both '{audio_column_name}' (audio column) and a 'path' column; rename one"
        )
    base_dir = os.path.dirname(os.path.abspath(path))
    out = []
    for i, row in enumerate(rows):
        value = row.get(audio_column_name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path}: row {i + 1} has an empty or non-string '{audio_column_name}'")
        new = {k: v for k, v in row.items() if k != audio_column_name}
        out.append({"path": _resolve(base_dir, value.strip()), **new})
    return out


def list_audio_dir(root: str | os.PathLike) -> list[dict]:
    """Rows for a Hugging Face ``audiofolder``-style directory, each with ``"path"``.

    Three layouts, checked in this order:
      * ``root/metadata.csv`` or ``root/metadata.jsonl`` with a ``file_name`` column (relative
        to ``root``): rows carry ``"path"`` plus every other metadata column, in file order.
      * every audio file exactly one level down, in at least two folders
        (``root/<label>/x.flac``): rows are ``{"path", "label"}`` with label = folder name.
      * anything else: rows are ``{"path"}`` for every audio file found recursively.
    Rows from a file scan are sorted by path.

    Raises:
        NotADirectoryError / ValueError: ``root`` missing, or metadata without ``file_name``.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"audio root is not a directory: {root}")
    for name in METADATA_FILENAMES:
        meta = os.path.join(root, name)
        if os.path.isfile(meta):
            rows = read_manifest(meta, audio_column_name="file_name")
            listed = {os.path.abspath(r["path"]) for r in rows}
            unlisted = [f for f in find_audio_files(root) if os.path.abspath(f) not in listed]
            if unlisted:  # audio the metadata does not name is not used: say so rather than drop it silently
                logger.warning("%s names %d audio files; %d more in %s are not in it and are not used (e.g. %s).", meta,
                               len(rows), len(unlisted), root, ", ".join(os.path.relpath(f, root) for f in unlisted[:3]))
            return rows
    files = find_audio_files(root)
    rel_dirs = [os.path.relpath(os.path.dirname(f), root) for f in files]
    one_level = bool(files) and all(d != "." and os.sep not in d for d in rel_dirs)
    if one_level and len(set(rel_dirs)) >= 2:
        return [{"path": f, "label": d} for f, d in zip(files, rel_dirs)]
    return [{"path": f} for f in files]


def class_layout_problem(root: str | os.PathLike) -> str | None:
    """Why ``root`` (a folder without metadata) is not read as ``root/<label>/x.flac`` class folders, or None when it
    is. ``list_audio_dir`` then lists it unlabeled, right for pretraining (nested corpora) but not for a classifier
    asked for labels: this says which file or folder breaks the layout."""
    files = find_audio_files(root)
    rel = [os.path.relpath(f, root) for f in files]
    top = [r for r in rel if os.sep not in r]
    nested = [r for r in rel if r.count(os.sep) > 1]
    classes = sorted({r.split(os.sep)[0] for r in rel if os.sep in r})
    if not classes:
        return f"its audio files are all at the top level: put each in a folder named after its class ({root}/<label>/x.flac)"
    if top:
        return (f"'{top[0]}' ({len(top)} audio file(s) in all) is at the top level next to the class folders "
                f"{', '.join(classes[:5])}: move each into its class folder, or remove it")
    if nested:
        return (f"'{nested[0]}' ({len(nested)} audio file(s) in all) is in a subfolder of a class folder: class folders must "
                "hold their audio files directly (<label>/x.flac)")
    if len(classes) < 2:
        return f"there is only one class folder '{classes[0]}': classification needs at least two"
    return None
