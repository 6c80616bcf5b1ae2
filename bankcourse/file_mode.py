"""Stage 1, file mode: read a dataset in chunks, apply the rules with pandas, write alerts.

For each chunk of the file (csv.gz, parquet or JSON lines) file mode

1. cleans it with :func:`bankcourse.schema.clean_frame`: rows that break the schema
   (text where a number belongs, an unknown ``type``, a negative amount, ...) are
   counted and appended to the quarantine file with their original values and a
   ``reason``; the valid rows go on;
2. evaluates the four rules at once with :func:`bankcourse.rules.evaluate_frame`;
3. appends the alerts (rows where any rule fired) to ``alerts.jsonl``, one JSON object
   per line with the fields :data:`bankcourse.rules.ALERT_FIELDS`;
4. records the chunk in a :class:`bankcourse.meter.ThroughputMeter` (rows per second,
   one INFO log line, listeners such as the live dashboard).

The next chunk is read in a background thread while this one is cleaned, and the
alerts of a chunk are formatted and written in another while the next is cleaned:
Arrow parses and formats without holding Python's GIL, so the two cores share the work.
At most one chunk waits at each hand-over, so memory stays bounded.

:func:`run_file_mode` returns a :class:`FileModeReport`: rows read, valid and
quarantined, alerts per rule, severity and type, and how well each rule finds the
transactions labelled ``isFraud`` (:func:`rule_quality`).

Usage::

    from bankcourse import file_mode
    from bankcourse.settings import Settings

    report = file_mode.run_file_mode("data/transactions.csv.gz", Settings.from_env(),
                                     out_dir="output")
    print(report)

or from a terminal: ``python -m bankcourse detect data/transactions.csv.gz``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bankcourse import rules, schema
from bankcourse.meter import LATEST_ALERTS, BatchMetrics, ThroughputMeter
from bankcourse.settings import SettingError, Settings

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 200_000
"""Rows per chunk read from the file."""

ALERTS_FILE = "alerts.jsonl"
"""Name of the alerts file in the output folder."""

QUARANTINE_FILE = "quarantine.jsonl"
"""Name of the quarantine file in the output folder."""

ROW_COLUMN = "row"
"""Quarantine column giving the row's position among the file's data rows, from 0."""

DATASET_RULE = "DATASET_FRAUD"
"""The rule that copies the dataset's own label; it fires on every ``isFraud`` row."""

BEHAVIOURAL_RULES: tuple[str, ...] = tuple(n for n in rules.RULE_NAMES if n != DATASET_RULE)
"""The rules that look at behaviour (amounts, types, balances), not at the label."""

ANY_RULE = "ANY_RULE"
"""Row name, in the precision/recall tables, for "at least one of the four rules fired"."""

ANY_BEHAVIOURAL = "ANY_BEHAVIOURAL"
"""Row name for "at least one behavioural rule fired" (DATASET_FRAUD left out)."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset file does not exist; the message says how to make one."""


# --- judging rules against the label --------------------------------------------------


def confusion_counts(flags: pd.DataFrame, is_fraud: Any) -> dict[str, dict[str, int]]:
    """Count, for each rule and for "any rule", hits and misses against ``isFraud``.

    Args:
        flags: ``rules.evaluate_frame(frame, ...)`` (one boolean column per rule).
        is_fraud: the ``isFraud`` column of the same rows (1 is fraud).

    Returns:
        ``{name: {"fired", "true_positives", "false_positives", "false_negatives"}}`` for
        every rule, plus ``ANY_RULE`` (any of the four) and ``ANY_BEHAVIOURAL`` (any rule
        except DATASET_FRAUD). Counts of several batches can be added up.
    """
    fraud = pd.to_numeric(pd.Series(is_fraud, copy=False), errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan) == 1
    columns = {name: flags[name].to_numpy(dtype=bool) for name in flags.columns}
    any_rule = np.zeros(len(flags), dtype=bool)
    behavioural = np.zeros(len(flags), dtype=bool)
    for name, hit in columns.items():
        any_rule |= hit
        if name in BEHAVIOURAL_RULES:
            behavioural |= hit
    columns[ANY_RULE] = any_rule
    columns[ANY_BEHAVIOURAL] = behavioural
    n_fraud = int(fraud.sum())
    out = {}
    for name, hit in columns.items():
        tp = int(np.count_nonzero(hit & fraud))
        fired = int(np.count_nonzero(hit))
        out[name] = {
            "fired": fired,
            "true_positives": tp,
            "false_positives": fired - tp,
            "false_negatives": n_fraud - tp,
        }
    return out


def quality_table(counts: Mapping[str, Mapping[str, int]]) -> pd.DataFrame:
    """Precision and recall per rule from :func:`confusion_counts` (possibly summed).

    Precision is the share of a rule's alerts that are labelled fraud; recall is the
    share of fraud the rule catches. Either is NaN when its denominator is 0.
    """
    rows = []
    for name, c in counts.items():
        fired, tp, fn = c["fired"], c["true_positives"], c["false_negatives"]
        rows.append({
            "rule": name,
            **{k: int(v) for k, v in c.items()},
            "precision": tp / fired if fired else np.nan,
            "recall": tp / (tp + fn) if tp + fn else np.nan,
        })
    counts_columns = ["fired", "true_positives", "false_positives", "false_negatives"]
    table = pd.DataFrame(rows, columns=["rule", *counts_columns, "precision", "recall"])
    return table.set_index("rule").astype(dict.fromkeys(counts_columns, "int64"))


def rule_quality(
    frame: pd.DataFrame, flags: pd.DataFrame | None = None, thresholds: Any = None
) -> pd.DataFrame:
    """Precision and recall of each rule against the ``isFraud`` label of ``frame``.

    Args:
        frame: valid transactions (with ``isFraud``).
        flags: ``rules.evaluate_frame(frame, thresholds)``; computed when None.
        thresholds: used when ``flags`` is None. Default: ``Thresholds()``.

    Returns:
        One row per rule plus ``ANY_RULE`` and ``ANY_BEHAVIOURAL``, with the columns
        fired, true_positives, false_positives, false_negatives, precision, recall.
    """
    if flags is None:
        flags = rules.evaluate_frame(frame, thresholds)
    return quality_table(confusion_counts(flags, frame["isFraud"]))


# --- the report ------------------------------------------------------------------------


@dataclass
class FileModeReport:
    """What one file-mode run read, found and wrote.

    Attributes:
        source: the dataset read.
        alerts_path, quarantine_path: the files written.
        thresholds: the thresholds the rules used, as a dict.
        rows_read: data rows in the file (valid + quarantined).
        valid: rows that passed the schema.
        quarantined: rows set aside; ``quarantine_reasons`` counts them per reason.
        alerts: valid rows on which at least one rule fired.
        by_rule: how often each rule fired.
        by_severity: alerts per severity (an alert takes its highest rule's severity).
        alerts_by_type, rows_by_type: alerts and valid rows per transaction type.
        fraud: valid rows labelled ``isFraud == 1``.
        caught, missed: fraud rows with / without any alert (DATASET_FRAUD fires on every
            fraud row, so ``missed`` is 0 unless that rule is changed).
        caught_behavioural, missed_behavioural: the same, counting only the behavioural
            rules (all but DATASET_FRAUD): what rules that cannot see the label would find.
        confusion: per rule, :func:`confusion_counts` summed over the chunks.
        batches, seconds, rows_per_s: chunks read, wall time, overall throughput.
        batch_rows_per_s: throughput of each chunk (read, clean, rules and write).
    """

    source: Path
    alerts_path: Path
    quarantine_path: Path
    thresholds: dict[str, float]
    rows_read: int = 0
    valid: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    alerts: int = 0
    by_rule: dict[str, int] = field(default_factory=lambda: dict.fromkeys(rules.RULE_NAMES, 0))
    by_severity: dict[str, int] = field(default_factory=dict)
    alerts_by_type: dict[str, int] = field(default_factory=dict)
    rows_by_type: dict[str, int] = field(default_factory=dict)
    fraud: int = 0
    caught: int = 0
    missed: int = 0
    caught_behavioural: int = 0
    missed_behavioural: int = 0
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    batch_rows_per_s: list[float] = field(default_factory=list)

    def quality(self) -> pd.DataFrame:
        """Precision and recall of each rule against ``isFraud`` (see :func:`quality_table`)."""
        return quality_table(self.confusion)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain, JSON-ready values (paths as text)."""
        out = asdict(self)
        for key in ("source", "alerts_path", "quarantine_path"):
            out[key] = str(out[key])
        return out

    def counts_table(self) -> pd.DataFrame:
        """Alerts per rule with precision and recall, as a small DataFrame."""
        table = self.quality()
        return table[["fired", "true_positives", "false_positives", "precision", "recall"]]

    def to_markdown(self) -> str:
        """The report as Markdown: a summary list and a table per rule."""
        lines = [
            f"**File mode** on `{self.source.name}`: {self.rows_read:,} rows read, "
            f"{self.valid:,} valid, {self.quarantined:,} quarantined, "
            f"{self.alerts:,} alerts, {self.seconds:.2f} s "
            f"({self.rows_per_s:,.0f} rows/s over {self.batches} chunks).",
            "",
            f"- fraud rows: {self.fraud:,}; caught by any rule: {self.caught:,}, "
            f"missed: {self.missed:,}",
            f"- caught by the behavioural rules alone: {self.caught_behavioural:,}, "
            f"missed: {self.missed_behavioural:,}",
            f"- severity: {_pairs(self.by_severity)}",
            f"- alerts by type: {_pairs(self.alerts_by_type)}",
            f"- quarantined: {_pairs(self.quarantine_reasons) or 'none'}",
            "",
            "| rule | fired | true positives | false positives | precision | recall |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in self.quality().itertuples():
            lines.append(
                f"| {row.Index} | {row.fired:,} | {row.true_positives:,} | "
                f"{row.false_positives:,} | {_share(row.precision)} | {_share(row.recall)} |"
            )
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        width = max(len(n) for n in (*rules.RULE_NAMES, ANY_BEHAVIOURAL))
        lines = [
            f"file mode: {self.source}",
            f"  rows read     {self.rows_read:>12,}",
            f"  valid         {self.valid:>12,}",
            f"  quarantined   {self.quarantined:>12,}  {_pairs(self.quarantine_reasons)}",
            f"  alerts        {self.alerts:>12,}  {_pairs(self.by_severity)}",
            f"  fraud rows    {self.fraud:>12,}  caught {self.caught:,}, missed {self.missed:,}",
            f"  behavioural   {'':>12}  caught {self.caught_behavioural:,}, "
            f"missed {self.missed_behavioural:,} (rules other than {DATASET_RULE})",
            f"  throughput    {self.rows_per_s:>12,.0f} rows/s "
            f"({self.seconds:.2f} s, {self.batches} chunks)",
            "",
            f"  {'rule':<{width}}  {'fired':>10}  {'precision':>9}  {'recall':>6}",
        ]
        for row in self.quality().itertuples():
            lines.append(f"  {row.Index:<{width}}  {row.fired:>10,}  "
                         f"{_share(row.precision):>9}  {_share(row.recall):>6}")
        lines += ["", f"  alerts:     {self.alerts_path}",
                  f"  quarantine: {self.quarantine_path}"]
        return "\n".join(line.rstrip() for line in lines)

    def __repr__(self) -> str:
        return (
            f"FileModeReport(source={str(self.source)!r}, rows_read={self.rows_read}, "
            f"valid={self.valid}, quarantined={self.quarantined}, alerts={self.alerts}, "
            f"fraud={self.fraud}, caught_behavioural={self.caught_behavioural}, "
            f"seconds={self.seconds:.3f}, rows_per_s={self.rows_per_s:.0f})"
        )


def _pairs(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items())


def _share(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"


def _add(into: dict[str, int], counts: Mapping[Any, Any]) -> None:
    for key, value in counts.items():
        if value:
            into[str(key)] = into.get(str(key), 0) + int(value)


# --- writing ---------------------------------------------------------------------------
#
# pandas' to_json spends most of its time on the list column of fired rules and on the
# timestamps (about 60,000 alerts/s), so alerts are assembled with Arrow string kernels:
# every column becomes text once and the pieces are joined row by row in C++. The fired
# rules and severity depend only on which rules fired, so they are 16 prepared snippets.

_US_PER_DAY = 86_400_000_000
_YEAR_1 = -62_135_596_800_000_000  # 0001-01-01 in microseconds since 1970
_YEAR_10000 = 253_402_300_800_000_000
_tables: dict[str, Any] = {}


def _clock_tables() -> tuple[np.ndarray, np.ndarray]:
    """"HH:MM:SS" for every second of a day and "000".."999", as fixed-width bytes."""
    if "times" not in _tables:
        seconds = np.arange(86_400)
        digits = np.empty((86_400, 8), dtype=np.uint8)
        for col, value in ((0, seconds // 3600), (3, seconds // 60 % 60), (6, seconds % 60)):
            digits[:, col] = value // 10 + 48
            digits[:, col + 1] = value % 10 + 48
        digits[:, 2] = digits[:, 5] = ord(":")
        _tables["times"] = digits.view("S8").ravel()
        _tables["thousand"] = np.array([f"{i:03d}".encode() for i in range(1000)], dtype="S3")
    return _tables["times"], _tables["thousand"]


def _iso_text(micros: np.ndarray, after: str = "") -> pa.Array:
    """Microseconds since 1970 as quoted ``"YYYY-MM-DDTHH:MM:SS.ffffffZ"`` JSON strings.

    Every value has the same width, so the text is built as one fixed-width byte table
    from lookup tables (a date per day in range, a time per second of the day).
    ``after`` is appended to each value.
    """
    n = len(micros)
    if n == 0 or micros.min() < _YEAR_1 or micros.max() >= _YEAR_10000:
        text = pd.to_datetime(micros, unit="us", utc=True).strftime('"%Y-%m-%dT%H:%M:%S.%fZ"')
        return pa.array([t + after for t in text], type=pa.string())
    close = b'Z"' + after.encode()
    row = np.dtype([("open", "S1"), ("date", "S10"), ("t", "S1"), ("time", "S8"),
                    ("dot", "S1"), ("ms", "S3"), ("us", "S3"), ("close", f"S{len(close)}")])
    times, thousand = _clock_tables()
    days, within = np.divmod(micros, _US_PER_DAY)
    seconds, fraction = np.divmod(within, 1_000_000)
    first = int(days.min())
    dates = np.datetime_as_string(np.arange(first, int(days.max()) + 1).astype("datetime64[D]"))
    out = np.empty(n, dtype=row)
    out["open"], out["t"], out["dot"], out["close"] = b'"', b"T", b".", close
    out["date"] = dates.astype("S10")[days - first]
    out["time"] = times[seconds]
    millis, rest = np.divmod(fraction, 1000)
    out["ms"], out["us"] = thousand[millis], thousand[rest]
    offsets = np.arange(0, row.itemsize * (n + 1), row.itemsize, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out.view(np.uint8)))


def _json_safe(text: pa.Array) -> pa.Array:
    """Text that can sit between JSON quotes: escaped (slowly) only if it has to be."""
    if text.null_count:
        raise ValueError("missing text")
    _, offsets, data = text.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32, count=len(text) + 1, offset=text.offset * 4)
    raw = np.frombuffer(data, dtype=np.uint8)[bounds[0]:bounds[-1]] if data else np.empty(0)
    if not ((raw < 0x20) | (raw == 0x22) | (raw == 0x5C)).any():
        return text
    return pa.array([json.dumps(v)[1:-1] for v in text.to_pylist()], type=pa.string())


def _text(series: pd.Series, keep: pa.Array) -> pa.Array:
    arr = pa.array(series)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.string():
        arr = arr.cast(pa.string())
    return _json_safe(arr.filter(keep))


def _number_text(values: np.ndarray) -> pa.Array:
    """Floats as JSON numbers that stay floats: 5.0 is written ``5.0``, not ``5``."""
    if np.isnan(values).any():
        raise ValueError("missing amount")
    text = pc.cast(pa.array(values), pa.string())
    whole = values == np.floor(values)  # few: most amounts have cents
    if whole.any():
        fixed = [t if "e" in t or "." in t else t + ".0"
                 for t in text.filter(pa.array(whole)).to_pylist()]
        text = pc.replace_with_mask(text, pa.array(whole), pa.array(fixed, type=pa.string()))
    return text


def _step_text(steps: np.ndarray) -> pa.Array:
    """``","step":N,"event_time":`` per alert: the text around ``step`` comes with it."""
    if len(steps) and 0 <= steps.min() and steps.max() < 100_000:
        table = pa.array([f'","step":{i},"event_time":' for i in range(int(steps.max()) + 1)])
        return pc.take(table, pa.array(steps))
    return pc.binary_join_element_wise(pa.scalar('","step":'),
                                       pc.cast(pa.array(steps), pa.string()),
                                       pa.scalar(',"event_time":'), pa.scalar(""))


def _type_text(types: pa.Array) -> pa.Array:
    """``,"type":"T","account":"`` per alert (the type is one of TXN_TYPES)."""
    codes = pc.index_in(types, value_set=pa.array(schema.TXN_TYPES))
    if codes.null_count:
        raise ValueError("a type outside TXN_TYPES")
    table = pa.array([f',"type":"{t}","account":"' for t in schema.TXN_TYPES])
    return pc.take(table, codes)


def _rules_snippets() -> pa.Array:
    """For each combination of fired rules (a bit per rule), its rules and severity JSON."""
    if "snippets" not in _tables:
        snippets = []
        for mask in range(1 << len(rules.RULES)):
            fired = [r.name for bit, r in enumerate(rules.RULES) if mask >> bit & 1]
            snippets.append(f'","rules":{json.dumps(fired, separators=(",", ":"))},'
                            f'"severity":{json.dumps(rules.severity_of(fired))},"amount":')
        _tables["snippets"] = pa.array(snippets, type=pa.string())
    return _tables["snippets"]


def _latest_alerts(valid: pd.DataFrame, mask: np.ndarray) -> list[dict[str, Any]]:
    """The chunk's last few alerts as JSON-ready dicts, for the live dashboard.

    Only the few values needed are read, one by one: selecting rows of the whole
    DataFrame copies more than the rules themselves cost.
    """
    rows = np.flatnonzero(mask)[-LATEST_ALERTS:]
    if not len(rows):
        return []
    columns = {name: valid[name] for name in ("txn_id", "type", "amount", "nameOrig", "step",
                                              "event_time")}
    latest = []
    for row in rows:
        record = {name: column.iat[row] for name, column in columns.items()}
        record["amount"] = float(record["amount"])
        record["step"] = int(record["step"])
        record["event_time"] = schema.format_event_time(record["event_time"])
        fired = [name for bit, name in enumerate(rules.RULE_NAMES) if mask[row] >> bit & 1]
        latest.append(rules.alert_record(record, fired))
    return latest


def _type_codes(types: pd.Series) -> np.ndarray:
    """Per row, the index of its ``type`` in :data:`bankcourse.schema.TXN_TYPES`."""
    arr = pa.array(types)
    codes = pc.index_in(arr, value_set=pa.array(schema.TXN_TYPES))
    return codes.fill_null(len(schema.TXN_TYPES)).to_numpy(zero_copy_only=False)


def rule_mask(flags: pd.DataFrame) -> np.ndarray:
    """Per row, which rules fired as bits (bit i is ``rules.RULES[i]``); 0 means no alert."""
    mask = np.zeros(len(flags), dtype=np.int64)
    for bit, name in enumerate(rules.RULE_NAMES):
        mask |= flags[name].to_numpy(dtype=bool).astype(np.int64) << bit
    return mask


def alerts_jsonl(frame: pd.DataFrame, flags: pd.DataFrame) -> bytes:
    """The alerts of ``frame`` (rows where a rule fired) as JSON lines, UTF-8 encoded.

    Each line has the fields :data:`bankcourse.rules.ALERT_FIELDS`, the same values as
    :func:`bankcourse.rules.alerts_frame`, with ``event_time`` as ISO 8601 UTC text with
    microseconds and a Z (as :func:`bankcourse.schema.format_event_time` writes it).
    """
    return bytes(_alert_lines(frame, flags))


def _alert_lines(frame: pd.DataFrame, flags: pd.DataFrame) -> bytes | memoryview:
    """:func:`alerts_jsonl` without the final copy (a view into Arrow's buffer)."""
    mask = rule_mask(flags)
    hit = mask != 0
    if not hit.any():
        return b""
    try:
        keep = pa.array(hit)
        micros = (pa.array(frame["event_time"]).cast(pa.timestamp("us", "UTC"))
                  .cast(pa.int64()).filter(keep).to_numpy(zero_copy_only=False))
        # Pieces in ALERT_FIELDS order; constant text rides along with looked-up pieces.
        line = pc.binary_join_element_wise(
            pa.scalar('{"txn_id":"'), _text(frame["txn_id"], keep),
            pc.take(_rules_snippets(), pa.array(mask[hit])),  # '","rules":[..],..,"amount":'
            _number_text(frame["amount"].to_numpy(dtype="float64")[hit]),
            _type_text(_text(frame["type"], keep)),  # ',"type":"..","account":"'
            _text(frame["nameOrig"], keep),
            _step_text(frame["step"].to_numpy()[hit]),  # '","step":N,"event_time":'
            _iso_text(micros, after="}\n"),
            pa.scalar(""),
        )
    except (ValueError, TypeError, pa.ArrowException):
        # Missing values or unusual types: the slow, general path.
        alerts = rules.alerts_frame(frame, flags)
        return alerts.to_json(orient="records", lines=True, date_format="iso",
                              date_unit="us", index=False).rstrip("\n").encode() + b"\n"
    _, offsets, data = line.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32, count=len(line) + 1, offset=line.offset * 4)
    return memoryview(data)[bounds[0]:bounds[-1]]


def _write_quarantine(quarantined: pd.DataFrame, stream: BinaryIO) -> None:
    if len(quarantined):
        out = quarantined.copy()
        out.insert(0, ROW_COLUMN, quarantined.index.to_numpy())
        text = out.to_json(orient="records", lines=True, index=False, force_ascii=False)
        stream.write(text.rstrip("\n").encode() + b"\n")


# --- the run ---------------------------------------------------------------------------


def check_dataset(path: str | Path) -> Path:
    """Return ``path`` as a Path if it is a readable file, else raise a helpful error."""
    path = Path(path)
    if path.is_dir():
        raise DatasetNotFoundError(
            f"{path} is a folder; give the dataset file inside it "
            "(a .csv.gz, .parquet or .jsonl file)."
        )
    if not path.exists():
        raise DatasetNotFoundError(
            f"No dataset at {path}. Generate one with `python -m bankcourse generate` "
            "(or call bankcourse.dataio.ensure_dataset(settings)), then pass its path."
        )
    return path


class _Background:
    """Runs one task at a time in a thread, in order, so the next chunk can be cleaned
    while this chunk's alerts are formatted (Arrow's string kernels release the GIL).

    :meth:`submit` first waits for the previous task, so at most one is in flight and
    its error, if any, is raised in the caller.
    """

    def __enter__(self) -> _Background:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bankcourse-alerts")
        self._pending: Future[Any] | None = None
        return self

    def submit(self, task: Callable[[], Any]) -> None:
        self.wait()
        self._pending = self._pool.submit(task)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __exit__(self, *exc: Any) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


_READ_AHEAD_POLL_S = 0.1
_DONE = object()


def _read_ahead(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Yield ``frames`` while a thread reads the next one (Arrow parses without the GIL).

    At most one frame waits in the queue, so memory stays bounded; an error in the
    reader is raised here; if the consumer stops early the reader stops too.
    """
    waiting: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: Any) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=_READ_AHEAD_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for frame in frames:
                if not hand_over(frame):
                    return
            hand_over(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            hand_over(exc)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="bankcourse-file-reader", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item = waiting.get(timeout=_READ_AHEAD_POLL_S)
            except queue.Empty:
                if not reader.is_alive() and waiting.empty():
                    raise RuntimeError("the file reader thread stopped without a result") from None
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=10)


def run_file_mode(
    path: str | Path,
    settings: Settings | None = None,
    out_dir: str | Path | None = None,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    on_batch: Callable[[BatchMetrics], Any] | None = None,
    meter: ThroughputMeter | None = None,
    frames: Iterable[pd.DataFrame] | None = None,
    read_ahead: bool = True,
) -> FileModeReport:
    """Run file mode on one dataset: clean, apply the rules, write alerts and quarantine.

    Args:
        path: the dataset (``.csv.gz``, ``.csv``, ``.parquet`` or ``.jsonl``).
        settings: the course settings; the rules use ``settings.thresholds``.
            Default: ``Settings.from_env()``.
        out_dir: where ``alerts.jsonl`` and ``quarantine.jsonl`` are written (replaced).
            Default: ``settings.data_dir / "file_mode"``.
        chunk_rows: rows per chunk. Default: 200000.
        on_batch: called with a :class:`~bankcourse.meter.BatchMetrics` after each chunk.
        meter: the meter to record into (to share it with a dashboard). Default: a new
            ``ThroughputMeter("file")``.
        frames: raw frames to use instead of reading ``path`` (``path`` is then only
            a name in the report and messages).
        read_ahead: read the next chunk in a background thread while this one is
            processed (at most one chunk waits). Default: True.

    Returns:
        A :class:`FileModeReport`.

    Raises:
        DatasetNotFoundError: ``path`` does not exist.
        bankcourse.schema.SchemaError: the file lacks some of the course's columns.
    """
    settings = settings if settings is not None else Settings.from_env()
    if int(chunk_rows) < 1:
        raise SettingError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
    path = Path(path)
    if frames is None:
        from bankcourse import dataio

        check_dataset(path)
        frames = dataio.iter_frames(path, chunk_rows=int(chunk_rows))
    out_dir = Path(out_dir) if out_dir is not None else settings.data_dir / "file_mode"
    out_dir.mkdir(parents=True, exist_ok=True)
    thresholds = settings.thresholds
    report = FileModeReport(
        source=path,
        alerts_path=out_dir / ALERTS_FILE,
        quarantine_path=out_dir / QUARANTINE_FILE,
        thresholds=asdict(thresholds),
    )
    meter = meter if meter is not None else ThroughputMeter("file")
    if on_batch is not None:
        meter.add_listener(on_batch)
    log.info("file mode started: source=%s out_dir=%s chunk_rows=%d thresholds=%s",
             path, out_dir, chunk_rows, report.thresholds)
    began = time.perf_counter()
    offset = 0
    try:
        meter.start()
        with open(report.alerts_path, "wb") as alerts_file, \
                open(report.quarantine_path, "wb") as quarantine_out, \
                _Background() as alerts_out:
            for raw in _read_ahead(iter(frames)) if read_ahead else frames:
                if offset == 0:
                    schema.require_columns(raw.columns, str(path))
                raw = raw.set_axis(pd.RangeIndex(offset, offset + len(raw)), axis=0)
                offset += len(raw)
                _process_chunk(raw, thresholds, report, meter, alerts_out, quarantine_out,
                               alerts_file)
    finally:
        if on_batch is not None:
            meter.remove_listener(on_batch)
    report.seconds = time.perf_counter() - began
    report.rows_per_s = report.rows_read / report.seconds if report.seconds > 0 else 0.0
    report.batches = meter.batches
    log.info(
        "file mode done: source=%s rows=%d valid=%d quarantined=%d alerts=%d seconds=%.3f "
        "rows_per_s=%.0f", path, report.rows_read, report.valid, report.quarantined,
        report.alerts, report.seconds, report.rows_per_s,
    )
    return report


def _process_chunk(
    raw: pd.DataFrame,
    thresholds: Any,
    report: FileModeReport,
    meter: ThroughputMeter,
    alerts_out: _Background,
    quarantine_out: BinaryIO,
    alerts_file: BinaryIO,
) -> None:
    """Clean one raw chunk, apply the rules, write its output and add it to the report."""
    valid, quarantined = schema.clean_frame(raw)
    report.rows_read += len(raw)
    report.valid += len(valid)
    if len(quarantined):
        reasons = quarantined[schema.REASON_COLUMN].value_counts()
        report.quarantined += len(quarantined)
        _add(report.quarantine_reasons, reasons)
        _write_quarantine(quarantined, quarantine_out)
        log.warning("quarantined %d of %d rows in rows %d..%d: %s", len(quarantined),
                    len(raw), raw.index[0], raw.index[-1], _pairs(reasons))

    flags = rules.evaluate_frame(valid, thresholds)
    alerts_out.submit(lambda: alerts_file.write(_alert_lines(valid, flags)))

    # Every count below comes from the fired-rules bit mask and two bincounts.
    mask = rule_mask(flags)
    hit = mask != 0
    per_mask = np.bincount(mask, minlength=1 << len(rules.RULES))
    by_rule = {name: int(per_mask[[m for m in range(len(per_mask)) if m >> bit & 1]].sum())
               for bit, name in enumerate(rules.RULE_NAMES)}
    for m in np.flatnonzero(per_mask[1:]) + 1:
        fired = [name for bit, name in enumerate(rules.RULE_NAMES) if m >> bit & 1]
        _add(report.by_severity, {rules.severity_of(fired): per_mask[m]})
    codes = _type_codes(valid["type"])
    kinds = len(schema.TXN_TYPES)
    by_type = dict(zip(schema.TXN_TYPES, np.bincount(codes, minlength=kinds + 1).tolist(),
                       strict=False))
    _add(report.alerts_by_type, dict(zip(
        schema.TXN_TYPES, np.bincount(codes[hit], minlength=kinds + 1).tolist(), strict=False)))

    counts = confusion_counts(flags, valid["isFraud"])
    for name, c in counts.items():
        into = report.confusion.setdefault(name, dict.fromkeys(c, 0))
        for key, value in c.items():
            into[key] += value
    fraud = counts[ANY_RULE]["true_positives"] + counts[ANY_RULE]["false_negatives"]
    alerts = int(hit.sum())
    report.alerts += alerts
    _add(report.by_rule, by_rule)
    _add(report.rows_by_type, by_type)
    report.fraud += fraud
    report.caught += counts[ANY_RULE]["true_positives"]
    report.missed += counts[ANY_RULE]["false_negatives"]
    report.caught_behavioural += counts[ANY_BEHAVIOURAL]["true_positives"]
    report.missed_behavioural += counts[ANY_BEHAVIOURAL]["false_negatives"]

    latest = _latest_alerts(valid, mask)
    metrics = meter.record(len(raw), alerts=alerts, fraud=fraud, by_type=by_type,
                           by_rule=by_rule, latest_alerts=latest)
    report.batch_rows_per_s.append(metrics.rows_per_s)


# --- command line ----------------------------------------------------------------------


def _settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("high_amount", "transfer_spike", "drain_balance"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    return Settings.from_env(**overrides)


def _known_rows(path: Path) -> int | None:
    """Rows in a parquet file from its footer (for the progress bar); None for other files."""
    if not path.name.lower().endswith((".parquet", ".pq")):
        return None
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(str(path)).metadata.num_rows)
    except (OSError, pa.ArrowException):
        return None


def _detect(args: argparse.Namespace) -> int:
    """``python -m bankcourse detect``: run file mode and print the report."""
    try:
        settings = _settings_from_args(args)
        if args.chunk_rows < 1:
            raise SettingError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
        if args.path is None:
            from bankcourse import dataio

            path = dataio.ensure_dataset(settings, rows=args.rows, seed=args.seed)
        else:
            from bankcourse import dataio

            path = check_dataset(args.path)
            dataio.detect_format(path)  # an unknown suffix is a usage error, said plainly
    except (SettingError, DatasetNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        on_batch = None
        if sys.stderr.isatty() and not args.no_progress:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            bar = stack.enter_context(tqdm(total=_known_rows(path), unit=" rows",
                                           unit_scale=True, desc="file mode", file=sys.stderr))
            stack.enter_context(logging_redirect_tqdm())  # log lines above the bar

            alerts = [0]

            def on_batch(metrics: BatchMetrics) -> None:
                alerts[0] += metrics.alerts
                bar.update(metrics.rows)
                bar.set_postfix(alerts=f"{alerts[0]:,}", refresh=False)
        try:
            report = run_file_mode(path, settings, args.out, chunk_rows=args.chunk_rows,
                                   on_batch=on_batch)
        except (schema.SchemaError, DatasetNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(report.to_markdown() if args.markdown else report)
    return 0


def register_cli(subparsers: Any) -> None:
    """Add the ``detect`` command (file mode) to ``python -m bankcourse``."""
    parser = subparsers.add_parser(
        "detect",
        help="stage 1: apply the fraud rules to a dataset file (file mode)",
        description=(
            "Read a dataset (csv.gz, parquet or JSON lines) in chunks, quarantine malformed "
            "rows, apply the four fraud rules with pandas, write alerts as JSON lines and "
            "print a report. Without PATH, the default dataset is generated on first use."
        ),
    )
    parser.add_argument("path", nargs="?", default=None,
                        help="dataset file; default: the cached generated dataset")
    parser.add_argument("--out", default=None,
                        help="folder for alerts.jsonl and quarantine.jsonl "
                             "(default: DATA_DIR/file_mode)")
    parser.add_argument("--data-dir", default=None,
                        help="where datasets are cached (default: BANKCOURSE_DATA_DIR or ./data)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help=f"rows per chunk (default: {DEFAULT_CHUNK_ROWS})")
    parser.add_argument("--rows", type=int, default=200_000,
                        help="rows of the default dataset when PATH is not given "
                             "(default: 200000)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed of the default dataset (default: 42)")
    parser.add_argument("--high-amount", dest="high_amount", default=None,
                        help="HIGH_AMOUNT threshold (default: 200000)")
    parser.add_argument("--transfer-spike", dest="transfer_spike", default=None,
                        help="TRANSFER_SPIKE threshold (default: 150000)")
    parser.add_argument("--drain-balance", dest="drain_balance", default=None,
                        help="BALANCE_DRAIN threshold (default: 0)")
    parser.add_argument("--markdown", action="store_true", help="print the report as Markdown")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_detect)
