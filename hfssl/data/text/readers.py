"""Read documents from local text files (.txt, .jsonl/.json, .csv, .parquet, each optionally compressed
.gz/.bz2/.xz/.zst), one at a time, and name the file and line (or row) of anything that cannot be read,
with what to do about it.

Used to stream local shards (one shard per file, resumable: `stream_files`), to check every shard's
head before a streamed run starts (`check_heads`), and to find the file and line behind a failure of
`datasets.load_dataset`, whose own errors name neither (`locate_problem`).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import zlib
from pathlib import Path
from typing import Iterator, Optional

import datasets

from hfssl.data.files import data_format
from hfssl.errors import DataError

# A .txt file is read in chunks cut at line ends and split like datasets' "text" builder (universal newlines,
# then on "\n" only, as its StringIO.readlines: not str.splitlines, which also splits on \x0c, \x85, U+2028 ...),
# so a streamed file has the same documents, and line numbers, as a loaded one.
_CHUNK_CHARS = 1 << 20
_HEAD_DOCS = 16  # documents read from each shard by check_heads
ENCODING_FIX = ("convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`), or remove the file "
                "if it is not text")
# Python's csv reader refuses fields over 131,072 characters by default, while datasets' CSV loader reads any length:
# raised so that a streamed CSV has the documents of a loaded one. 2**31 - 1, not sys.maxsize: that overflows the C long
# of some platforms (Windows).
_CSV_FIELD_LIMIT = 2**31 - 1
_BROKEN = (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError)  # truncated or corrupt compression


def _open_binary(path: str):
    suffix = Path(path).suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path}: reading .zst files needs the `zstandard` package: pip install zstandard") from None
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def _open_text(path: str, newline: Optional[str] = None) -> io.TextIOWrapper:
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8", errors="strict", newline=newline)


def first_record(path: str) -> dict:
    """The first record of a file, as {column: value} ({'text': line} for .txt), for choosing the column."""
    for record in _records(path):
        return record[1]
    return {}


def read_documents(path: str, column: str) -> Iterator[str]:
    """The documents of one file in order, one per line/row (blank ones included, as ''), with errors that
    name the file and line or row. `column` is ignored for .txt files."""
    if data_format(path) == ".txt":
        column = "text"  # _records' name for a line
    for where, record in _records(path):
        if column not in record:  # another key (e.g. a later shard written differently): not a blank document
            raise DataError(
                f"{path}, {where}: no column '{column}' (this record has: {', '.join(map(str, record)) or 'none'}). Every "
                f"file must hold the text in the same column: set --text_column_name to the column that holds it, or "
                f"rewrite or remove this file.")
        value = record[column]
        if value is None:  # an explicit null (or a CSV cell missing at the row's end): an empty document
            yield ""
        elif isinstance(value, str):
            yield value
        else:
            raise DataError(
                f"{path}, {where}: column '{column}' holds {type(value).__name__} {str(value)[:40]!r}, not text. The text "
                f"column must hold strings: set text_column_name to the column that holds the text, or convert the values.")


def _records(path: str) -> Iterator[tuple[str, dict]]:
    """(where, record) for each line/row: where is 'line N' or 'row N' (1-based)."""
    fmt = data_format(path)
    line = 0
    try:
        if fmt == ".txt":
            with _open_text(path) as f:
                while True:
                    chunk = f.read(_CHUNK_CHARS)
                    if not chunk:
                        break
                    chunk += f.readline()
                    lines = chunk.split("\n")  # newlines already universal: what StringIO.readlines splits on
                    if lines[-1] == "":
                        lines.pop()  # the piece after the chunk's last line end
                    for text in lines:
                        line += 1
                        yield f"line {line}", {"text": text}
        elif fmt in (".jsonl", ".json"):
            yield from _json_records(path)
        elif fmt == ".csv":
            csv.field_size_limit(_CSV_FIELD_LIMIT)
            with _open_text(path, newline="") as f:
                reader = csv.DictReader(f)
                try:
                    for row in reader:
                        line = reader.line_num
                        yield f"line {line}", row
                except csv.Error as e:  # names neither the file nor the line (DictReader's line_num lags: the csv reader's)
                    raise DataError(f"{path}: line {reader.reader.line_num}: not valid CSV ({e}). Fix or remove that line, or "
                                    f"convert the file to .jsonl.") from None
        elif fmt == ".parquet":
            yield from _parquet_records(path)
        else:
            raise DataError(f"{path}: unsupported format '{fmt}'; use .txt, .jsonl, .json, .csv or .parquet.")
    except UnicodeDecodeError as e:
        raise DataError(_decode_error(path, e)) from None
    except DataError:
        raise
    except _BROKEN as e:
        after = f" after line {line}" if line else ""
        raise DataError(f"{path}: cannot be read{after}: {type(e).__name__}: {e}. The file is truncated or not what its "
                        f"extension says; re-create or re-download it, or remove it from the corpus.") from None


def _json_records(path: str) -> Iterator[tuple[str, dict]]:
    with _open_text(path) as f:
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
        if first == "[":  # one JSON array of objects (not streamable: read whole)
            try:
                rows = json.loads(first + f.read())
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}). Fix the file, or write one JSON object "
                                f"per line (.jsonl).") from None
            for i, row in enumerate(rows, 1):
                yield f"row {i}", _object(path, f"row {i}", row)
            return
        for i, text in enumerate(_prepend(first, f), 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {i}: not valid JSON ({e.msg}). Each line must be one JSON object, "
                                f"e.g. {{\"text\": \"...\"}}; fix or remove that line.") from None
            yield f"line {i}", _object(path, f"line {i}", row)


def _prepend(first: str, f) -> Iterator[str]:
    rest = f.readline()
    yield first + rest
    yield from f


def _object(path: str, where: str, row) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{path}: {where}: expected a JSON object such as {{\"text\": \"...\"}}, found {type(row).__name__}.")
    return row


def _parquet_records(path: str) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e}); re-create or re-download it.") from None
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield f"row {row}", record
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot be read after row {row}: {e}; re-create or re-download it.") from None


def _decode_error(path: str, error: UnicodeDecodeError) -> str:
    """Message for a file that is not UTF-8, naming the first line that fails to decode."""
    line, offset = _first_undecodable_line(path)
    where = f"line {line} (byte {offset})" if line else "its text"
    return (f"{path}: {where} is not valid UTF-8 ({error.reason}, byte 0x{error.object[error.start]:02x}). "
            f"Text files must be UTF-8: {ENCODING_FIX}.")


def _first_undecodable_line(path: str) -> tuple[int, int]:
    """(1-based line, byte offset of the line) of the first line that is not UTF-8, or (0, 0)."""
    offset = 0
    try:
        with _open_binary(path) as f:
            for i, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return i, offset
                offset += len(raw)
    except _BROKEN:
        pass
    return 0, 0


# ----------------------------------------------------------------------------------- use by the corpus loader

def stream_files(files: list[str], column: str) -> datasets.IterableDataset:
    """A resumable `datasets` stream of {'text': document} over `files`, one shard per file, in order.

    Its state_dict is (shard, documents into the shard): a resumed stream opens no earlier shard and
    yields from the saved document on (the lines before it in that shard are decoded, not yielded)."""
    return datasets.IterableDataset.from_generator(
        _generate, gen_kwargs={"files": list(files), "column": column},
        features=datasets.Features({"text": datasets.Value("string")}))


def _generate(files: list[str], column: str) -> Iterator[dict]:
    for path in files:
        for text in read_documents(path, column):
            yield {"text": text}


def check_heads(files: list[str], column: str) -> None:
    """Read the first documents of every shard, so that a binary, mis-encoded, mis-compressed or
    mis-formatted shard fails before training rather than hours into a stream."""
    for path in files:
        for i, _ in enumerate(read_documents(path, column)):
            if i + 1 >= _HEAD_DOCS:
                break


def locate_problem(files: list[str], column: Optional[str]) -> None:
    """Read every file in full; raise the DataError (file, line, cause, fix) of the first one that
    cannot be read. Used after `datasets.load_dataset` failed without saying where."""
    for path in files:
        name = column or _default_column(path)
        if name is not None:
            for _ in read_documents(path, name):
                pass


def _default_column(path: str) -> Optional[str]:
    record = first_record(path)
    if "text" in record:
        return "text"
    strings = [k for k, v in record.items() if isinstance(v, str)]
    return strings[0] if len(strings) == 1 else None
