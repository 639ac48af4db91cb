"""Documents from every input kind, streamed one at a time: JSONL (plain, gzipped or
zstandard-compressed), text files, Parquet, and the Python standard library's docstrings.

Invalid UTF-8 is repaired and counted rather than fatal (web corpora have it); malformed records
stop the run with their file and line, or are skipped and counted with `skip_bad`.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from layerwise.data.inputs import PYTHON_DOCS, Source, read_file_bytes, stdlib_python_files
from layerwise.util.errors import UserError

_SURROGATE = re.compile("[\ud800-\udfff]")


# --- readers ------------------------------------------------------------------------------


@dataclass
class ReadStats:
    """Running tallies the readers update while streaming (progress and meta.json counts)."""

    bytes_read: int = 0
    invalid_utf8_documents: int = 0
    skipped_bad_records: int = 0
    empty_documents: int = 0


def read_documents(
    sources: Sequence[Source], text_field: str, skip_bad: bool, stats: ReadStats
) -> Iterator[str]:
    """Every document's text, in input order, one at a time (the corpus is never in RAM).

    Empty documents are dropped (they would only add a lone EOS) and counted.
    """
    for source in sources:
        try:
            for text in _READERS[source.kind](source.path, text_field, skip_bad, stats):
                if text:
                    yield text
                else:
                    stats.empty_documents += 1
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(f"cannot read {source.path}: {exc}") from exc


def _read_jsonl(path: Path, text_field: str, skip_bad: bool, stats: ReadStats) -> Iterator[str]:
    """One document per line; a bad line names its file and line number."""
    base = stats.bytes_read
    with path.open("rb") as raw:
        lines: Iterable[bytes] = raw
        if path.name.endswith(".gz"):
            lines = gzip.GzipFile(fileobj=raw)
        elif path.name.endswith(".zst"):
            lines = _zstd_lines(path, raw)
        for number, line in enumerate(lines, start=1):
            stats.bytes_read = base + raw.tell()
            if not line.strip():
                continue
            text = _decode(line, stats)
            where = f"{path}:{number}"
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                _reject(
                    f"{where}: malformed JSON ({exc.msg} at column {exc.colno})", skip_bad, stats
                )
                continue
            value = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                _reject(f"{where}: {_missing_field(record, text_field)}", skip_bad, stats)
                continue
            yield _repair_surrogates(value, stats)


def _zstd_lines(path: Path, raw: BinaryIO) -> Iterator[bytes]:
    """The lines of a zstandard stream (the `zstd` extra), a corrupt one named as unreadable."""
    try:
        import zstandard
    except ImportError as exc:
        raise UserError(
            f"{path}: reading .jsonl.zst needs zstandard: pip install 'layerwise[zstd]'"
        ) from exc
    try:
        yield from io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
    except zstandard.ZstdError as exc:
        raise UserError(f"cannot read {path}: not a valid zstandard stream ({exc})") from exc


def _read_txt(path: Path, text_field: str, skip_bad: bool, stats: ReadStats) -> Iterator[str]:
    """A whole file is one document."""
    data = read_file_bytes(path)
    stats.bytes_read += len(data)
    yield _decode(data, stats)


def _read_parquet(path: Path, text_field: str, skip_bad: bool, stats: ReadStats) -> Iterator[str]:
    """Rows of one text column, read a record batch at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UserError(
            f"{path}: reading .parquet needs pyarrow: pip install 'layerwise[parquet]'"
        ) from exc
    base = stats.bytes_read
    size = path.stat().st_size
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc})") from exc
    if text_field not in parquet.schema_arrow.names:
        columns = ", ".join(parquet.schema_arrow.names)
        raise UserError(f"{path}: no column {text_field!r} (columns: {columns})")
    total_rows = max(parquet.metadata.num_rows, 1)
    row = 0
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            row += 1
            if isinstance(value, bytes):
                yield _decode(value, stats)
            elif isinstance(value, str):
                yield _repair_surrogates(value, stats)
            else:
                _reject(
                    f"{path}: row {row}: {text_field!r} is {value!r}, not text", skip_bad, stats
                )
        stats.bytes_read = base + size * row // total_rows


def _read_arrow(path: Path, text_field: str, skip_bad: bool, stats: ReadStats) -> Iterator[str]:
    """Rows of one text column of an Arrow stream file (what `datasets` save_to_disk writes)."""
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise UserError(
            f"{path}: reading .arrow needs pyarrow: pip install 'layerwise[parquet]'"
        ) from exc
    base, row = stats.bytes_read, 0
    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            if text_field not in reader.schema.names:
                columns = ", ".join(reader.schema.names)
                raise UserError(
                    f"{path}: no column {text_field!r} (columns: {columns}; choose one with "
                    "--text-field)"
                )
            column = reader.schema.get_field_index(text_field)
            for batch in reader:
                for value in batch.column(column).to_pylist():
                    row += 1
                    if isinstance(value, str):
                        yield _repair_surrogates(value, stats)
                    else:
                        _reject(
                            f"{path}: row {row}: {text_field!r} is {value!r}, not text",
                            skip_bad,
                            stats,
                        )
                stats.bytes_read = base + source.tell()
    except pa.ArrowInvalid as exc:
        raise UserError(f"{path}: not a readable Arrow stream file ({exc})") from exc


def _read_python_docs(
    root: Path, text_field: str, skip_bad: bool, stats: ReadStats
) -> Iterator[str]:
    for file in stdlib_python_files(root):
        stats.bytes_read += file.stat().st_size
        yield from python_docs_documents([file])


_READERS: dict[str, Callable[[Path, str, bool, ReadStats], Iterator[str]]] = {
    "jsonl": _read_jsonl,
    "txt": _read_txt,
    "parquet": _read_parquet,
    "arrow": _read_arrow,
    PYTHON_DOCS: _read_python_docs,
}


def _decode(data: bytes, stats: ReadStats) -> str:
    """UTF-8 text; invalid bytes become U+FFFD and the document is counted, not rejected."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8_documents += 1
        return data.decode("utf-8", errors="replace")


def _repair_surrogates(text: str, stats: ReadStats) -> str:
    """JSON escapes can encode lone surrogates, which no tokenizer accepts: replace and count.

    isascii() is O(1) in CPython and encode() runs at memory speed, so clean text (nearly all
    of it) never reaches the slower regular expression.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        stats.invalid_utf8_documents += 1
        return _SURROGATE.sub("\ufffd", text)
    return text


def _reject(message: str, skip_bad: bool, stats: ReadStats) -> None:
    """Stop on a bad record, or count it when the user asked to skip them."""
    if not skip_bad:
        raise UserError(f"{message} (pass --skip-bad to skip such records)")
    stats.skipped_bad_records += 1


def _missing_field(record: object, text_field: str) -> str:
    if not isinstance(record, dict):
        return f"expected a JSON object with a {text_field!r} field, got {type(record).__name__}"
    if text_field not in record:
        fields = ", ".join(map(str, record)) or "none"
        return f"no {text_field!r} field (fields: {fields}; choose one with --text-field)"
    return f"field {text_field!r} is {type(record[text_field]).__name__}, not a string"


# --- python-docs --------------------------------------------------------------------------


def python_docs_documents(files: Iterable[Path]) -> Iterator[str]:
    """One document per module: its docstrings in source order, separated by blank lines.

    The files are parsed, never imported (importing runs code and can have side effects);
    files that are not valid Python 3 (lib2to3's test data) are passed over.
    """
    for file in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(read_file_bytes(file), filename=str(file))
        except (SyntaxError, ValueError):
            continue
        docstrings = list(_docstrings(tree))
        if docstrings:
            yield "\n\n".join(docstrings)


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of a module and its classes and functions, depth first in source order."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        docstring = ast.get_docstring(node, clean=True)
        if docstring:
            yield docstring
    for child in ast.iter_child_nodes(node):
        yield from _docstrings(child)
