"""Reading and writing transaction files: csv.gz, csv, parquet and JSON lines.

:func:`iter_frames` reads any of them in chunks of rows as *raw* pandas DataFrames:
columns are typed when the whole file parses, but a malformed value never stops the
read. When a column holds something that is not of its type (text in ``amount``, a
broken timestamp) that column is read as text instead, so
:func:`bankcourse.schema.clean_frame` can set the bad rows aside with a reason.

:func:`ensure_dataset` gives the course's data file, generating it on first use and
reusing it afterwards. Writers are atomic: data goes to a temporary file in the same
folder that is renamed into place only when complete, so an interrupted run leaves no
half-written dataset behind.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import json
import logging
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from bankcourse import schema
from bankcourse.settings import Settings

try:  # ISA-L's inflate is about three times as fast as zlib's (the csv.gz read's first cost)
    from isal import igzip_threaded as _fast_gzip
except ImportError:  # pragma: no cover - isal is a dependency; plain zlib still works
    _fast_gzip = None

logger = logging.getLogger(__name__)

FORMATS: dict[str, tuple[str, ...]] = {
    "csv.gz": (".csv.gz",),
    "csv": (".csv",),
    "parquet": (".parquet", ".pq"),
    "jsonl": (".jsonl", ".ndjson"),
}
"""Each supported format and the file suffixes that mean it."""

EVENT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""Arrow strftime pattern for ``event_time`` in text files (Arrow adds the microseconds)."""

GZIP_LEVEL = 1
"""gzip level of written csv.gz files: fastest; files about 12 % larger than level 6."""
_IN_FLIGHT = 2  # tables being encoded at once by the writer threads

READ_BLOCK_BYTES = 4 << 20
"""Bytes of text Arrow parses at a time (4 MiB); frames are regrouped to ``chunk_rows``.
Small blocks keep memory bounded whatever ``chunk_rows`` is (Arrow reads a few ahead)."""


def detect_format(path: str | Path) -> str:
    """The format of ``path`` from its suffix: ``csv.gz``, ``csv``, ``parquet`` or ``jsonl``.

    Raises:
        ValueError: the suffix is none of the supported ones (the message lists them).
    """
    name = Path(path).name.lower()
    for fmt, suffixes in FORMATS.items():
        if name.endswith(suffixes):
            return fmt
    known = ", ".join(s for suffixes in FORMATS.values() for s in suffixes)
    raise ValueError(f"cannot tell the format of {Path(path).name!r} from its suffix; "
                     f"use one of {known}")


def dataset_path(settings: Settings, rows: int = 200_000, seed: int = 42,
                 fmt: str = "csv.gz") -> Path:
    """Where :func:`ensure_dataset` keeps the dataset of ``rows`` rows and ``seed``.

    The name carries the generator's version (``paysim-200000-seed42-v1.csv.gz``), so a
    file written by an older generator is never taken for the current one's.
    """
    from bankcourse.generator import GENERATOR_VERSION

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    name = f"paysim-{rows}-seed{seed}-v{GENERATOR_VERSION}{FORMATS[fmt][0]}"
    return Path(settings.data_dir) / name


def ensure_dataset(settings: Settings, rows: int = 200_000, seed: int = 42,
                   fmt: str = "csv.gz") -> Path:
    """The course dataset of ``rows`` rows and ``seed``: generated on first use, then reused.

    Args:
        settings: where to keep it (``settings.data_dir``).
        rows: rows in the dataset. Default: 200,000.
        seed: the generator's seed. Default: 42.
        fmt: ``csv.gz``, ``csv``, ``parquet`` or ``jsonl``. Default: ``csv.gz``.

    Returns:
        The path, named ``paysim-<rows>-seed<seed>-v<generator version>.<format>``.
    """
    path = dataset_path(settings, rows, seed, fmt)
    if path.exists():
        logger.debug("reusing %s", path)
        return path
    from bankcourse import generator

    logger.info("generating %s (first use)", path)
    return generator.write_dataset(path, rows, seed, fmt)


# --- writing ---------------------------------------------------------------------------


class _Writer:
    """Writes Arrow tables with the schema's columns to one file in one format.

    csv.gz is written as one gzip member per table (a valid gzip file that every reader
    accepts), compressed at level 1 on up to two threads while the caller generates
    the next table; at most :data:`_IN_FLIGHT` tables wait, so memory stays bounded.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self._parquet: pq.ParquetWriter | None = None
        self._sink: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[bytes]] = deque()
        self._header = True
        if fmt == "parquet":
            self._parquet = pq.ParquetWriter(str(path), schema.arrow_schema(),
                                             compression="zstd")
        else:
            self._sink = open(path, "wb")  # noqa: SIM115 - closed in close()
            self._pool = ThreadPoolExecutor(max_workers=_IN_FLIGHT,
                                            thread_name_prefix="bankcourse-writer")

    def write(self, table: pa.Table) -> None:
        if self._parquet is not None:
            self._parquet.write_table(table.cast(schema.arrow_schema()))
            return
        assert self._pool is not None
        while len(self._pending) >= _IN_FLIGHT:
            self._sink.write(self._pending.popleft().result())
        encode = _json_lines if self.fmt == "jsonl" else _csv_bytes
        self._pending.append(self._pool.submit(encode, table, self._header,
                                               self.fmt == "csv.gz"))
        self._header = False

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            return
        try:
            while self._pending:
                self._sink.write(self._pending.popleft().result())
            if self._header and self.fmt in ("csv", "csv.gz"):
                # No rows were written: still write the header.
                empty = schema.arrow_schema().empty_table()
                self._sink.write(_csv_bytes(empty, True, self.fmt == "csv.gz"))
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._sink.close()


def _csv_bytes(table: pa.Table, header: bool, compress: bool) -> bytes:
    """One table as csv (event_time as ISO text with Z), gzip-compressed if asked."""
    index = table.schema.get_field_index("event_time")
    table = table.set_column(index, "event_time", event_time_text(table.column("event_time")))
    buffer = pa.BufferOutputStream()
    if header:  # Arrow would quote the names; PaySim's header is plain
        buffer.write((",".join(table.column_names) + "\n").encode())
    pcsv.write_csv(table, buffer, pcsv.WriteOptions(include_header=False,
                                                    quoting_style="none"))
    data = buffer.getvalue()
    if not compress:
        return data.to_pybytes()
    # A codec per call: one Arrow codec object must not be used by two threads at once.
    return pa.Codec("gzip", compression_level=GZIP_LEVEL).compress(data, asbytes=True)


_TWO_DIGITS = np.array([f"{i:02d}".encode() for i in range(100)], dtype="S2").view("V2")
_THREE_DIGITS = np.array([f"{i:03d}".encode() for i in range(1000)], dtype="S3").view("V3")
_ISO_LAYOUT = np.dtype([("date", "V10"), ("t", "u1"), ("hour", "V2"), ("colon1", "u1"),
                        ("minute", "V2"), ("colon2", "u1"), ("second", "V2"), ("dot", "u1"),
                        ("milli", "V3"), ("micro", "V3"), ("z", "u1")])
_DAY_US = 86_400_000_000


def event_time_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Timestamps as ISO-8601 UTC text with microseconds and Z: ``2026-01-01T00:00:03.340083Z``.

    The same text :func:`bankcourse.schema.format_event_time` gives for one value, built
    for a whole column at once with numpy lookups (Arrow's strftime is about 40 times
    slower). Missing values stay missing.
    """
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    array = array.cast(pa.timestamp("us", tz="UTC"))
    n = len(array)
    micros = array.cast(pa.int64()).fill_null(0).to_numpy()
    days = micros // _DAY_US
    if n and (days.max() - days.min() > 400_000 or days.min() < -719_162
              or days.max() > 2_932_896):  # years 1..9999 only; far-apart days: slow path
        return pc.strftime(array, format=EVENT_TIME_FORMAT)
    first_day = int(days.min()) if n else 0
    epoch = datetime.date(1970, 1, 1)
    dates = np.array([(epoch + datetime.timedelta(days=first_day + i)).isoformat().encode()
                      for i in range(int(days.max()) - first_day + 1 if n else 0)],
                     dtype="S10").view("V10")
    of_day = micros - days * _DAY_US
    seconds = of_day // 1_000_000
    fraction = of_day - seconds * 1_000_000
    text = np.empty(n, dtype=_ISO_LAYOUT)
    if n:
        text["date"] = dates.take(days - first_day)
    text["hour"] = _TWO_DIGITS.take(seconds // 3600)
    text["minute"] = _TWO_DIGITS.take(seconds // 60 % 60)
    text["second"] = _TWO_DIGITS.take(seconds % 60)
    text["milli"] = _THREE_DIGITS.take(fraction // 1000)
    text["micro"] = _THREE_DIGITS.take(fraction % 1000)
    for name, char in (("t", "T"), ("colon1", ":"), ("colon2", ":"), ("dot", "."), ("z", "Z")):
        text[name] = ord(char)
    width = _ISO_LAYOUT.itemsize
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    validity = array.buffers()[0] if array.null_count else None
    if validity is not None and array.offset:
        return pc.if_else(array.is_valid(), pa.LargeStringArray.from_buffers(
            n, pa.py_buffer(offsets), pa.py_buffer(text.view(np.uint8))), None)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets),
                                            pa.py_buffer(text.view(np.uint8)), validity,
                                            array.null_count)


def _json_lines(table: pa.Table, header: bool = False, compress: bool = False) -> bytes:
    """JSON lines with numbers as JSON numbers and event_time as ISO-8601 text with Z.

    Built column-wise with Arrow string kernels. Numbers use Arrow's shortest
    round-trip formatting; a missing number is written as null. Text values are
    written as they are, which is safe for generated data (letters, digits, ``-:.``).
    """
    if not table.num_rows:
        return b""
    parts: list[Any] = []
    for i, field in enumerate(schema.COLUMNS):
        column = table.column(field.name)
        if field.kind == "timestamp":
            text = _quoted(event_time_text(column))
        elif field.kind == "string":
            text = _quoted(column)
        else:
            if field.kind == "float":
                column = pc.if_else(pc.is_nan(column), None, column)
            text = pc.fill_null(pc.cast(column, pa.string()), "null")
        parts.append(("{" if i == 0 else ",") + f'"{field.name}":')
        parts.append(text)
    parts.append("}\n")
    lines = pc.binary_join_element_wise(*parts, "")
    return _concat_text(lines)


def _quoted(column: Any) -> Any:
    text = pc.cast(column, pa.string())
    return pc.fill_null(pc.binary_join_element_wise('"', text, '"', ""), "null")


def _concat_text(lines: Any) -> bytes:
    """The bytes of a string array's values laid end to end (they are contiguous in Arrow)."""
    array = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    array = array.cast(pa.string())
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset:
                                                               array.offset + len(array) + 1]
    data = array.buffers()[2]
    return data.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()


@contextlib.contextmanager
def atomic_writer(path: str | Path, fmt: str | None = None) -> Iterator[_Writer]:
    """A writer of Arrow tables to ``path`` that appears only once complete.

    Data goes to ``<name>.tmp-<pid><suffix>`` beside ``path`` (ignored by git like the
    data files) and is renamed over ``path`` on success; on an error it is removed.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = FORMATS[fmt][0] if path.name.endswith(FORMATS[fmt][0]) else ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.with_name(f"{stem}.tmp-{os.getpid()}{suffix}")
    writer = _Writer(tmp, fmt)
    try:
        yield writer
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        tmp.unlink(missing_ok=True)
        raise


# --- reading ---------------------------------------------------------------------------


def iter_frames(path: str | Path, chunk_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """Read a transaction file in chunks of ``chunk_rows`` rows, as raw DataFrames.

    The format comes from the suffix (:func:`detect_format`). Columns come back in
    schema order (extra columns are ignored). Numeric and time columns are typed when
    they parse; a column with a malformed value is returned as text instead, for
    :func:`bankcourse.schema.clean_frame` to quarantine. A csv line with the wrong
    number of fields becomes a row of empty values with the line's text in ``txn_id``
    (a warning is logged), so it is quarantined too rather than lost.

    Args:
        path: a ``.csv.gz``, ``.csv``, ``.parquet`` or ``.jsonl`` file.
        chunk_rows: rows per DataFrame. Default: 200,000. The last frame may be
            shorter, and so may the frame before a column switches to text.

    Raises:
        FileNotFoundError: the file does not exist (the message says how to make it).
        bankcourse.schema.SchemaError: the file lacks columns; the message names them.
    """
    path = Path(path)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
    fmt = detect_format(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; make it with "
                                "`python -m bankcourse generate --out PATH` or "
                                "bankcourse.dataio.ensure_dataset(settings)")
    if fmt == "parquet":
        batches = _parquet_batches(path, chunk_rows)
    elif fmt == "jsonl":
        batches = _json_batches(path, chunk_rows)
    else:
        batches = _csv_batches(path, chunk_rows)
    rows = 0
    for table in _rebatch(batches, chunk_rows):
        frame = table.to_pandas()
        frame.index = pd.RangeIndex(rows, rows + len(frame))
        rows += len(frame)
        yield frame
    logger.debug("read %s rows from %s", rows, path)


def _rebatch(tables: Iterator[pa.Table], chunk_rows: int) -> Iterator[pa.Table]:
    """Regroup a stream of tables (same columns, possibly different types) into chunks."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        if pending and table.schema != pending[0].schema:
            # A fallback switched some columns to text: flush with the old types first.
            yield from _split(_concat(pending), chunk_rows)
            pending, count = [], 0
        pending.append(table)
        count += table.num_rows
        if count >= chunk_rows:
            joined = _concat(pending)
            full = (count // chunk_rows) * chunk_rows
            yield from _split(joined.slice(0, full), chunk_rows)
            rest = joined.slice(full)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if pending:
        yield from _split(_concat(pending), chunk_rows)


def _concat(tables: list[pa.Table]) -> pa.Table:
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _split(table: pa.Table, chunk_rows: int) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, chunk_rows):
        yield table.slice(start, chunk_rows)


def _select(table: pa.Table, source: str) -> pa.Table:
    schema.require_columns(table.column_names, source)
    if table.column_names != list(schema.NAMES):
        table = table.select(list(schema.NAMES))
    return table


def _parquet_batches(path: Path, chunk_rows: int) -> Iterator[pa.Table]:
    file = pq.ParquetFile(str(path))
    names = file.schema_arrow.names
    schema.require_columns(names, path.name)
    for batch in file.iter_batches(batch_size=chunk_rows, columns=list(schema.NAMES)):
        yield pa.Table.from_batches([batch])


# csv ------------------------------------------------------------------------------------

_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")


def _csv_batches(path: Path, chunk_rows: int) -> Iterator[pa.Table]:
    """Stream a csv(.gz) file; on a conversion error, re-read it with that column as text.

    The header is read first to check the columns. Typed conversion is tried; when a
    column fails to convert, the file is read again from the top with that column
    typed as text (other columns stay typed) and the rows already yielded are skipped.
    Lines with the wrong number of fields are collected and yielded at the end.
    """
    header = _csv_header(path)
    schema.require_columns(header, path.name)
    # large_string is the layout of pandas' str dtype: text converts without a copy.
    types = {f.name: pa.large_string() if f.type == pa.string() else f.type
             for f in schema.arrow_schema() if f.name in header}
    done = 0
    bad_lines: list[str] = []

    def on_invalid(row: Any) -> str:
        bad_lines.append(row.text)
        return "skip"

    block_size = READ_BLOCK_BYTES
    stack = contextlib.ExitStack()
    try:
        while True:
            stack.close()
            bad_lines.clear()
            convert = pcsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                          quoted_strings_can_be_null=False)
            skip = done
            try:
                source = stack.enter_context(_open_text_source(path))
                reader = pcsv.open_csv(source, read_options=pcsv.ReadOptions(block_size=block_size),
                                       parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
                                       convert_options=convert)
                for batch in reader:
                    if skip >= batch.num_rows:
                        skip -= batch.num_rows
                        continue
                    table = _select(pa.Table.from_batches([batch]).slice(skip), path.name)
                    skip = 0
                    yield table
                    done += table.num_rows
                if bad_lines:
                    yield _bad_line_rows(bad_lines, _csv_schema(types), path.name)
                return
            except pa.ArrowInvalid as exc:
                failed = _failed_columns(str(exc), header, types)
                if not failed:
                    raise
                logger.warning("%s: column(s) %s hold values that are not of their type; "
                               "reading them as text so the bad rows can be quarantined",
                               path.name, ", ".join(failed))
                for name in failed:
                    types[name] = pa.large_string()
    finally:
        stack.close()  # the inflating thread stops with the read


@contextlib.contextmanager
def _open_text_source(path: Path) -> Iterator[Any]:
    """What Arrow's csv reader reads: the path, or for .gz a stream inflated by ISA-L.

    ISA-L inflates on its own thread while Arrow parses, and the GIL is released while
    it works; without isal, Arrow inflates with zlib itself.
    """
    if _fast_gzip is None or not path.name.lower().endswith(".gz"):
        yield str(path)
        return
    with _fast_gzip.open(path, "rb", threads=1) as stream:
        yield stream


def _csv_schema(types: dict[str, pa.DataType]) -> pa.Schema:
    """The schema a csv read with ``types`` yields (schema order, text for absent types)."""
    return pa.schema([pa.field(n, types.get(n, pa.large_string())) for n in schema.NAMES])


def _csv_header(path: Path) -> list[str]:
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "rb") as raw:
            line = raw.readline().decode("utf-8")
    else:
        with open(path, encoding="utf-8", newline="") as handle:
            line = handle.readline()
    return [name.strip().strip('"') for name in line.rstrip("\r\n").split(",")] if line else []


def _failed_columns(message: str, header: list[str], types: dict[str, pa.DataType]) -> list[str]:
    """The columns a csv conversion error is about (all typed ones if it cannot tell)."""
    typed = [n for n in schema.NAMES if n in header and types.get(n) != pa.large_string()]
    match = _CSV_COLUMN.search(message)
    if match and int(match.group(1)) < len(header):
        name = header[int(match.group(1))]
        if name in typed:
            return [name]
    return typed if "conversion error" in message.lower() or match else []


def _bad_line_rows(lines: list[str], target: pa.Schema, source: str) -> pa.Table:
    """Rows for csv lines with the wrong number of fields: the text in txn_id, the rest empty."""
    logger.warning("%s: %s line(s) have the wrong number of fields; passing them on as empty "
                   "rows to be quarantined (first: %.80s)", source, len(lines), lines[0])
    arrays = []
    for field in target:
        if field.name == "txn_id":
            arrays.append(pa.array(list(lines), type=field.type))
        else:
            arrays.append(pa.nulls(len(lines), type=field.type))
    return pa.table(arrays, schema=target)


# json lines ----------------------------------------------------------------------------


def _json_batches(path: Path, chunk_rows: int) -> Iterator[pa.Table]:
    """Stream JSON lines with Arrow; on any parse problem, fall back to Python's json."""
    explicit = schema.arrow_schema()
    done = 0
    try:
        reader = pjson.open_json(
            str(path),
            read_options=pjson.ReadOptions(block_size=READ_BLOCK_BYTES),
            parse_options=pjson.ParseOptions(explicit_schema=explicit,
                                             unexpected_field_behavior="ignore"))
        for batch in reader:
            table = pa.Table.from_batches([batch])
            if done == 0 and table.num_rows:
                _check_json_fields(path, table)
            yield _select(table, path.name)
            done += batch.num_rows
        return
    except pa.ArrowInvalid as exc:
        logger.warning("%s: not plain typed JSON lines (%s); reading the rest value by value "
                       "from row %s so bad records can be quarantined", path.name, exc, done + 1)
    yield from _json_fallback(path, chunk_rows, skip=done)


def _check_json_fields(path: Path, table: pa.Table) -> None:
    """With an explicit schema Arrow fills absent fields with nulls: detect wholly absent ones."""
    with open(path, "rb") as handle:
        first = handle.readline()
    try:
        names = json.loads(first).keys()
    except (ValueError, AttributeError):
        return
    schema.require_columns(names, path.name)


def _json_fallback(path: Path, chunk_rows: int, skip: int) -> Iterator[pa.Table]:
    records: list[dict[str, Any]] = []
    line_no = 0
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            line_no += 1
            if line_no <= skip:
                continue
            try:
                value = json.loads(raw)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                logger.warning("%s line %s is not a JSON object; passing it on as an empty "
                               "row to be quarantined", path.name, line_no)
                value = {"txn_id": raw.decode("utf-8", "replace").strip()}
            records.append(value)
            if len(records) >= chunk_rows:
                yield _records_table(records, path.name)
                records = []
    if records or line_no == 0:
        yield _records_table(records, path.name)


def _records_table(records: list[dict[str, Any]], source: str) -> pa.Table:
    """Records as a table whose columns are typed where every value fits, else text."""
    frame = pd.DataFrame.from_records(records)
    if records:
        schema.require_columns(frame.columns, source)
    arrays = []
    for field in schema.arrow_schema():
        values = frame[field.name] if field.name in frame.columns else pd.Series(
            [None] * len(frame), dtype=object)
        arrays.append(_fit(values, field))
    return pa.table(arrays, names=list(schema.NAMES))


def _fit(values: pd.Series, field: pa.Field) -> pa.Array:
    kind = schema.BY_NAME[field.name].kind
    if kind == "timestamp":
        return pa.array(values.astype(object).where(values.notna(), None).map(
            lambda v: v if v is None else str(v)), type=pa.string())
    if kind == "string":
        return pa.array(values.astype(object).where(values.notna(), None).map(
            lambda v: v if v is None else str(v)), type=pa.string())
    try:
        numbers = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v
                   for v in values.astype(object)]
        if any(isinstance(v, (str, bool, dict, list)) for v in numbers):
            raise TypeError
        return pa.array(numbers, type=pa.float64())
    except (TypeError, pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else json.dumps(v) if not isinstance(v, str) else v
                         for v in values.astype(object)], type=pa.string())


__all__ = ["FORMATS", "atomic_writer", "dataset_path", "detect_format", "ensure_dataset",
           "event_time_text", "iter_frames"]

