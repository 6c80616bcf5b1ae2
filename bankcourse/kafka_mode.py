"""Stage 2, Kafka mode: a producer, a consumer-group detector and bounded topic reads.

The producer streams a dataset into ``settings.topic_transactions`` as JSON (one
transaction per message, keyed by ``nameOrig`` so one account's transactions stay in
order on one partition). Each message's Kafka timestamp is its produce time
(``CreateTime``, milliseconds), which the detector uses to measure latency.

The detector is a kafka-python consumer in a consumer group. For each poll batch it

* decodes every message and validates it (the rules of
  :func:`bankcourse.schema.clean_record`; see :func:`process_batch`); a message that is
  not JSON or breaks the schema goes to the dead-letter topic with the reason;
* evaluates the course's rules once for the whole batch with
  :func:`bankcourse.rules.evaluate_frame` (the one rule definition);
* writes every valid transaction to ``topic_processed`` (its fields, then ``rules``,
  the fired rule names, and ``severity``, null when none fired) and an alert
  (:data:`bankcourse.rules.ALERT_FIELDS`, keyed by account) for each transaction on
  which a rule fired to ``topic_alerts``;
* makes the batch durable before it moves on. ``at-least-once``: the producer (acks=all)
  is flushed, then the offsets are committed (asynchronously: the next batch does not
  wait for the answer; the last commit is awaited before the detector stops); a crash
  in between replays the batch, so alerts may be written twice but never lost.
  ``exactly-once``: the outputs and the offsets go into one Kafka transaction (a
  transactional producer per detector instance); readers with
  ``isolation_level="read_committed"`` see each alert once.

A dead-letter message is a JSON object (see :data:`DEAD_LETTER_FIELDS`): ``reason``,
where the message came from (``topic``, ``partition``, ``offset``, ``timestamp_ms``,
``key``), the original value as text (``original``, null when it is not UTF-8) and as
base64 (``original_base64``, always exact).

Speed: per-message Python work, not the rules, bounds kafka-python, so the work is done
per batch wherever kafka-python allows it:

* the producer builds a whole chunk's JSON at once with Arrow and hands kafka-python
  whole record batches, each key already hashed to its partition
  (:class:`bankcourse.kafka_wire.BatchWriter`), instead of calling ``send`` per message;
  the detector writes its outputs the same way;
* the detector's consumer decodes each fetched record batch at once
  (:func:`bankcourse.kafka_wire.use_bulk_decoding`); the detector parses a poll batch's
  JSON with Arrow in one go and evaluates the rules once per batch (small batches go
  record by record, see :data:`PER_RECORD_BELOW`); a message that is not plainly valid
  is decoded on its own, which gives the dead-letter reason.

:mod:`bankcourse.kafka_wire` holds the record-format work and says what it relies on in
kafka-python. The ``crc32c`` package must be installed, or kafka-python checksums every
record batch in pure Python.

Every loop is bounded: the producer by a message count or a duration, the detector by a
message count, an idle time or a duration. An unreachable broker gives a
:class:`KafkaModeError` naming the address and the fix within a few seconds.

Usage::

    settings = Settings.from_env()
    produce(settings, rows=20_000)
    report = detect(settings, mode="exactly-once", idle_timeout_s=5)
    alerts = read_topic(settings, settings.topic_alerts, timeout_s=10)
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bankcourse import rules, schema
from bankcourse.kafka_wire import (
    BatchWriter,
    KeyPartitions,
    SendFailures,
    kafka_python_version,
    single_chunk,
    use_bulk_decoding,
)
from bankcourse.meter import (
    BatchMetrics,
    ThroughputMeter,
    summarise_frame,
    summarise_records,
)
from bankcourse.settings import Settings

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("at-least-once", "exactly-once")
"""The detector's delivery guarantees."""

DEFAULT_GROUP = "bankcourse-detector"
"""The detector's consumer group when none is given."""

DEFAULT_BATCH_ROWS = 20_000
"""Most messages the detector takes per poll. Each batch has a fixed cost (a JSON parse,
the rules, two sends, a flush or a transaction), so a backlog is worked through in large
batches; a steady trickle still comes in small ones, as it arrives."""

FETCH_PARTITION_BYTES = 8 * 1024 * 1024
"""The detector's ``max_partition_fetch_bytes``: about 27,000 course messages, so that one
fetch can fill a :data:`DEFAULT_BATCH_ROWS` batch (kafka-python's 1 MB default holds
about 3,400)."""

CONNECT_TIMEOUT_MS = 5_000
"""How long a client tries to reach the broker before giving up (bootstrap)."""

REQUEST_TIMEOUT_MS = 15_000
"""How long a client waits for one broker response."""

MAX_BLOCK_MS = 15_000
"""How long ``send`` may block on metadata or a full buffer, and the flush bound."""

DEAD_LETTER_FIELDS: tuple[str, ...] = (
    "reason", "topic", "partition", "offset", "timestamp_ms", "key", "original",
    "original_base64",
)
"""The fields of a dead-letter message (a JSON object), in the order they are written."""

EVENT_TIME_JSON_FORMAT = '"%Y-%m-%dT%H:%M:%SZ"'
"""Arrow strftime format giving ``schema.format_event_time``'s text, quoted (``%S``
carries the microseconds of a microsecond timestamp)."""

_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


class KafkaModeError(RuntimeError):
    """Kafka mode cannot go on; the message says what is wrong and how to fix it."""


# --- clients -----------------------------------------------------------------------------


def client_config(settings: Settings) -> dict[str, Any]:
    """kafka-python options to reach the course's broker (or the configured cluster).

    Uses :func:`bankcourse.broker.client_config` (bootstrap servers plus security
    options), with bounded connect and request timeouts added.
    """
    from bankcourse import broker

    config = dict(broker.client_config(settings))
    config.setdefault("bootstrap_timeout_ms", CONNECT_TIMEOUT_MS)
    config.setdefault("request_timeout_ms", REQUEST_TIMEOUT_MS)
    return config


def _unreachable(settings: Settings, exc: BaseException) -> KafkaModeError:
    fix = ("check KAFKA_BOOTSTRAP_SERVERS and the BANKCOURSE_KAFKA_SECURITY_* settings"
           if settings.external_kafka else
           "start the course's broker with `python -m bankcourse broker start` "
           "(same BANKCOURSE_KAFKA_PORT)")
    return KafkaModeError(
        f"cannot reach Kafka at {settings.bootstrap_servers} within "
        f"{CONNECT_TIMEOUT_MS / 1000:g} s ({type(exc).__name__}: {exc}); {fix}"
    )


def _connect(settings: Settings, factory: Callable[..., Any], *args: Any,
             **config: Any) -> Any:
    """Build a kafka-python client, turning an unreachable broker into KafkaModeError."""
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    from bankcourse import broker

    try:
        broker.require_running(settings, timeout_s=CONNECT_TIMEOUT_MS / 1000)
    except broker.BrokerError as exc:
        raise KafkaModeError(str(exc)) from exc
    try:
        return factory(*args, **{**client_config(settings), **config})
    except (KafkaConnectionError, KafkaTimeoutError, OSError) as exc:
        raise _unreachable(settings, exc) from exc
    except KafkaError as exc:
        raise KafkaModeError(f"Kafka client setup failed at {settings.bootstrap_servers}: "
                             f"{type(exc).__name__}: {exc}") from exc


def make_producer(settings: Settings, **config: Any) -> Any:
    """A KafkaProducer for ``settings`` (acks=all, bounded timeouts); ``config`` overrides.

    Raises:
        KafkaModeError: the broker cannot be reached within a few seconds.
    """
    from kafka import KafkaProducer

    defaults: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_block_ms": MAX_BLOCK_MS,
        "delivery_timeout_ms": 30_000,
        "retry_backoff_ms": 100,
    }
    return _connect(settings, KafkaProducer, **{**defaults, **config})


def ensure_topics(settings: Settings) -> None:
    """Create the four topics of ``settings`` if missing (through the broker module)."""
    from bankcourse import broker

    try:
        broker.ensure_topics(settings)
    except broker.BrokerError as exc:
        raise KafkaModeError(str(exc)) from exc


# --- JSON encoding of whole frames -------------------------------------------------------


def _json_text(values: pd.Series) -> pa.Array:
    """One column as JSON text per row (null for missing), built by Arrow in bulk."""
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        from bankcourse import dataio

        stamps = pd.to_datetime(values, utc=True)
        array = pa.array(stamps, type=pa.timestamp("us", tz="UTC"), from_pandas=True)
        # schema.format_event_time's text, quoted (dataio's is ~15x Arrow's strftime)
        text = pc.binary_join_element_wise('"', dataio.event_time_text(array).cast(pa.string()),
                                           '"', "")
    elif pd.api.types.is_bool_dtype(dtype):
        text = pc.if_else(pa.array(values, from_pandas=True), "true", "false")
    elif pd.api.types.is_numeric_dtype(dtype):
        array = pa.array(values, from_pandas=True)
        text = array.cast(pa.string())
        if pa.types.is_floating(array.type):
            # inf is not JSON: send it as text, so the reader says "not finite".
            odd = pc.fill_null(pc.is_inf(array), False)
            if pc.any(odd).as_py():
                text = pc.if_else(odd, pc.binary_join_element_wise('"', text, '"', ""), text)
    else:
        try:
            array = pa.array(values, type=pa.string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed objects in a raw frame
            strings = values.astype(object).where(values.notna(), None)
            array = pa.array([v if v is None or isinstance(v, str) else str(v)
                              for v in strings], type=pa.string())
        if pc.any(pc.fill_null(pc.match_substring_regex(array, _NEEDS_ESCAPE), False)).as_py():
            text = pa.array([None if v is None else json.dumps(v) for v in array.to_pylist()],
                            type=pa.string())
        else:
            text = pc.binary_join_element_wise('"', array, '"', "")
    return pc.fill_null(text, "null")


def encode_frame(frame: pd.DataFrame, names: Sequence[str] | None = None,
                 raw_json: Mapping[str, Sequence[str]] | None = None) -> list[bytes]:
    """Each row of ``frame`` as one JSON object (UTF-8 bytes); see :func:`encode_frame_arrow`.

    Returns:
        One ``bytes`` per row.
    """
    return encode_frame_arrow(frame, names, raw_json).to_pylist()


def encode_frame_arrow(frame: pd.DataFrame, names: Sequence[str] | None = None,
                       raw_json: Mapping[str, Sequence[str]] | None = None) -> pa.Array:
    """Each row of ``frame`` as one JSON object (UTF-8 bytes), built column-wise by Arrow.

    Args:
        frame: the rows; numbers stay JSON numbers (exact: shortest round-trip text),
            timestamps become ``schema.format_event_time`` text, missing values null.
        names: the fields to write, in order. Default: ``schema.NAMES`` when all are
            present, else every column of ``frame``; then the ``raw_json`` fields.
        raw_json: fields whose values are already JSON text, one per row (such as the
            pre-encoded ``rules`` array); a name here wins over a column of ``frame``.

    Returns:
        An Arrow binary array, one value per row.
    """
    raw_json = dict(raw_json or {})
    if names is None:
        names = schema.NAMES if not schema.missing_columns(frame.columns) else list(frame.columns)
        names = [*names, *(n for n in raw_json if n not in names)]
    if not len(frame):
        return pa.array([], type=pa.binary())
    parts: list[Any] = []
    for i, name in enumerate(names):
        if name in raw_json:
            text = pa.array(raw_json[name], type=pa.string())
        else:
            text = _json_text(frame[name])
        parts.append(("{" if i == 0 else ",") + json.dumps(name) + ":")
        parts.append(text)
    parts.append("}")
    joined = pc.binary_join_element_wise(*parts, "").cast(pa.binary())
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def _keys(frame: pd.DataFrame) -> list[bytes | None]:
    if "nameOrig" not in frame.columns:
        return [None] * len(frame)
    return [k.encode() if isinstance(k, str) else None for k in frame["nameOrig"].tolist()]


def _key_array(frame: pd.DataFrame, column: str = "nameOrig") -> pa.Array:
    """The message keys of ``frame`` (its ``column`` as UTF-8) as an Arrow binary array."""
    if column not in frame.columns:
        return pa.nulls(len(frame), type=pa.binary())
    values = frame[column]
    try:
        array = pa.array(values, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed objects in a raw frame
        array = pa.array([k if isinstance(k, str) else None for k in values.tolist()],
                         type=pa.string())
    return single_chunk(array).cast(pa.binary())


# --- the producer ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProduceReport:
    """What one :func:`produce` run sent.

    Attributes:
        topic: where it sent.
        messages: messages acknowledged by the broker.
        bytes: the total size of their values.
        seconds: wall time from the first send to the final flush.
        rate_per_s: ``messages / seconds``.
        stopped_because: ``source exhausted``, ``max_messages`` or ``duration``.
    """

    topic: str
    messages: int
    bytes: int
    seconds: float
    rate_per_s: float
    stopped_because: str


def _source_frames(settings: Settings, source: Any, rows: int, seed: int,
                   chunk_rows: int) -> Iterator[pd.DataFrame]:
    from bankcourse import dataio

    if source is None:
        source = dataio.ensure_dataset(settings, rows=rows, seed=seed)
    if isinstance(source, (str, Path)):
        yield from dataio.iter_frames(source, chunk_rows=chunk_rows)
    elif isinstance(source, pd.DataFrame):
        for start in range(0, len(source), chunk_rows):
            yield source.iloc[start:start + chunk_rows]
    else:
        yield from source


def produce(
    settings: Settings,
    source: str | Path | pd.DataFrame | Iterable[pd.DataFrame] | None = None,
    *,
    rows: int = 200_000,
    seed: int = 42,
    max_messages: int | None = None,
    rate_per_s: float | None = None,
    duration_s: float | None = None,
    chunk_rows: int = 20_000,
    progress: bool | None = None,
    create_topics: bool = True,
    producer_config: Mapping[str, Any] | None = None,
) -> ProduceReport:
    """Stream transactions into ``settings.topic_transactions`` as JSON, keyed by account.

    Args:
        settings: the course settings (broker address, topic names).
        source: a dataset path, a DataFrame or an iterable of DataFrames. Default: the
            cached dataset of ``rows`` rows and ``seed`` (``dataio.ensure_dataset``).
        rows, seed: the generated dataset used when ``source`` is None.
            Default: 200000 and 42.
        max_messages: stop after this many messages. Default: the whole source.
        rate_per_s: send at this steady rate. Default: None (as fast as possible).
        duration_s: stop after this many seconds. Default: None.
        chunk_rows: rows encoded at once. Default: 20000.
        progress: show a tqdm progress bar. Default: when stderr is a terminal.
        create_topics: create missing topics first. Default: True.
        producer_config: extra KafkaProducer options (override the defaults).

    Returns:
        A :class:`ProduceReport`.

    Raises:
        KafkaModeError: the broker is unreachable or a send failed.
    """
    from kafka.errors import KafkaError

    if rate_per_s is not None and rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s!r}")
    if max_messages is not None and max_messages < 0:
        raise ValueError(f"max_messages must be >= 0, got {max_messages!r}")
    paced = rate_per_s is not None
    config = {"linger_ms": 1 if paced else 20, **(producer_config or {})}
    producer = make_producer(settings, **config)
    topic = settings.topic_transactions
    failures = SendFailures()
    sent = size = 0
    stopped = "source exhausted"
    bar = None
    try:
        if create_topics:
            ensure_topics(settings)
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm.auto import tqdm

            total = max_messages if max_messages is not None else (
                rows if source is None else len(source) if isinstance(source, pd.DataFrame)
                else None)
            bar = tqdm(total=total, unit="txn", desc=f"produce {topic}")
        log.info("produce started: topic=%s rate_per_s=%s max_messages=%s duration_s=%s",
                 topic, rate_per_s, max_messages, duration_s)
        partition_of = KeyPartitions(producer, topic)
        writer = BatchWriter(producer)
        failures = writer.failures
        send = producer.send
        began = time.perf_counter()
        deadline = began + duration_s if duration_s is not None else None
        limit = max_messages if max_messages is not None else float("inf")
        for frame in _source_frames(settings, source, rows, seed, chunk_rows):
            if sent >= limit:
                stopped = "max_messages"
                break
            if deadline is not None and time.perf_counter() >= deadline:
                stopped = "duration"
                break
            if len(frame) > limit - sent:
                frame = frame.iloc[: int(limit - sent)]
            values = encode_frame_arrow(frame)
            keys = _key_array(frame)
            partitions = partition_of.arrow(keys)
            if not paced:
                # A whole chunk at once: record batches built in bulk (BatchWriter).
                writer.send(topic, partitions, keys, values)
                sent += len(values)
                size += int(pc.sum(pc.binary_length(values)).as_py() or 0)
                if bar is not None:
                    bar.update(len(values))
            else:
                value_list, key_list = values.to_pylist(), keys.to_pylist()
                partition_list = partitions.tolist()
                for i, value in enumerate(value_list):
                    due = began + sent / rate_per_s
                    now = time.perf_counter()
                    if due > now + 0.0005:
                        time.sleep(due - now)
                    if deadline is not None and now >= deadline:
                        stopped = "duration"
                        break
                    send(topic, value=value, key=key_list[i],
                         partition=partition_list[i]).add_errback(failures)
                    sent += 1
                    size += len(value)
                    if bar is not None and sent % 1000 == 0:
                        bar.update(1000)
            if stopped == "duration":
                break
            if failures.count:
                break
        else:
            if sent >= limit and max_messages is not None:
                stopped = "max_messages"
        producer.flush(timeout=MAX_BLOCK_MS / 1000)
        seconds = time.perf_counter() - began
    except KafkaError as exc:
        raise KafkaModeError(
            f"producing to {topic} at {settings.bootstrap_servers} failed after {sent} "
            f"messages: {exc}; is the broker still running?") from exc
    finally:
        if bar is not None:
            if paced:
                bar.update(sent % 1000)
            bar.close()
        producer.close(timeout=5)
    if failures.count:
        raise KafkaModeError(
            f"{failures.count} of {sent} messages to {topic} failed: {failures.first}; "
            "is the broker still running?")
    report = ProduceReport(topic, sent, size, seconds, sent / seconds if seconds > 0 else 0.0,
                           stopped)
    log.info("produce done: topic=%s messages=%d seconds=%.3f rate_per_s=%.0f stopped=%s",
             topic, sent, seconds, report.rate_per_s, stopped)
    return report


def send_raw(settings: Settings, values: Iterable[bytes | str | None],
             *, topic: str | None = None, key: bytes | None = None) -> int:
    """Send raw values as they are (to show or test how bad messages are handled).

    Args:
        settings: the course settings.
        values: message values; ``str`` is sent as UTF-8, None as an empty message.
        topic: where to send. Default: ``settings.topic_transactions``.
        key: the key of every message. Default: None.

    Returns:
        How many messages were sent (all acknowledged).
    """
    producer = make_producer(settings)
    topic = topic or settings.topic_transactions
    failures = SendFailures()
    count = 0
    try:
        for value in values:
            data = value.encode() if isinstance(value, str) else value
            producer.send(topic, value=data, key=key).add_errback(failures)
            count += 1
        producer.flush(timeout=MAX_BLOCK_MS / 1000)
    finally:
        producer.close(timeout=5)
    if failures.count:
        raise KafkaModeError(f"{failures.count} raw messages to {topic} failed: "
                             f"{failures.first}")
    return count


# --- the detector ------------------------------------------------------------------------


def _combo_tables() -> tuple[list[str], list[str | None]]:
    """For each bit mask of fired rules: its JSON array text and its severity."""
    arrays, severities = [], []
    for mask in range(1 << len(rules.RULES)):
        fired = [r.name for bit, r in enumerate(rules.RULES) if mask >> bit & 1]
        arrays.append(json.dumps(fired))
        severities.append(rules.severity_of(fired))
    return arrays, severities


_RULES_JSON, _SEVERITY = _combo_tables()
_DECODER = json.JSONDecoder()
_SEVERITY_JSON = ["null" if s is None else json.dumps(s) for s in _SEVERITY]


@dataclass
class BatchOutput:
    """What the detector makes of one poll batch, ready to send.

    Attributes:
        valid: how many messages were valid transactions.
        processed_keys, processed_values: per valid transaction, its key and its value
            with ``rules`` and ``severity`` (Arrow binary arrays, input order).
        alert_keys, alert_values: per alert (:data:`rules.ALERT_FIELDS`), keyed by
            account (Arrow binary arrays).
        dead_letters: (key, value) per message that failed, and the reasons.
        alert_timestamps_ms: the produce time of each alert's transaction.
        summary: the batch's counts for :meth:`ThroughputMeter.record` (alerts, fraud,
            by_type, by_rule, latest_alerts).
    """

    valid: int
    processed_keys: pa.Array
    processed_values: pa.Array
    alert_keys: pa.Array
    alert_values: pa.Array
    dead_letters: list[tuple[bytes | None, bytes]]
    reasons: list[str]
    alert_timestamps_ms: np.ndarray
    summary: dict[str, Any]

    @property
    def processed(self) -> list[tuple[bytes | None, bytes]]:
        """(key, value) per valid transaction."""
        return list(zip(self.processed_keys.to_pylist(), self.processed_values.to_pylist(),
                        strict=True))

    @property
    def alerts(self) -> list[tuple[bytes | None, bytes]]:
        """(key, value) per alert."""
        return list(zip(self.alert_keys.to_pylist(), self.alert_values.to_pylist(),
                        strict=True))


def dead_letter(message: Any, reason: str) -> bytes:
    """The dead-letter value for a consumed message (see :data:`DEAD_LETTER_FIELDS`)."""
    value = message.value if message.value is not None else b""
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    key = message.key
    envelope = {
        "reason": reason,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "timestamp_ms": message.timestamp,
        "key": None if key is None else key.decode("utf-8", errors="replace"),
        "original": text,
        "original_base64": base64.b64encode(value).decode("ascii"),
    }
    return json.dumps(envelope).encode()


PER_RECORD_BELOW = 512
"""Batches with fewer messages than this are decoded and evaluated record by record
(``schema.clean_record``, ``rules.evaluate_record``): an Arrow/pandas pass has a fixed
cost of some milliseconds that would dominate the latency of small batches. Larger ones
are decoded by Arrow in one go and evaluated with ``evaluate_frame``."""

_NUMERIC_KINDS = ("int", "float", "flag")
_ARROW_JSON_SCHEMA = pa.schema([
    pa.field(c.name, pa.float64() if c.kind in _NUMERIC_KINDS else pa.string())
    for c in schema.COLUMNS])
_EVENT_TIME_PATTERN = (r"^[1-9]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
                       r"T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{6})?Z$")
_SMALLEST_SPLIT = 4


def process_batch(messages: Sequence[Any], settings: Settings, *,
                  per_record_below: int = PER_RECORD_BELOW) -> BatchOutput:
    """Validate, evaluate and encode one poll batch (no Kafka I/O).

    A large batch is decoded by Arrow in one go (:func:`_decode_fast`); every message
    that Arrow cannot parse, or whose values are not plainly valid, is decoded again on
    its own by ``json`` and ``schema.clean_record``, which give the dead-letter reason.
    Either way the output is the same.

    Args:
        messages: kafka-python ConsumerRecords (``value`` raw bytes).
        settings: gives the thresholds.
        per_record_below: work record by record when there are fewer messages than
            this; both ways give the same output. Default: 512.

    Returns:
        A :class:`BatchOutput`.
    """
    if len(messages) < per_record_below:
        valid, rows, dead, reasons = _clean_each(messages, range(len(messages)))
        keys = [messages[i].key for i in rows]
        stamps = np.asarray([messages[i].timestamp for i in rows], dtype=np.float64)
        if len(valid) < per_record_below:
            processed, alerts, hit, summary = _evaluate_records(valid, keys, settings)
            return BatchOutput(len(valid), *_arrays(processed), *_arrays(alerts), dead,
                               reasons, stamps[hit], summary)
        frame = pd.DataFrame.from_records(valid, columns=list(schema.NAMES))
    else:
        fast_rows, fast = _decode_fast([m.value for m in messages])
        slow_rows = ([] if len(fast_rows) == len(messages) else
                     np.setdiff1d(np.arange(len(messages)), fast_rows).tolist())
        valid, rows, dead, reasons = _clean_each(messages, slow_rows)
        frame = fast
        if valid:
            frame = pd.concat([fast, pd.DataFrame.from_records(
                valid, columns=list(schema.NAMES))], ignore_index=True)
        positions = np.concatenate([fast_rows, np.asarray(rows, dtype=np.int64)])
        if len(rows) and len(fast_rows):
            order = np.argsort(positions, kind="stable")
            frame = frame.iloc[order].reset_index(drop=True)
            positions = positions[order]
        rows = positions.tolist()
        keys = [messages[i].key for i in rows]
        stamps = np.asarray([messages[i].timestamp for i in rows], dtype=np.float64)
    out = _evaluate_frame(frame, pa.array(keys, type=pa.binary()), settings)
    processed_keys, processed_values, alert_keys, alert_values, hit, summary = out
    return BatchOutput(len(frame), processed_keys, processed_values, alert_keys,
                       alert_values, dead, reasons, stamps[hit], summary)


def _arrays(pairs: list[tuple[bytes | None, bytes]]) -> tuple[pa.Array, pa.Array]:
    return (pa.array([k for k, _ in pairs], type=pa.binary()),
            pa.array([v for _, v in pairs], type=pa.binary()))


def _clean_each(messages: Sequence[Any], rows: Iterable[int],
                ) -> tuple[list[dict[str, Any]], list[int], list[tuple[bytes | None, bytes]],
                           list[str]]:
    """``json`` and ``schema.clean_record`` on each of ``messages[rows]``.

    Returns:
        The valid records, their row numbers, the dead letters and their reasons.
    """
    loads, clean = _DECODER.decode, schema.clean_record
    valid: list[dict[str, Any]] = []
    kept: list[int] = []
    dead: list[tuple[bytes | None, bytes]] = []
    reasons: list[str] = []
    for i in rows:
        message = messages[i]
        value = message.value
        record: dict[str, Any] | None = None
        if not value:
            reason: str | None = "empty message (no value)"
        else:
            try:
                record, reason = clean(loads(value.decode("utf-8")))
            except (ValueError, UnicodeDecodeError) as exc:
                reason = f"not JSON: {exc}"
                record = None
        if reason is None:
            valid.append(record)  # type: ignore[arg-type]
            kept.append(i)
        else:
            log.debug("dead letter %s-%d@%d: %s", message.topic, message.partition,
                      message.offset, reason)
            dead.append((message.key, dead_letter(message, reason)))
            reasons.append(reason)
    return valid, kept, dead, reasons


def _decode_fast(values: Sequence[bytes | None]) -> tuple[np.ndarray, pd.DataFrame]:
    """Decode the plainly valid transactions among ``values`` with Arrow, in one go.

    A value is taken only when it is one JSON object on one line of UTF-8 that Arrow
    parses with the schema's types (numbers as numbers, text as text, no field twice)
    and every field holds a value that ``schema.clean_record`` accepts as it is: present,
    finite, in range, a known type, an ISO ``event_time`` ending in Z. Anything else is
    left for the record-by-record path, which decides whether it is valid and why not.

    Returns:
        The row numbers taken (ascending) and their typed frame (schema columns; ``step``
        and the flags as int64, ``event_time`` as its text), in the same order.
    """
    candidates, data = _one_object_lines(values)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        candidates = [i for i in candidates if _is_utf8(values[i])]  # type: ignore[arg-type]
        data = None
    parts = _parse_lines(values, candidates, data)
    taken: list[np.ndarray] = []
    frames: list[pd.DataFrame] = []
    for rows, table in parts:
        good = _plainly_valid(table)
        if not good.all():
            table = table.filter(pa.array(good))
        taken.append(np.asarray(rows, dtype=np.int64)[good])
        frames.append(_typed_frame(table))
    if not frames:
        return np.zeros(0, dtype=np.int64), _typed_frame(_ARROW_JSON_SCHEMA.empty_table())
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return np.concatenate(taken), frame


def _one_object_lines(values: Sequence[bytes | None]) -> tuple[list[int], bytes]:
    """The rows of ``values`` that are non-empty, on one line, and start with ``{`` and
    end with ``}`` (what Arrow may parse as one JSON object per line), and those values
    joined by newlines.

    The usual batch has only such values: that is checked on the joined bytes at once
    (exactly ``n - 1`` newlines, each between ``}`` and ``{``, means every value is one
    such line). Otherwise each value is looked at.
    """
    count = len(values)
    try:
        data = b"\n".join(values)  # type: ignore[arg-type]
    except TypeError:  # a message without a value
        data = b""
    if (count and data[:1] == b"{" and data[-1:] == b"}" and b"\r" not in data
            and data.count(b"\n") == count - 1 and data.count(b"}\n{") == count - 1):
        return list(range(count)), data
    rows = [i for i, v in enumerate(values)
            if v and v[:1] == b"{" and v[-1:] == b"}" and b"\n" not in v and b"\r" not in v]
    return rows, b"\n".join([values[i] for i in rows])  # type: ignore[misc]


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_lines(values: Sequence[bytes | None], rows: list[int], data: bytes | None = None,
                 ) -> list[tuple[list[int], pa.Table]]:
    """Parse ``values[rows]`` (``data``: those values joined by newlines, when the caller
    has them) as JSON lines with Arrow; halve the rows on an error.

    Arrow fails a whole read for one bad line: the rows are split in two and each half
    tried again, down to :data:`_SMALLEST_SPLIT` rows, which are left out (a few bad
    messages cost some extra parses, not a per-record pass over the batch).
    """
    import pyarrow.json as pjson

    if not rows:
        return []
    if data is None:
        data = b"\n".join([values[i] for i in rows])  # type: ignore[misc]
    try:
        table = pjson.read_json(
            pa.py_buffer(data),
            read_options=pjson.ReadOptions(block_size=max(len(data) + 1, 1 << 16),
                                           use_threads=False),
            parse_options=pjson.ParseOptions(explicit_schema=_ARROW_JSON_SCHEMA,
                                             unexpected_field_behavior="ignore"))
        if table.num_rows == len(rows):
            return [(rows, table)]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    if len(rows) <= _SMALLEST_SPLIT:
        return []
    middle = len(rows) // 2
    return _parse_lines(values, rows[:middle]) + _parse_lines(values, rows[middle:])


def _plainly_valid(table: pa.Table) -> np.ndarray:
    """Rows whose every value ``schema.clean_record`` accepts as parsed (see
    :func:`_decode_fast`); False means "decide record by record", not "invalid"."""
    good = np.ones(table.num_rows, dtype=bool)
    for col in schema.COLUMNS:
        column = table.column(col.name)
        if col.kind in _NUMERIC_KINDS:
            x = column.to_numpy(zero_copy_only=False)
            good &= np.isfinite(x)
            with np.errstate(invalid="ignore"):
                if col.kind == "float":
                    good &= x >= 0
                elif col.kind == "int":
                    good &= (x >= 1) & (x == np.floor(x))
                else:
                    good &= (x == 0) | (x == 1)
        elif col.kind == "timestamp":
            good &= _true(pc.match_substring_regex(column, _EVENT_TIME_PATTERN))
        else:
            good &= _true(pc.match_substring_regex(column, "[A-Za-z0-9]"))
    good &= _true(pc.is_in(table.column("type"), pa.array(schema.TXN_TYPES)))
    if good.any():
        # The pattern allows 31 February: let a real parser check the dates.
        texts = table.column("event_time").to_pandas()
        parsed = pd.to_datetime(texts, format="ISO8601", errors="coerce", utc=True)
        good &= parsed.notna().to_numpy()
    return good


def _true(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _typed_frame(table: pa.Table) -> pd.DataFrame:
    """The schema's columns of an Arrow-parsed table, with the types of clean records."""
    columns: dict[str, Any] = {}
    for col in schema.COLUMNS:
        column = table.column(col.name)
        if col.kind in ("int", "flag"):
            columns[col.name] = column.to_numpy(zero_copy_only=False).astype(np.int64)
        elif col.kind == "float":
            columns[col.name] = column.to_numpy(zero_copy_only=False)
        else:
            columns[col.name] = column.to_pandas()
    return pd.DataFrame(columns)


def _evaluate_frame(frame: pd.DataFrame, keys: pa.Array, settings: Settings,
                    ) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array, np.ndarray, dict]:
    """The whole batch at once: ``evaluate_frame``, then Arrow JSON encoding.

    Returns:
        Processed keys and values, alert keys and values, the rows with alerts, the
        batch summary.
    """
    flags = rules.evaluate_frame(frame, settings.thresholds)
    mask = np.zeros(len(frame), dtype=np.int64)
    for bit, rule in enumerate(rules.RULES):
        mask |= flags[rule.name].to_numpy(dtype=np.int64) << bit
    rules_json = np.asarray(_RULES_JSON, dtype=object)[mask]
    severity_json = np.asarray(_SEVERITY_JSON, dtype=object)[mask]
    processed_values = encode_frame_arrow(frame, [*schema.NAMES, "rules", "severity"],
                                          {"rules": rules_json, "severity": severity_json})
    hit = np.flatnonzero(mask)
    alert_keys = alert_values = pa.array([], type=pa.binary())
    if len(hit):
        rows = frame.iloc[hit].rename(columns={"nameOrig": "account"})
        alert_values = encode_frame_arrow(rows, rules.ALERT_FIELDS, {
            "rules": rules_json[hit], "severity": severity_json[hit]})
        alert_keys = _key_array(rows, "account")
    return (keys, processed_values, alert_keys, alert_values, hit,
            summarise_frame(frame, flags))


def _evaluate_records(valid: list[dict[str, Any]], keys: list[bytes | None],
                      settings: Settings) -> tuple[list[Any], list[Any], np.ndarray, dict]:
    """Record by record: ``evaluate_record``, ``alert_record``, ``json.dumps``."""
    thresholds = settings.thresholds
    fired_lists = [rules.evaluate_record(record, thresholds) for record in valid]
    processed: list[tuple[bytes | None, bytes]] = []
    alerts: list[tuple[bytes | None, bytes]] = []
    hit: list[int] = []
    for i, (record, key, fired) in enumerate(zip(valid, keys, fired_lists, strict=True)):
        # A missing balance is NaN in the record and null in JSON.
        fields = {k: None if isinstance(v, float) and v != v else v for k, v in record.items()}
        fields["rules"] = fired
        fields["severity"] = rules.severity_of(fired)
        processed.append((key, json.dumps(fields).encode()))
        if fired:
            alert = rules.alert_record(record, fired)
            alerts.append((alert["account"].encode(), json.dumps(alert).encode()))
            hit.append(i)
    return processed, alerts, np.asarray(hit, dtype=np.int64), summarise_records(valid,
                                                                                fired_lists)


@dataclass
class DetectReport:
    """What one :func:`detect` run did.

    Attributes:
        mode: ``at-least-once`` or ``exactly-once``.
        group: the consumer group.
        instance_id: this detector's id (its transactional id ends with it).
        consumed: input messages handled (committed).
        valid, dead_letters: how they split; ``consumed == valid + dead_letters``.
        alerts: alerts written.
        dead_letter_reasons: dead letters per reason.
        batches: poll batches handled.
        seconds: wall time of the run (group join included).
        rows_per_s: ``consumed`` over the time spent handling batches.
        partitions: every input partition this detector was assigned during the run.
        aborted: transactions aborted and replayed (exactly-once, after a rebalance).
        latencies_ms: per alert, produce time to the moment the alert was durable.
        stopped_because: ``max_messages``, ``idle``, or ``duration``.
    """

    mode: str
    group: str
    instance_id: str
    consumed: int = 0
    valid: int = 0
    dead_letters: int = 0
    alerts: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    partitions: list[int] = field(default_factory=list)
    aborted: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    stopped_because: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (latencies summarised, not listed)."""
        out = dataclasses.asdict(self)
        out.pop("latencies_ms")
        out["latency"] = latency_percentiles(self.latencies_ms)
        return out


def latency_percentiles(latencies_ms: Sequence[float] | np.ndarray,
                        percentiles: Sequence[float] = (50, 99)) -> dict[str, float]:
    """Summarise latencies: ``count``, ``p50_ms``, ``p99_ms`` (as asked), ``max_ms``.

    Latencies are produce time (the input's Kafka timestamp, millisecond resolution)
    to the time the alert was durably written; NaN when there are none.
    """
    values = np.asarray(latencies_ms, dtype=np.float64)
    out: dict[str, float] = {"count": float(len(values))}
    for p in percentiles:
        out[f"p{p:g}_ms"] = float(np.percentile(values, p)) if len(values) else float("nan")
    out["max_ms"] = float(values.max()) if len(values) else float("nan")
    return out


def _run_bounded(action: Callable[[], Any], timeout_s: float, what: str) -> None:
    """Run a blocking kafka-python call that has no timeout of its own, bounded.

    The call runs in a daemon thread; when it does not return in time the detector
    stops with a clear error (the process exits and Kafka cleans up).
    """
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            action()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"bankcourse-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise KafkaModeError(f"{what} did not finish within {timeout_s:g} s; "
                             "is the broker still running?")
    if "error" in outcome:
        raise outcome["error"]


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def detect(
    settings: Settings,
    *,
    mode: str = "at-least-once",
    group: str = DEFAULT_GROUP,
    instance_id: str | None = None,
    max_messages: int | None = None,
    idle_timeout_s: float | None = 10.0,
    duration_s: float | None = None,
    max_batch_rows: int = DEFAULT_BATCH_ROWS,
    on_batch: Callable[[BatchMetrics], Any] | None = None,
    meter: ThroughputMeter | None = None,
    create_topics: bool = True,
    keep_latencies: bool = True,
    latency_warmup_s: float = 0.0,
) -> DetectReport:
    """Run the fraud detector on ``settings.topic_transactions`` until a bound is reached.

    Args:
        settings: the course settings (broker, topics, thresholds).
        mode: ``at-least-once`` (flush, then commit) or ``exactly-once`` (Kafka
            transactions). Default: at-least-once.
        group: the consumer group; detectors in one group share the partitions.
            Default: ``bankcourse-detector``.
        instance_id: this detector's stable id. Given, it is also the static group
            member id and part of the transactional id, so a restarted detector with the
            same id takes over at once (and aborts its predecessor's open transaction).
            Default: host, process id and a random suffix.
        max_messages: stop after this many input messages. Default: None.
        idle_timeout_s: stop when no message came for this long. Default: 10.
        duration_s: stop after this many seconds. Default: None.
        max_batch_rows: most messages per poll batch. Default: :data:`DEFAULT_BATCH_ROWS`.
        on_batch: called with a :class:`~bankcourse.meter.BatchMetrics` per batch.
        meter: the meter to record into (to share with a dashboard). Default: a new one.
        create_topics: create missing topics first. Default: True.
        keep_latencies: keep every alert's latency in the report. Default: True.
        latency_warmup_s: leave out of the latencies the alerts of transactions produced
            within this many seconds of the first one consumed (connections, first
            batches). Default: 0 (keep all).

    Returns:
        A :class:`DetectReport`.

    Raises:
        KafkaModeError: the broker is unreachable, a write failed, or a bound is missing.
    """
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if max_messages is None and idle_timeout_s is None and duration_s is None:
        raise KafkaModeError("the detector needs a bound: max_messages, idle_timeout_s "
                             "or duration_s")
    exactly_once = mode == "exactly-once"
    static_member = instance_id is not None
    instance_id = instance_id or _default_instance_id()
    report = DetectReport(mode=mode, group=group, instance_id=instance_id)
    consumer_config: dict[str, Any] = {
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": max_batch_rows,
        # A sparse input: the broker answers a fetch as soon as data arrives; a short
        # wait bounds how long a fetch sent just before can hold a message back.
        "fetch_max_wait_ms": 25,
        # kafka-python 3 sleeps this long in poll() whenever it has no fetch in flight
        # (between a response and the next request, now and then): at 100 ms, the
        # default, those sleeps were the whole p99 tail at a steady 2,000 txn/s.
        "retry_backoff_ms": 10,
        "max_partition_fetch_bytes": FETCH_PARTITION_BYTES,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 2_000,
        "max_poll_interval_ms": 60_000,
        "client_id": f"bankcourse-detector-{instance_id}",
    }
    if static_member:
        consumer_config["group_instance_id"] = instance_id
    consumer = _connect(settings, KafkaConsumer, **consumer_config)
    if not use_bulk_decoding(consumer):
        log.info("kafka-python %s: fetched batches are decoded record by record",
                 kafka_python_version())
    producer = None
    try:
        # Each batch is flushed (or committed) at once, so linger only matters between
        # sends of one batch. A short retry backoff: transactional requests that meet the
        # previous transaction still completing are retried after it (100 ms by default
        # made the latency tail in exactly-once mode).
        producer_config: dict[str, Any] = {"linger_ms": 2, "retry_backoff_ms": 20,
                                           "client_id": consumer_config["client_id"]}
        if exactly_once:
            producer_config.update(transactional_id=f"{group}-{instance_id}",
                                   transaction_timeout_ms=20_000)
        producer = make_producer(settings, **producer_config)
        if create_topics:
            ensure_topics(settings)
        if exactly_once:
            producer.init_transactions()
        consumer.subscribe([settings.topic_transactions])
        _detect_loop(settings, consumer, producer, report, exactly_once, max_messages,
                     idle_timeout_s, duration_s, max_batch_rows, on_batch, meter,
                     keep_latencies, OffsetAndMetadata, latency_warmup_s)
    except KafkaError as exc:
        raise KafkaModeError(
            f"detector failed ({mode}, group {group}): {type(exc).__name__}: {exc}; "
            "its uncommitted batch will be processed again on restart") from exc
    finally:
        if producer is not None:
            producer.close(timeout=5)
        consumer.close(autocommit=False, timeout_ms=5_000)
    log.info("detect done: mode=%s group=%s instance=%s consumed=%d valid=%d alerts=%d "
             "dead_letters=%d batches=%d seconds=%.3f rows_per_s=%.0f partitions=%s "
             "stopped=%s", mode, group, instance_id, report.consumed, report.valid,
             report.alerts, report.dead_letters, report.batches, report.seconds,
             report.rows_per_s, report.partitions, report.stopped_because)
    return report


def _detect_loop(settings: Settings, consumer: Any, producer: Any, report: DetectReport,
                 exactly_once: bool, max_messages: int | None, idle_timeout_s: float | None,
                 duration_s: float | None, max_batch_rows: int,
                 on_batch: Callable[[BatchMetrics], Any] | None,
                 meter: ThroughputMeter | None, keep_latencies: bool,
                 offset_and_metadata: Any, latency_warmup_s: float = 0.0) -> None:
    from kafka.errors import KafkaError

    meter = meter if meter is not None else ThroughputMeter("kafka")
    if on_batch is not None:
        meter.add_listener(on_batch)
    meter.start()
    began = time.perf_counter()
    last_message = began
    busy_s = 0.0
    unconfirmed: dict[Any, Any] = {}
    first_stamp_ms: float | None = None
    positions: dict[Any, int] = {}
    assigned: set[int] = set()
    t_alerts, t_processed, t_dead = (settings.topic_alerts, settings.topic_processed,
                                     settings.topic_dead_letter)
    alert_partition = KeyPartitions(producer, t_alerts)
    processed_partition = KeyPartitions(producer, t_processed)
    writer = BatchWriter(producer)
    log.info("detect started: mode=%s group=%s instance=%s topic=%s",
             report.mode, report.group, report.instance_id, settings.topic_transactions)
    try:
        while True:
            now = time.perf_counter()
            if max_messages is not None and report.consumed >= max_messages:
                report.stopped_because = "max_messages"
                break
            if duration_s is not None and now - began >= duration_s:
                report.stopped_because = "duration"
                break
            if idle_timeout_s is not None and now - last_message >= idle_timeout_s:
                report.stopped_because = "idle"
                break
            want = max_batch_rows if max_messages is None else min(
                max_batch_rows, max_messages - report.consumed)
            polled = consumer.poll(timeout_ms=200, max_records=want)
            owned_now = consumer.assignment()
            assigned.update(tp.partition for tp in owned_now)
            for tp in [tp for tp in unconfirmed if tp not in owned_now]:
                # Revoked: its offsets are another detector's to commit now (a stale
                # commit here at the end could only move them back).
                del unconfirmed[tp]
            if not polled:
                continue
            started = time.perf_counter()
            last_message = started
            messages = [m for batch in polled.values() for m in batch]
            out = process_batch(messages, settings)
            offsets = {tp: offset_and_metadata(batch[-1].offset + 1, "", -1)
                       for tp, batch in polled.items()}
            if exactly_once:
                producer.begin_transaction()
            try:
                failures = writer.failures = SendFailures()
                writer.send(t_processed, processed_partition.arrow(out.processed_keys),
                            out.processed_keys, out.processed_values)
                writer.send(t_alerts, alert_partition.arrow(out.alert_keys),
                            out.alert_keys, out.alert_values)
                for key, value in out.dead_letters:
                    producer.send(t_dead, value=value, key=key).add_errback(failures)
                if exactly_once:
                    _run_bounded(functools.partial(producer.send_offsets_to_transaction,
                                                   offsets, consumer.group_metadata()),
                                 MAX_BLOCK_MS / 1000, "sending offsets")
                    _run_bounded(producer.commit_transaction, MAX_BLOCK_MS / 1000,
                                 "transaction commit")
                else:
                    producer.flush(timeout=MAX_BLOCK_MS / 1000)
                durable_ms = time.time() * 1000.0
                if failures.count:
                    raise KafkaModeError(
                        f"{failures.count} output messages failed ({failures.first}); "
                        "offsets not committed, the batch will be processed again")
                if not exactly_once:
                    # The output is durable: commit without waiting for the answer (the
                    # next batch's work overlaps it); the last commit is waited for at
                    # the end. A lost commit only replays a batch, as at-least-once allows.
                    consumer.commit_async(offsets, callback=_commit_failed)
                    unconfirmed.update(offsets)
            except KafkaError as exc:
                if not exactly_once or not _abortable(exc):
                    raise
                log.warning("transaction aborted (%s); rewinding to the committed offsets",
                            exc)
                _run_bounded(producer.abort_transaction, MAX_BLOCK_MS / 1000,
                             "transaction abort")
                owned = consumer.assignment()
                for tp in polled:
                    if tp in owned:
                        committed = consumer.committed(tp, timeout_ms=MAX_BLOCK_MS)
                        consumer.seek(tp, committed if committed is not None else 0)
                report.aborted += 1
                continue
            done = durable_ms
            if first_stamp_ms is None:
                first_stamp_ms = min(m.timestamp for m in messages)
            if keep_latencies and len(out.alert_timestamps_ms):
                stamps = out.alert_timestamps_ms
                if latency_warmup_s > 0:
                    stamps = stamps[stamps >= first_stamp_ms + latency_warmup_s * 1000.0]
                report.latencies_ms.extend((done - stamps).tolist())
            seconds = time.perf_counter() - started
            busy_s += seconds
            report.batches += 1
            report.consumed += len(messages)
            report.valid += out.valid
            report.dead_letters += len(out.dead_letters)
            report.alerts += len(out.alerts)
            for reason in out.reasons:
                report.dead_letter_reasons[reason] = report.dead_letter_reasons.get(reason,
                                                                                    0) + 1
            for tp, offset in offsets.items():
                positions[tp] = offset.offset
            meter.record(len(messages), seconds, lag=_lag(consumer, positions),
                         **out.summary)
        if unconfirmed:
            owned = consumer.assignment()
            _commit_sync(consumer, {tp: o for tp, o in unconfirmed.items() if tp in owned})
    finally:
        report.seconds = time.perf_counter() - began
        report.rows_per_s = report.consumed / busy_s if busy_s > 0 else 0.0
        report.partitions = sorted(assigned)
        if on_batch is not None:
            meter.remove_listener(on_batch)


def _commit_failed(offsets: Mapping[Any, Any], result: Any) -> None:
    """Callback of an asynchronous offset commit: log a failure (the batch replays)."""
    if isinstance(result, BaseException):
        log.warning("offset commit failed (%s); the batch's output may be written twice "
                    "after a restart or rebalance", result)


def _commit_sync(consumer: Any, offsets: Mapping[Any, Any]) -> None:
    """Commit ``offsets`` and wait; a rebalance in between only means a replay."""
    from kafka.errors import CommitFailedError

    if not offsets:
        return
    try:
        consumer.commit(dict(offsets), timeout_ms=MAX_BLOCK_MS)
    except CommitFailedError as exc:
        # The partitions moved to another detector, which will process the batch
        # again: a duplicate, as at-least-once allows.
        log.warning("offset commit failed after a rebalance (%s); the batch's output may "
                    "be written twice", exc)


def _abortable(exc: BaseException) -> bool:
    """True for transaction errors after which abort-and-replay is safe (not fencing)."""
    from kafka import errors

    names = ("ProducerFencedError", "InvalidProducerEpochError",
             "TransactionalIdAuthorizationFailedError", "FencedInstanceIdError")
    fatal = tuple(getattr(errors, n) for n in names if hasattr(errors, n))
    return not isinstance(exc, fatal)


def _lag(consumer: Any, positions: Mapping[Any, int]) -> int | None:
    """Messages behind the high watermark on the assigned partitions (None if unknown)."""
    total, known = 0, False
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        position = positions.get(tp)
        if high is not None and position is not None:
            total += max(high - position, 0)
            known = True
    return total if known else None


# --- reading a topic back ----------------------------------------------------------------


@dataclass(frozen=True)
class TopicMessage:
    """One message read back by :func:`read_topic`."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def json(self) -> Any:
        """The value decoded as JSON."""
        return json.loads(self.value) if self.value is not None else None


def read_topic(
    settings: Settings,
    topic: str,
    *,
    max_messages: int | None = None,
    timeout_s: float = 10.0,
    isolation_level: str = "read_committed",
    last: bool = False,
) -> list[TopicMessage]:
    """Read a topic from the beginning (or its last messages) up to its current end, bounded.

    Args:
        settings: the course settings.
        topic: the topic to read.
        max_messages: stop after this many messages. Default: None (to the end).
        timeout_s: stop after this long even if the end was not reached. Default: 10.
        isolation_level: ``read_committed`` (skip aborted and open transactions) or
            ``read_uncommitted``. Default: read_committed.
        last: read the last ``max_messages`` messages instead of the first. Default: False.

    Returns:
        The messages, each partition's in offset order (no group, nothing committed);
        with ``last``, the newest ``max_messages`` of all partitions by timestamp.

    Raises:
        KafkaModeError: the broker is unreachable or the topic does not exist.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = _connect(settings, KafkaConsumer, group_id=None, enable_auto_commit=False,
                        isolation_level=isolation_level, fetch_max_wait_ms=100,
                        allow_auto_create_topics=False)
    out: list[TopicMessage] = []
    try:
        deadline = time.monotonic() + timeout_s
        # kafka-python answers an empty set for an unknown topic; a topic created a
        # moment ago may take a little while to show up in the metadata.
        settle = min(deadline, time.monotonic() + 3.0)
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < settle:
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise KafkaModeError(f"topic {topic!r} does not exist at "
                                 f"{settings.bootstrap_servers}; create it with "
                                 "`python -m bankcourse kafka topics` or produce first")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps, timeout_ms=int(timeout_s * 1000))
        if last and max_messages is not None:
            starts = consumer.beginning_offsets(tps, timeout_ms=int(timeout_s * 1000))
            for tp in tps:
                consumer.seek(tp, max(starts[tp], ends[tp] - max_messages))
        else:
            consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends.get(tp, 0) > 0}
        for tp in list(remaining):
            if consumer.position(tp, timeout_ms=int(timeout_s * 1000)) >= ends[tp]:
                remaining.discard(tp)
        while remaining and time.monotonic() < deadline:
            if max_messages is not None and not last and len(out) >= max_messages:
                break
            polled = consumer.poll(timeout_ms=200)
            for batch in polled.values():
                for m in batch:
                    out.append(TopicMessage(m.topic, m.partition, m.offset, m.timestamp,
                                            m.key, m.value, list(m.headers or [])))
            for tp in list(remaining):
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        if remaining:
            log.warning("read_topic %s stopped at the %g s timeout before the end of "
                        "partitions %s", topic, timeout_s, sorted(tp.partition for tp in
                                                                  remaining))
    finally:
        consumer.close(autocommit=False, timeout_ms=5_000)
    if max_messages is None:
        return out
    if last:
        return sorted(out, key=lambda m: (m.timestamp_ms, m.partition, m.offset))[
            -max_messages:]
    return out[:max_messages]


def read_json(settings: Settings, topic: str, **kwargs: Any) -> list[Any]:
    """:func:`read_topic`, each value decoded as JSON."""
    return [m.json() for m in read_topic(settings, topic, **kwargs)]


# --- command line ------------------------------------------------------------------------


_TOPIC_ROLES = {
    "transactions": "topic_transactions",
    "alerts": "topic_alerts",
    "processed": "topic_processed",
    "dead-letter": "topic_dead_letter",
}


def _cli_settings() -> Settings:
    """Settings from the environment; kafka-python's own INFO lines only with -v."""
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)
        # Its I/O thread warns when it waits for the GIL, which is expected while a
        # batch is processed.
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    return Settings.from_env()


def _failed(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _cli_topics(args: argparse.Namespace) -> int:
    settings = _cli_settings()
    try:
        ensure_topics(settings)
    except KafkaModeError as exc:
        return _failed(exc)
    for role, name in _TOPIC_ROLES.items():
        print(f"{role:>12}: {getattr(settings, name)}")
    return 0


def _cli_produce(args: argparse.Namespace) -> int:
    settings = _cli_settings()
    try:
        report = produce(settings, args.input, rows=args.rows, seed=args.seed,
                         max_messages=args.max_messages, rate_per_s=args.rate,
                         duration_s=args.duration_s,
                         progress=False if args.no_progress else None)
    except KafkaModeError as exc:
        return _failed(exc)
    print(f"produced {report.messages} messages to {report.topic} in {report.seconds:.2f} s "
          f"({report.rate_per_s:,.0f} txn/s; stopped: {report.stopped_because})")
    return 0


def _cli_detect(args: argparse.Namespace) -> int:
    settings = _cli_settings()
    if args.idle_timeout_s is not None and args.idle_timeout_s <= 0:
        args.idle_timeout_s = None
    try:
        report = detect(settings, mode=args.mode, group=args.group,
                        instance_id=args.instance_id, max_messages=args.max_messages,
                        idle_timeout_s=args.idle_timeout_s, duration_s=args.duration_s,
                        max_batch_rows=args.batch_rows,
                        latency_warmup_s=args.latency_warmup_s)
    except KafkaModeError as exc:
        return _failed(exc)
    if args.json:
        print(json.dumps(report.to_dict()), flush=True)
    else:
        lat = latency_percentiles(report.latencies_ms)
        print(f"{report.mode} detector {report.instance_id}: consumed {report.consumed} "
              f"(valid {report.valid}, dead letters {report.dead_letters}), "
              f"alerts {report.alerts}, partitions {report.partitions}, "
              f"{report.rows_per_s:,.0f} txn/s, latency p50 {lat['p50_ms']:.1f} ms "
              f"p99 {lat['p99_ms']:.1f} ms; stopped: {report.stopped_because}")
    return 0


def _cli_tail(args: argparse.Namespace) -> int:
    settings = _cli_settings()
    topic = getattr(settings, _TOPIC_ROLES[args.topic]) if args.topic in _TOPIC_ROLES \
        else args.topic
    try:
        messages = read_topic(settings, topic, max_messages=args.n, timeout_s=args.timeout_s,
                              isolation_level="read_uncommitted" if args.read_uncommitted
                              else "read_committed", last=not args.first)
    except KafkaModeError as exc:
        return _failed(exc)
    for m in messages:
        text = m.value.decode("utf-8", errors="replace") if m.value is not None else ""
        print(text)
    print(f"{len(messages)} message(s) from {topic}", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def register_cli(subparsers: Any) -> None:
    """Add the ``kafka`` command group: ``topics``, ``produce``, ``detect``, ``tail``."""
    kafka = subparsers.add_parser(
        "kafka", help="stage 2: produce to Kafka, run the detector, read topics",
        description="Kafka mode. The broker address and topic names come from the "
                    "BANKCOURSE_* environment (see bankcourse.settings).")
    sub = kafka.add_subparsers(dest="kafka_command", metavar="ACTION", required=True)

    topics = sub.add_parser("topics", help="create the course's topics if missing")
    topics.set_defaults(func=_cli_topics)

    prod = sub.add_parser("produce", help="stream a dataset into the transactions topic")
    prod.add_argument("--input", type=Path, default=None,
                      help="dataset file (default: the generated dataset of --rows rows)")
    prod.add_argument("--rows", type=_positive_int, default=200_000,
                      help="rows of the generated dataset (default: 200000)")
    prod.add_argument("--seed", type=int, default=42, help="generator seed (default: 42)")
    prod.add_argument("--max-messages", type=_positive_int, default=None,
                      help="stop after this many messages")
    prod.add_argument("--rate", type=float, default=None,
                      help="messages per second (default: as fast as possible)")
    prod.add_argument("--duration-s", type=float, default=None,
                      help="stop after this many seconds")
    prod.add_argument("--no-progress", action="store_true", help="no progress bar")
    prod.set_defaults(func=_cli_produce)

    det = sub.add_parser("detect", help="run the fraud detector in a consumer group",
                         description="Consume transactions, write fraud-alerts, "
                                     "processed-transactions and dead letters. Run several "
                                     "with the same --group to share the partitions.")
    det.add_argument("--mode", choices=MODES, default="at-least-once",
                     help="delivery guarantee (default: at-least-once)")
    det.add_argument("--group", default=DEFAULT_GROUP,
                     help=f"consumer group (default: {DEFAULT_GROUP})")
    det.add_argument("--instance-id", default=None,
                     help="stable id of this detector: a restart with the same id takes "
                          "over at once (default: host-pid-random)")
    det.add_argument("--max-messages", type=_positive_int, default=None,
                     help="stop after this many input messages")
    det.add_argument("--idle-timeout-s", type=float, default=10.0,
                     help="stop when no message came for this long; 0 for never "
                          "(then give --max-messages or --duration-s) (default: 10)")
    det.add_argument("--duration-s", type=float, default=None,
                     help="stop after this many seconds")
    det.add_argument("--batch-rows", type=_positive_int, default=DEFAULT_BATCH_ROWS,
                     help=f"most messages per poll batch (default: {DEFAULT_BATCH_ROWS})")
    det.add_argument("--latency-warmup-s", type=float, default=0.0,
                     help="leave transactions produced in the first this many seconds "
                          "out of the latency figures (default: 0)")
    det.add_argument("--json", action="store_true", help="print the report as JSON")
    det.set_defaults(func=_cli_detect)

    tail = sub.add_parser("tail", help="print the last N messages of a topic (bounded)")
    tail.add_argument("topic", help="transactions, alerts, processed, dead-letter, or a "
                                    "topic name")
    tail.add_argument("-n", type=_positive_int, default=10,
                      help="how many messages (default: 10)")
    tail.add_argument("--timeout-s", type=float, default=10.0,
                      help="give up after this long (default: 10)")
    tail.add_argument("--first", action="store_true",
                      help="the first N messages instead of the last N")
    tail.add_argument("--read-uncommitted", action="store_true",
                      help="also show messages of open or aborted transactions")
    tail.set_defaults(func=_cli_tail)
