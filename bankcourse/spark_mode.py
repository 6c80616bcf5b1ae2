"""Stage 3, Spark mode: PySpark Structured Streaming from Kafka to Kafka, and batch.

The streaming detector (:func:`start_detector`, bounded by :func:`run_detector`)

* reads ``settings.topic_transactions`` with Spark's Kafka source;
* parses each message's JSON with the one schema (:mod:`bankcourse.schema`, explicit,
  never inferred) and checks it with Column logic that gives the same reasons as
  :func:`bankcourse.schema.clean_record` (:func:`check_columns`);
* applies the course's rules as Column expressions from :mod:`bankcourse.rules`
  (no Python UDFs);
* writes, in ONE query and so under one checkpoint, every valid transaction with its
  fired rules to ``topic_processed``, an alert (:data:`bankcourse.rules.ALERT_FIELDS`)
  per transaction on which a rule fired to ``topic_alerts``, and every message that is
  not a valid transaction to ``topic_dead_letter`` with the reason (the same envelope
  as Kafka mode's :func:`bankcourse.kafka_mode.dead_letter`). Nothing vanishes:
  messages in = processed + dead letters.

Spark's Kafka sink is at-least-once: after a crash the last micro-batch is replayed
from the checkpoint, so an alert may be written twice but is never lost.

Most of a small micro-batch's time is fixed: planning the query again, writing the
offset and commit logs, launching tasks. ``async_progress=True`` (Spark's
asynchronous progress tracking, micro-batch triggers with the Kafka sink) takes the
two checkpoint writes off that path; the rules are looked up from a small table of
rule combinations (:func:`rule_bits`) rather than filtered per row.

With ``trigger="real-time"`` the same query runs in Spark's real-time mode (Spark
4.1+, ``trigger(realTime=...)``, update output mode): records flow through long-running
tasks instead of waiting for the next micro-batch; the duration given is only how often
it checkpoints. Real-time mode runs stateless queries only, so the windowed count stays
in micro-batches, and the per-batch ``observe`` counts are left out there.

Live metrics come from Spark itself: a ``StreamingQueryListener`` turns each
micro-batch's progress (and the counts the query computes with ``observe``) into a
:class:`bankcourse.meter.BatchMetrics` for the ``on_batch`` callback.

:func:`alert_window_counts` counts alerts per rule per event-time window with a
watermark (late events are dropped, and Spark counts them); :func:`batch_detect` runs
the same logic on a dataset file with ``spark.read``.

Usage::

    spark = get_session(settings)
    report = run_detector(spark, settings, available_now=True, on_batch=print)
    alerts = batch_alerts(spark, dataio.ensure_dataset(settings, fmt="parquet"), settings)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bankcourse import rules, schema
from bankcourse.meter import BatchMetrics, ThroughputMeter
from bankcourse.settings import Settings
from bankcourse.spark_session import (
    SparkSetupError,
    connector_package,
    driver_rss_mb,
    get_session,
    prefetch,
    stop_session,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

__all__ = [
    "SparkSetupError", "connector_package", "driver_rss_mb", "get_session", "prefetch",
    "stop_session",
    "kafka_options", "read_transactions", "parse_messages", "check_columns", "detect",
    "kafka_output", "alert_columns", "alert_window_counts", "start_detector",
    "start_alert_query",
    "run_detector", "start_window_query", "window_counts", "batch_detect", "batch_alerts",
    "run_batch", "SparkStreamReport", "register_cli",
]

log = logging.getLogger(__name__)

DETECTOR_NAME = "bankcourse_detector"
"""The query name of the detector (and its checkpoint folder) by default."""

OBSERVATION = "bankcourse_batch"
"""The name of the per-batch counts the detector computes with ``observe``."""

DEFAULT_WINDOW_S = 60
"""Event-time window of :func:`alert_window_counts`, in seconds."""

DEFAULT_WATERMARK_S = 600
"""How late (event time) an event may be and still be counted, in seconds."""

DEFAULT_ASYNC_CHECKPOINT_MS = 1000
"""How often asynchronous progress tracking writes the offset and commit logs (ms)."""

DEFAULT_REAL_TIME_CHECKPOINT_S = 5
"""Real-time mode's batch duration: how often it checkpoints (not its latency)."""

EVENT_TIME_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'"
"""Spark's pattern for ``schema.format_event_time``'s text (the session is in UTC)."""

LATEST_ALERTS = 5
"""Alerts per micro-batch passed on in ``BatchMetrics.latest_alerts``."""

_NUMERIC = ("int", "float", "flag")


# --- Kafka ----------------------------------------------------------------------------


def kafka_options(settings: Settings) -> dict[str, str]:
    """Options of Spark's Kafka source and sink: bootstrap servers plus security.

    ``settings.kafka_security`` holds kafka-python option names (``security_protocol``,
    ``sasl_mechanism``, ``sasl_plain_username``, ``ssl_cafile``, ...); they are turned
    into the Java client's ``kafka.*`` names.
    """
    options = {"kafka.bootstrap.servers": settings.bootstrap_servers}
    security = dict(settings.kafka_security)
    user = security.pop("sasl_plain_username", None)
    password = security.pop("sasl_plain_password", None)
    cafile = security.pop("ssl_cafile", None)
    for key, value in security.items():
        options["kafka." + key.replace("_", ".")] = str(value)
    if user is not None:
        mechanism = options.get("kafka.sasl.mechanism", "PLAIN").upper()
        module = ("org.apache.kafka.common.security.scram.ScramLoginModule"
                  if mechanism.startswith("SCRAM") else
                  "org.apache.kafka.common.security.plain.PlainLoginModule")
        options["kafka.sasl.jaas.config"] = (
            f'{module} required username="{user}" password="{password or ""}";')
    if cafile is not None:
        options["kafka.ssl.truststore.type"] = "PEM"
        options["kafka.ssl.truststore.location"] = str(cafile)
    return options


def _require_kafka(settings: Settings) -> None:
    """Fail fast, with the fix, when no broker answers (Spark would retry for minutes)."""
    from bankcourse import broker

    try:
        broker.require_running(settings)
    except broker.BrokerError as exc:
        raise SparkSetupError(str(exc)) from exc


def ensure_topics(settings: Settings) -> None:
    """Create the four course topics of ``settings`` if they are missing."""
    from bankcourse import broker

    try:
        broker.ensure_topics(settings)
    except broker.BrokerError as exc:
        raise SparkSetupError(str(exc)) from exc


def read_transactions(
    spark: SparkSession,
    settings: Settings,
    *,
    starting_offsets: str = "earliest",
    max_offsets_per_trigger: int | None = None,
) -> DataFrame:
    """The transactions topic as a streaming DataFrame (Kafka source columns).

    Args:
        spark: the session.
        settings: broker address and ``topic_transactions``.
        starting_offsets: where a NEW query starts: ``earliest`` or ``latest`` (a
            restarted query goes on from its checkpoint). Default: earliest.
        max_offsets_per_trigger: cap of messages per micro-batch. Default: None (all).

    Returns:
        Columns key, value, topic, partition, offset, timestamp, timestampType.
    """
    reader = spark.readStream.format("kafka").options(**kafka_options(settings))
    reader = reader.option("subscribe", settings.topic_transactions) \
        .option("startingOffsets", starting_offsets) \
        .option("failOnDataLoss", "false")
    if max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(int(max_offsets_per_trigger)))
    return reader.load()


# --- parsing and checking -------------------------------------------------------------


def _ddl_types() -> dict[str, str]:
    """Column name to Spark type, read from ``schema.spark_ddl()`` (the one schema)."""
    return {name: kind for name, kind in re.findall(r"`([^`]+)` (\w+)", schema.spark_ddl())}


def text_ddl() -> str:
    """The schema's columns, all as STRING, plus ``_corrupt_record``: how JSON is parsed.

    Parsing every field as text keeps what the typed parse would lose (``"amount":
    "abc"`` and a missing amount both become null there), so :func:`check_columns`
    can give each bad message the same reason as ``schema.clean_record``; the values
    are then cast to the types of ``schema.spark_ddl()``.
    """
    return ", ".join(f"`{name}` STRING" for name in _ddl_types()) + ", `_corrupt_record` STRING"


def _lit(value: Any) -> Column:
    from pyspark.sql import functions as F

    return F.lit(value)


def _first(checks: list[tuple[Column, str]]) -> Column:
    """The message of the first true check (null when none is)."""
    from pyspark.sql import functions as F

    result = None
    for condition, message in checks:
        result = (F.when(condition, _lit(message)) if result is None
                  else result.when(condition, _lit(message)))
    return result if result is not None else F.lit(None).cast("string")


def check_columns(raw: Mapping[str, Column], *, text: bool) -> tuple[dict[str, Column], Column]:
    """Type the schema's columns and find the first problem, as ``schema.clean_record``.

    Args:
        raw: a Column per schema column: text (from JSON or csv) or already typed
            (parquet).
        text: True when the columns are text to be cast.

    Returns:
        ``(typed, reason)``: a typed Column per schema column (``event_time`` as a
        timestamp; a missing balance as null) and a reason Column, null for a valid row.

    Known differences from ``clean_record`` (Column logic cannot see JSON token types):
    a JSON number where text belongs is accepted as text, and as ``event_time`` it is
    read as seconds since 1970; Java number syntax such as ``1d`` is read as a number;
    a whole number too large for INT leaves ``step`` null; text after the closing brace
    of an object is ignored (Python's ``json.loads`` rejects it).
    """
    from pyspark.sql import functions as F

    types = _ddl_types()
    typed: dict[str, Column] = {}
    reasons: list[Column] = []
    for col in schema.COLUMNS:
        value, name = raw[col.name], col.name
        checks: list[tuple[Column, str]] = []
        if col.kind in _NUMERIC:
            if text:
                # Spark gives NaN/Infinity tokens back quoted; strip the quotes.
                number = F.when(value.startswith('"'), F.btrim(value, F.lit('"'))) \
                    .otherwise(value).try_cast("double")
                blank = value.isNull() | (value == "")
                checks.append((~blank & number.isNull(), f"{name}: not a number"))
            else:
                number = value.cast("double")
                blank = value.isNull()
            missing = blank | F.isnan(number)
            if not col.nullable:
                checks.append((missing, f"{name}: missing"))
            ok = ~missing
            checks.append((ok & ((number == math.inf) | (number == -math.inf)),
                           f"{name}: not finite"))
            if col.kind == "float":
                checks.append((ok & (number < 0), f"{name}: negative"))
                typed[name] = F.when(ok, number)
            elif col.kind == "int":
                checks.append((ok & ((number < 1) | (number % 1 != 0)),
                               f"{name}: not a whole number >= 1"))
                typed[name] = F.when(ok, number).try_cast(types[name])
            else:
                checks.append((ok & ~number.isin(0.0, 1.0), f"{name}: must be 0 or 1"))
                typed[name] = F.when(ok, number).try_cast(types[name])
        elif col.kind == "timestamp":
            if text:
                missing = value.isNull() | (value == "")
                stamp = F.when(value.rlike(r"^\d{4}-\d\d-\d\d"), value.try_cast("timestamp"))
                checks += [(missing, f"{name}: missing"),
                           (stamp.isNull(), f"{name}: not a timestamp")]
            else:
                stamp = value.cast("timestamp")
                checks.append((stamp.isNull(), f"{name}: missing"))
            typed[name] = stamp
        else:
            checks.append((value.isNull() | (F.trim(value) == ""), f"{name}: missing"))
            typed[name] = value.cast("string")
        reasons.append(_first(checks))
    reasons.append(F.when(~typed["type"].isin(list(schema.TXN_TYPES)),
                          _lit("type: unknown value")))
    return typed, F.coalesce(*reasons)


def _json_problem(value: Column, parsed: Column) -> Column:
    """Why a message is not a JSON object (null when it is one)."""
    from pyspark.sql import functions as F

    head = F.substring(F.ltrim(value), 1, 1)
    kind = (F.when(head == "[", _lit("list")).when(head == '"', _lit("str"))
            .when(head.isin("t", "f"), _lit("bool")).when(head == "n", _lit("NoneType"))
            .when(value.rlike(r"[.eE]"), _lit("float")).otherwise(_lit("int")))
    corrupt = parsed.isNull() | parsed["_corrupt_record"].isNotNull()
    return (F.when(value.isNull() | (value == ""), _lit("empty message (no value)"))
            .when(corrupt & F.try_parse_json(value).isNotNull(),
                  F.concat(_lit("not a JSON object (got "), kind, _lit(")")))
            .when(corrupt, _lit("not JSON: malformed")))


def _missing_fields(value: Column, raw: Mapping[str, Column]) -> Column:
    """``missing field(s): a, b`` for absent JSON fields (looked up only if one is null)."""
    from pyspark.sql import functions as F

    any_null = F.lit(False)
    for name in schema.NAMES:
        any_null = any_null | raw[name].isNull()
    # json_object_keys reads strict JSON; NaN and Infinity (which Python writes) are
    # replaced by null first, only for the rare message where that matters.
    strict = F.regexp_replace(value, r"(?<![\w\"])-?(NaN|Infinity)(?![\w\"])", "null")
    keys = F.when(any_null, F.coalesce(F.json_object_keys(value),
                                       F.json_object_keys(strict)))
    absent = F.filter(F.array(*[F.when(~F.array_contains(keys, n), _lit(n))
                                for n in schema.NAMES]), lambda x: x.isNotNull())
    return F.when(keys.isNotNull() & (F.size(absent) > 0),
                  F.concat(_lit("missing field(s): "), F.array_join(absent, ", ")))


def _fast_valid(t: Column) -> Column:
    """True when a typed parse (``schema.spark_ddl()``) is a clean, valid transaction."""
    from pyspark.sql import functions as F

    ok = t.isNotNull() & t["_corrupt_record"].isNull()
    for col in schema.COLUMNS:
        value = t[col.name]
        ok = ok & value.isNotNull()
        if col.kind == "float":
            ok = ok & (value >= 0) & (value < math.inf)  # NaN is above +inf in Spark
        elif col.kind == "int":
            ok = ok & (value >= 1)
        elif col.kind == "flag":
            ok = ok & value.isin(0, 1)
        elif col.kind == "timestamp":
            ok = ok & value.between(_lit("0001-01-01").cast("timestamp"),
                                    _lit("9999-12-31 23:59:59.999999").cast("timestamp"))
        else:
            ok = ok & (F.trim(value) != "")
    return ok & t["type"].isin(list(schema.TXN_TYPES))


def parse_messages(messages: DataFrame) -> DataFrame:
    """Parse and check Kafka messages (or any frame with a ``value`` column).

    Each message is parsed with the typed schema, ``schema.spark_ddl()``. When that
    gives a clean, valid transaction (nearly always) it is used as it is; otherwise the
    message is parsed again with every field as text (:func:`text_ddl`) and checked
    by :func:`check_columns`, which finds the reason ``schema.clean_record`` would give
    (the typed parse cannot tell ``"amount": "abc"`` from a missing amount).

    Returns:
        The schema's columns typed, ``reason`` (null when valid), ``raw_value`` (the
        value as it came), ``value_text``, and the Kafka columns of ``messages`` that
        exist (key, topic, partition, offset, timestamp).
    """
    from pyspark.sql import functions as F

    options = {"columnNameOfCorruptRecord": "_corrupt_record", "mode": "PERMISSIVE"}
    value = F.col("value").cast("string")
    kafka_cols = [c for c in ("key", "topic", "partition", "offset", "timestamp")
                  if c in messages.columns]
    typed_parse = F.from_json(value, schema.spark_ddl() + ", `_corrupt_record` STRING",
                              options)
    first = messages.select(*kafka_cols, F.col("value").alias("raw_value"),
                            value.alias("value_text"), typed_parse.alias("_t"))
    first = first.withColumn("_ok", _fast_valid(F.col("_t")))
    text_parse = F.when(~F.col("_ok"), F.from_json(F.col("value_text"), text_ddl(), options))
    second = first.withColumn("_j", text_parse)
    raw = {name: F.col("_j")[name] for name in schema.NAMES}
    typed, column_reason = check_columns(raw, text=True)
    reason = F.coalesce(_json_problem(F.col("value_text"), F.col("_j")),
                        _missing_fields(F.col("value_text"), raw), column_reason)
    return second.select(
        *kafka_cols, "raw_value", "value_text",
        *[F.when(F.col("_ok"), F.col("_t")[n]).otherwise(c).alias(n) for n, c in typed.items()],
        F.when(~F.col("_ok"), reason).alias(schema.REASON_COLUMN))


RULE_BITS = "_rule_bits"
"""A hidden column of :func:`detect` with ``keep_bits``: bit ``i`` set when rule ``i``
(in ``rules.RULE_NAMES`` order) fired."""


def rule_bits(thresholds: Any = None) -> Column:
    """An integer Column: bit ``i`` is set when ``rules.RULE_NAMES[i]`` fires on the row.

    The conditions are ``rules.spark_flags`` (defined once in :mod:`bankcourse.rules`);
    a null condition (a missing balance) counts as not fired, as in
    ``rules.spark_rules_fired``.
    """
    from pyspark.sql import functions as F

    flags = rules.spark_flags(thresholds)
    bits = F.lit(0)
    for i, name in enumerate(rules.RULE_NAMES):
        bits = bits.bitwiseOR(F.when(flags[name], F.lit(1 << i)).otherwise(F.lit(0)))
    return bits


def _by_bits(bits: Column) -> tuple[Column, Column]:
    """The fired rule names and the severity for a :func:`rule_bits` Column.

    Every combination of rules is listed once, as literals computed from
    :mod:`bankcourse.rules` (``rules.severity_of``), and looked up by index: the same
    result as ``rules.spark_rules_fired`` / ``rules.spark_severity``, without the
    per-row array filter (a higher-order function, which Spark does not compile).
    """
    from pyspark.sql import functions as F

    names = list(rules.RULE_NAMES)
    combos = [[n for i, n in enumerate(names) if code >> i & 1]
              for code in range(1 << len(names))]
    fired = F.array(*[F.array(*[_lit(n) for n in combo]).cast("array<string>")
                      for combo in combos])
    severity = F.array(*[_lit(rules.severity_of(combo)).cast("string") for combo in combos])
    index = bits + 1
    return F.element_at(fired, index), F.element_at(severity, index)


def detect(checked: DataFrame, thresholds: Any = None, *, keep_bits: bool = False) -> DataFrame:
    """Add ``rules`` (fired rule names, empty for invalid rows) and ``severity``.

    Args:
        checked: output of :func:`parse_messages` or :func:`check_frame`.
        thresholds: the rule thresholds. Default: ``Thresholds()``.
        keep_bits: also keep :data:`RULE_BITS` (cheap per-rule counts). Default: False.
    """
    from pyspark.sql import functions as F

    valid = F.col(schema.REASON_COLUMN).isNull()
    detected = checked.withColumn(RULE_BITS, F.when(valid, rule_bits(thresholds))
                                  .otherwise(F.lit(0)))
    fired, severity = _by_bits(F.col(RULE_BITS))
    detected = detected.withColumn("rules", fired).withColumn("severity", severity)
    return detected if keep_bits else detected.drop(RULE_BITS)


def _event_time_text() -> Column:
    from pyspark.sql import functions as F

    return F.date_format(F.col("event_time"), EVENT_TIME_FORMAT)


def alert_columns() -> list[Column]:
    """The :data:`bankcourse.rules.ALERT_FIELDS` as Columns of a detected frame."""
    from pyspark.sql import functions as F

    source = {"account": F.col("nameOrig"), "event_time": _event_time_text()}
    return [source.get(name, F.col(name)).alias(name) for name in rules.ALERT_FIELDS]


def _to_json(columns: list[Column]) -> Column:
    from pyspark.sql import functions as F

    return F.to_json(F.struct(*columns), {"ignoreNullFields": "false"})


def _dead_letter_value() -> Column:
    """The dead-letter envelope, as Kafka mode writes it (``DEAD_LETTER_FIELDS``)."""
    from pyspark.sql import functions as F

    return _to_json([
        F.col(schema.REASON_COLUMN).alias("reason"),
        F.col("topic"), F.col("partition"), F.col("offset"),
        F.unix_millis(F.col("timestamp")).alias("timestamp_ms"),
        F.col("key").cast("string").alias("key"),
        F.col("value_text").alias("original"),
        F.base64(F.col("raw_value")).alias("original_base64"),
    ])


def kafka_output(detected: DataFrame, settings: Settings) -> DataFrame:
    """Rows for the Kafka sink (topic, key, value): processed, alerts, dead letters.

    Each input message gives a processed record and, if a rule fired, an alert; or,
    if invalid, one dead letter: one row per output, each with its own ``topic``, so
    ONE query writes all three topics in one pass over the input. ``detected`` must
    keep ``raw_value`` (the bytes).
    """
    from pyspark.sql import functions as F

    valid = F.col(schema.REASON_COLUMN).isNull()
    # event_time as text once, for both the processed record and the alert.
    detected = detected.withColumn("_event_time_text", _event_time_text())
    text = {"event_time": F.col("_event_time_text")}
    processed = [text.get(n, F.col(n)).alias(n) for n in (*schema.NAMES, "rules", "severity")]
    alert = {"account": F.col("nameOrig"), **text}
    alert_cols = [alert.get(n, F.col(n)).alias(n) for n in rules.ALERT_FIELDS]
    account = F.col("nameOrig").cast("binary")
    outputs = F.array(
        F.when(valid, F.struct(_lit(settings.topic_processed).alias("topic"),
                               F.col("key").alias("key"),
                               _to_json(processed).alias("value"))),
        F.when(valid & (F.size("rules") > 0),
               F.struct(_lit(settings.topic_alerts).alias("topic"), account.alias("key"),
                        _to_json(alert_cols).alias("value"))),
        F.when(~valid, F.struct(_lit(settings.topic_dead_letter).alias("topic"),
                                F.col("key").alias("key"),
                                _dead_letter_value().alias("value"))),
    )
    # explode then drop the nulls: a filter() lambda would not be compiled by Spark.
    return detected.select(F.explode(outputs).alias("o")).where(F.col("o").isNotNull()) \
        .select("o.topic", "o.key", "o.value")


def _observed_counts(detected: DataFrame) -> DataFrame:
    """Attach the per-batch counts the metrics listener reads (Spark's ``observe``).

    ``detected`` must come from :func:`detect` with ``keep_bits=True``.
    """
    from pyspark.sql import functions as F

    valid = F.col(schema.REASON_COLUMN).isNull()
    bits = F.col(RULE_BITS)
    alert = bits != 0
    metrics = [
        F.count_if(valid).alias("valid"),
        F.count_if(~valid).alias("dead_letters"),
        F.count_if(alert).alias("alerts"),
        F.count_if(valid & (F.col("isFraud") == 1)).alias("fraud"),
        *[F.count_if(valid & (F.col("type") == t)).alias(f"type:{t}") for t in schema.TXN_TYPES],
        *[F.count_if(bits.bitwiseAND(F.lit(1 << i)) != 0).alias(f"rule:{n}")
          for i, n in enumerate(rules.RULE_NAMES)],
        # The alerts as structs (made into dicts by the listener): no JSON per row.
        F.max_by(F.when(alert, F.struct(*alert_columns())),
                 F.when(alert, F.col("offset")), LATEST_ALERTS).alias("latest_alerts"),
    ]
    return detected.observe(OBSERVATION, *metrics)


def _alert_dict(alert: Any) -> dict[str, Any]:
    """One of ``latest_alerts`` (a Row, or JSON text) as a plain dict."""
    if isinstance(alert, str | bytes):
        return json.loads(alert)
    value = alert.asDict(recursive=True) if hasattr(alert, "asDict") else dict(alert)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}


# --- metrics from Spark's listener ----------------------------------------------------


def _offsets_lag(source: Any) -> int | None:
    """Messages behind the end of the topic after a batch, from a source's progress."""
    try:
        end = json.loads(source.endOffset)
        latest = json.loads(source.latestOffset)
    except (TypeError, ValueError, AttributeError):
        return None
    if not isinstance(end, dict) or not isinstance(latest, dict):
        return None
    lag = 0
    for topic, parts in latest.items():
        for part, offset in parts.items():
            lag += max(int(offset) - int(end.get(topic, {}).get(part, offset)), 0)
    return lag


def _listener_class() -> type:
    from pyspark.sql.streaming import StreamingQueryListener

    class ProgressListener(StreamingQueryListener):
        """Turns one query's progress events into BatchMetrics via a ThroughputMeter."""

        def __init__(self, name: str, meter: ThroughputMeter) -> None:
            super().__init__()
            self.name = name
            self.meter = meter
            self.last_batch_id = -1
            self.progress: list[dict[str, Any]] = []
            self.totals = {"rows": 0, "valid": 0, "dead_letters": 0, "alerts": 0}
            self.terminated = threading.Event()
            self.exception: str | None = None
            self._lock = threading.Lock()

        def onQueryStarted(self, event: Any) -> None:
            pass

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            self.exception = self.exception or getattr(event, "exception", None)

        def onQueryProgress(self, event: Any) -> None:
            p = event.progress
            if p.name != self.name:
                return
            try:
                self._record(p)
            except Exception:  # a listener must never break the query
                log.warning("spark metrics listener failed on batch %s", p.batchId,
                            exc_info=True)

        def _record(self, p: Any) -> None:
            with self._lock:
                if p.batchId <= self.last_batch_id and p.numInputRows == 0:
                    return
                self.last_batch_id = max(self.last_batch_id, p.batchId)
                rows = int(p.numInputRows)
                seconds = (p.durationMs or {}).get("triggerExecution", 0) / 1000.0
                observed = (p.observedMetrics or {}).get(OBSERVATION)
                counts = observed.asDict() if observed is not None else {}
                self.progress.append({
                    "batch_id": p.batchId, "rows": rows,
                    "input_rows_per_s": p.inputRowsPerSecond,
                    "processed_rows_per_s": p.processedRowsPerSecond,
                    "duration_ms": dict(p.durationMs or {}), "timestamp": p.timestamp,
                    **{k: v for k, v in counts.items() if k != "latest_alerts"},
                })
                if rows == 0:
                    return
                self.totals["rows"] += rows
                for key in ("valid", "dead_letters", "alerts"):
                    self.totals[key] += int(counts.get(key) or 0)
                latest = [_alert_dict(a) for a in (counts.get("latest_alerts") or [])
                          if a is not None]
                lag = _offsets_lag(p.sources[0]) if p.sources else None
                self.meter.record(
                    rows, seconds,
                    alerts=int(counts.get("alerts") or 0),
                    fraud=int(counts.get("fraud") or 0),
                    by_type={t: int(counts.get(f"type:{t}") or 0) for t in schema.TXN_TYPES},
                    by_rule={n: int(counts.get(f"rule:{n}") or 0) for n in rules.RULE_NAMES},
                    latest_alerts=latest[::-1],
                    lag=lag,
                )

    return ProgressListener


def metrics_listener(name: str, meter: ThroughputMeter) -> Any:
    """A StreamingQueryListener feeding ``meter`` from the progress of query ``name``.

    Register it with ``spark.streams.addListener`` before starting the query; each
    micro-batch with input becomes one :meth:`ThroughputMeter.record` (so one INFO line
    and one :class:`BatchMetrics` for the meter's listeners).
    """
    return _listener_class()(name, meter)


# --- the streaming detector -----------------------------------------------------------


def default_checkpoint_dir(settings: Settings, name: str) -> Path:
    """Where query ``name`` keeps its checkpoint by default."""
    return Path(settings.cache_dir) / "spark" / "checkpoints" / name


def sink_producer_options(trigger: str = "available-now") -> dict[str, str]:
    """Producer options of the detector's Kafka sink.

    Spark flushes the producer at the end of every micro-batch task, so in micro-batch
    triggers a long linger only fills batches (fewer, larger requests to the broker);
    in real-time mode records are sent as they come and the linger is latency.
    Compression stays off: the broker is on the loopback here and compressing costs CPU.
    """
    return {"kafka.linger.ms": "2" if trigger == "real-time" else "20",
            "kafka.batch.size": str(512 * 1024), "kafka.compression.type": "none"}


def _trigger(writer: Any, trigger: str, interval_s: float | None) -> Any:
    if trigger == "available-now":
        return writer.trigger(availableNow=True)
    if trigger == "processing-time":
        return writer.trigger(processingTime=f"{interval_s or 0} seconds")
    if trigger == "real-time":
        seconds = int(interval_s or DEFAULT_REAL_TIME_CHECKPOINT_S)
        return writer.trigger(realTime=f"{seconds} seconds")
    raise ValueError(f"trigger must be available-now, processing-time or real-time, "
                     f"got {trigger!r}")


def start_detector(
    spark: SparkSession,
    settings: Settings,
    *,
    checkpoint_dir: str | Path | None = None,
    trigger: str = "available-now",
    interval_s: float | None = None,
    starting_offsets: str = "earliest",
    max_offsets_per_trigger: int | None = None,
    query_name: str = DETECTOR_NAME,
    meter: ThroughputMeter | None = None,
    on_batch: Callable[[BatchMetrics], Any] | None = None,
    async_progress: bool = False,
    async_checkpoint_interval_ms: int = DEFAULT_ASYNC_CHECKPOINT_MS,
) -> tuple[StreamingQuery, Any]:
    """Start the Kafka-to-Kafka detector query. The caller must stop it (``finally``).

    Args:
        spark: the session (:func:`get_session`).
        settings: broker, topics and thresholds.
        checkpoint_dir: the query's checkpoint. Default:
            ``settings.cache_dir/spark/checkpoints/<query_name>``.
        trigger: ``available-now`` (process what is there, then stop),
            ``processing-time`` (micro-batches every ``interval_s``, 0 = back to back)
            or ``real-time`` (Spark 4.1+ real-time mode; ``interval_s`` is its
            checkpoint interval). Default: available-now.
        interval_s: see ``trigger``. Default: None.
        starting_offsets: ``earliest`` or ``latest`` for a new checkpoint. Default: earliest.
        max_offsets_per_trigger: cap of messages per micro-batch. Default: None.
        query_name: the query's name (unique among running queries).
            Default: ``bankcourse_detector``.
        meter: the meter that metrics are recorded into. Default: a new
            ``ThroughputMeter("spark")``.
        on_batch: called with a :class:`BatchMetrics` after each micro-batch.
        async_progress: with ``processing-time``, write the offset and commit logs in
            the background (Spark's asynchronous progress tracking, Kafka sink only):
            a micro-batch no longer waits for two checkpoint files, which is most of
            its fixed cost; after a crash up to ``async_checkpoint_interval_ms`` of
            input is processed again (still at least once). Default: False.
        async_checkpoint_interval_ms: how often progress is checkpointed then.
            Default: :data:`DEFAULT_ASYNC_CHECKPOINT_MS`.

    Returns:
        ``(query, listener)``; ``listener.meter`` has the running figures. Remove the
        listener with ``spark.streams.removeListener(listener)`` when done.
    """
    _require_kafka(settings)
    ensure_topics(settings)
    checkpoint = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(
        settings, query_name)
    messages = read_transactions(spark, settings, starting_offsets=starting_offsets,
                                 max_offsets_per_trigger=max_offsets_per_trigger)
    detected = detect(parse_messages(messages), settings.thresholds,
                      keep_bits=trigger != "real-time")
    if trigger != "real-time":
        detected = _observed_counts(detected)
    out = kafka_output(detected, settings)
    meter = meter if meter is not None else ThroughputMeter("spark")
    if on_batch is not None:
        meter.add_listener(on_batch)
    listener = metrics_listener(query_name, meter)
    spark.streams.addListener(listener)
    writer = out.writeStream.format("kafka").options(**kafka_options(settings)) \
        .option("checkpointLocation", str(checkpoint)).queryName(query_name) \
        .options(**sink_producer_options(trigger))
    if trigger == "real-time":
        writer = writer.outputMode("update")
    if async_progress:
        if trigger != "processing-time":
            raise ValueError("async_progress needs trigger='processing-time' (Spark refuses "
                             f"it with {trigger})")
        writer = writer.option("asyncProgressTrackingEnabled", "true") \
            .option("asyncProgressTrackingCheckpointIntervalMs",
                    str(int(async_checkpoint_interval_ms)))
    writer = _trigger(writer, trigger, interval_s)
    meter.start()
    try:
        query = writer.start()
    except Exception:
        spark.streams.removeListener(listener)
        raise
    log.info("spark detector started: name=%s trigger=%s source=%s checkpoint=%s",
             query_name, trigger, settings.topic_transactions, checkpoint)
    return query, listener


@dataclass
class SparkStreamReport:
    """What one bounded :func:`run_detector` run did.

    Attributes:
        query_name, trigger, checkpoint_dir: how it ran.
        batches: micro-batches with input.
        rows: messages read; ``rows == valid + dead_letters``.
        valid, dead_letters, alerts: counts from the query's own ``observe`` metrics.
        seconds: wall time from start to stop; rows_per_s: rows / seconds.
        by_rule, by_type: totals from the metrics.
        driver_rss_mb: the driver JVM's resident memory at the end.
        progress: Spark's progress of every batch (batch id, rows, rates, durations).
    """

    query_name: str
    trigger: str
    checkpoint_dir: str
    batches: int = 0
    rows: int = 0
    valid: int = 0
    dead_letters: int = 0
    alerts: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    by_rule: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    driver_rss_mb: float | None = None
    progress: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as a plain dict."""
        return asdict(self)

    def __str__(self) -> str:
        return (f"spark detector {self.query_name}: rows={self.rows} valid={self.valid} "
                f"dead_letters={self.dead_letters} alerts={self.alerts} "
                f"batches={self.batches} seconds={self.seconds:.2f} "
                f"rows_per_s={self.rows_per_s:.0f}")


def _await_listener(listener: Any, query: StreamingQuery, timeout_s: float = 10.0) -> None:
    """Wait (bounded) until the asynchronous listener has seen the query's last batch."""
    last = query.lastProgress
    if not last:
        return
    deadline = time.monotonic() + timeout_s
    while listener.last_batch_id < last["batchId"] and time.monotonic() < deadline:
        time.sleep(0.05)


def run_detector(
    spark: SparkSession,
    settings: Settings,
    *,
    available_now: bool = True,
    duration_s: float | None = None,
    timeout_s: float = 600.0,
    checkpoint_dir: str | Path | None = None,
    reset: bool = False,
    **options: Any,
) -> SparkStreamReport:
    """Run the detector, bounded, and stop it in ``finally``.

    Args:
        spark: the session.
        settings: broker, topics and thresholds.
        available_now: process what is in the topic, then stop. With False, run
            micro-batches (or ``trigger="real-time"`` in ``options``) for ``duration_s``.
            Default: True.
        duration_s: how long to run when not ``available_now``. Default: None, which
            means 30 seconds.
        timeout_s: the longest an available-now run may take. Default: 600.
        checkpoint_dir: see :func:`start_detector`.
        reset: delete the checkpoint first (start again from ``starting_offsets``).
            Default: False.
        options: more keyword arguments of :func:`start_detector`.

    Returns:
        A :class:`SparkStreamReport`.
    """
    name = options.get("query_name", DETECTOR_NAME)
    checkpoint = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(settings,
                                                                                    name)
    if reset and checkpoint.exists():
        shutil.rmtree(checkpoint)
    trigger = "available-now" if available_now else options.pop("trigger", "processing-time")
    options.pop("trigger", None)
    began = time.perf_counter()
    query, listener = start_detector(spark, settings, checkpoint_dir=checkpoint,
                                     trigger=trigger, **options)
    try:
        if available_now:
            if not query.awaitTermination(timeout_s):
                log.warning("spark detector %s did not finish within %.0f s; stopping it",
                            name, timeout_s)
        else:
            query.awaitTermination(30.0 if duration_s is None else float(duration_s))
    finally:
        query.stop()
        _await_listener(listener, query)
        spark.streams.removeListener(listener)
        if options.get("on_batch") is not None:
            listener.meter.remove_listener(options["on_batch"])
    seconds = time.perf_counter() - began
    error = query.exception()
    if error is not None:
        raise RuntimeError(f"the Spark detector {name} failed: {error}")
    meter = listener.meter
    report = SparkStreamReport(
        query_name=name, trigger=trigger, checkpoint_dir=str(checkpoint),
        batches=meter.batches, rows=listener.totals["rows"], valid=listener.totals["valid"],
        dead_letters=listener.totals["dead_letters"], alerts=listener.totals["alerts"],
        seconds=seconds, rows_per_s=listener.totals["rows"] / seconds if seconds else 0.0,
        by_rule=dict(meter.by_rule), by_type=dict(meter.by_type),
        driver_rss_mb=driver_rss_mb(spark), progress=list(listener.progress),
    )
    log.info("spark detector done: name=%s rows=%d valid=%d dead_letters=%d alerts=%d "
             "batches=%d seconds=%.3f rows_per_s=%.0f", name, report.rows, report.valid,
             report.dead_letters, report.alerts, report.batches, report.seconds,
             report.rows_per_s)
    return report


def start_alert_query(
    spark: SparkSession,
    settings: Settings,
    *,
    sink: str = "memory",
    query_name: str = "bankcourse_alerts",
    checkpoint_dir: str | Path | None = None,
    starting_offsets: str = "earliest",
    trigger: str = "available-now",
    interval_s: float | None = None,
) -> StreamingQuery:
    """Start a teaching query: the alerts (ALERT_FIELDS) to the memory or console sink.

    Args:
        sink: ``memory`` (query ``spark.table(query_name)``) or ``console``.
            Default: memory.
        query_name: the query's (and memory table's) name. Default: ``bankcourse_alerts``.
        checkpoint_dir: Default: a temporary one, deleted when the query stops.
        starting_offsets: Default: earliest.
        trigger, interval_s: see :func:`start_detector`. Default: available-now.

    Returns:
        The running query; stop it in a ``finally``.
    """
    from pyspark.sql import functions as F

    _require_kafka(settings)
    messages = read_transactions(spark, settings, starting_offsets=starting_offsets)
    detected = detect(parse_messages(messages), settings.thresholds)
    alerts = detected.where(F.col(schema.REASON_COLUMN).isNull() & (F.size("rules") > 0)) \
        .select(*alert_columns())
    writer = alerts.writeStream.outputMode("append").format(sink).queryName(query_name)
    if sink == "console":
        writer = writer.option("truncate", "false")
    if checkpoint_dir:
        writer = writer.option("checkpointLocation", str(checkpoint_dir))
    query = _trigger(writer, trigger, interval_s).start()
    log.info("spark alert query started: name=%s sink=%s", query_name, sink)
    return query


# --- windowed counts ------------------------------------------------------------------


def alert_window_counts(detected: DataFrame, *, window_s: int = DEFAULT_WINDOW_S,
                        watermark_s: int = DEFAULT_WATERMARK_S) -> DataFrame:
    """Alerts per rule per event-time window, with a watermark on ``event_time``.

    Args:
        detected: a (streaming) frame from :func:`detect`.
        window_s: window length in seconds. Default: 60.
        watermark_s: how far behind the latest event time an event may arrive and still
            be counted; older events are dropped (and counted by Spark in the query's
            ``stateOperators[..].numRowsDroppedByWatermark``). Default: 600.

    Returns:
        Columns window_start, window_end, rule, alerts.
    """
    from pyspark.sql import functions as F

    alerts = detected.where(F.col(schema.REASON_COLUMN).isNull() & (F.size("rules") > 0)) \
        .select("event_time", F.explode("rules").alias("rule")) \
        .withWatermark("event_time", f"{int(watermark_s)} seconds")
    return alerts.groupBy(F.window("event_time", f"{int(window_s)} seconds").alias("w"),
                          "rule") \
        .agg(F.count(F.lit(1)).alias("alerts")) \
        .select(F.col("w.start").alias("window_start"), F.col("w.end").alias("window_end"),
                "rule", "alerts")


def start_window_query(
    spark: SparkSession,
    settings: Settings,
    *,
    sink: str = "memory",
    query_name: str = "bankcourse_alert_windows",
    window_s: int = DEFAULT_WINDOW_S,
    watermark_s: int = DEFAULT_WATERMARK_S,
    checkpoint_dir: str | Path | None = None,
    starting_offsets: str = "earliest",
    trigger: str = "processing-time",
    interval_s: float | None = None,
) -> StreamingQuery:
    """Start the windowed alert count from Kafka (update mode). The caller stops it.

    Args:
        sink: ``memory`` (a table named ``query_name``; see :func:`window_counts`) or
            ``console``. Default: memory.
        query_name: the query's (and memory table's) name.
            Default: ``bankcourse_alert_windows``.
        window_s, watermark_s: see :func:`alert_window_counts`.
        checkpoint_dir: Default: a temporary one, deleted when the query stops.
        starting_offsets: Default: earliest.
        trigger, interval_s: see :func:`start_detector` (no real-time: it is stateful).

    Returns:
        The running query.
    """
    _require_kafka(settings)
    messages = read_transactions(spark, settings, starting_offsets=starting_offsets)
    detected = detect(parse_messages(messages), settings.thresholds)
    counts = alert_window_counts(detected, window_s=window_s, watermark_s=watermark_s)
    writer = counts.writeStream.outputMode("update").format(sink).queryName(query_name)
    if sink == "console":
        writer = writer.option("truncate", "false")
    if checkpoint_dir:
        writer = writer.option("checkpointLocation", str(checkpoint_dir))
    writer = _trigger(writer, trigger, interval_s)
    query = writer.start()
    log.info("spark window query started: name=%s sink=%s window_s=%d watermark_s=%d",
             query_name, sink, window_s, watermark_s)
    return query


def window_counts(spark: SparkSession, table: str = "bankcourse_alert_windows") -> DataFrame:
    """The current counts of a memory-sink window query (update mode appends each
    batch's changed windows; counts only grow, so the latest is the largest)."""
    from pyspark.sql import functions as F

    return spark.table(table).groupBy("window_start", "window_end", "rule") \
        .agg(F.max("alerts").alias("alerts")).orderBy("window_start", "rule")


# --- batch mode -----------------------------------------------------------------------


def check_frame(frame: DataFrame, *, text: bool) -> DataFrame:
    """Check a batch frame with the schema's columns; adds ``reason`` (null when valid)."""
    from pyspark.sql import functions as F

    schema.require_columns(frame.columns, "the dataset")
    typed, reason = check_columns({n: F.col(n) for n in schema.NAMES}, text=text)
    return frame.select(*[c.alias(n) for n, c in typed.items()],
                        reason.alias(schema.REASON_COLUMN))


def read_dataset(spark: SparkSession, path: str | Path) -> DataFrame:
    """Read a course dataset with ``spark.read`` and check it (adds ``reason``).

    csv and csv.gz are read as text (no inference) and cast like JSON messages;
    parquet keeps its types; JSON lines go through the same parsing as Kafka messages.
    """
    from bankcourse import dataio

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; create it with "
                                f"`python -m bankcourse generate` or dataio.ensure_dataset")
    fmt = dataio.detect_format(path)
    if fmt == "parquet":
        return check_frame(spark.read.parquet(str(path)), text=False)
    if fmt in ("csv", "csv.gz"):
        frame = spark.read.option("header", "true").option("inferSchema", "false") \
            .option("mode", "PERMISSIVE").csv(str(path))
        return check_frame(frame, text=True)
    return parse_messages(spark.read.text(str(path)))


def batch_detect(spark: SparkSession, path: str | Path, settings: Settings) -> DataFrame:
    """The dataset with ``reason``, ``rules`` and ``severity`` (lazy; nothing runs yet)."""
    return detect(read_dataset(spark, path), settings.thresholds)


def batch_alerts(spark: SparkSession, path: str | Path, settings: Settings) -> DataFrame:
    """The dataset's alerts with :data:`bankcourse.rules.ALERT_FIELDS` columns."""
    from pyspark.sql import functions as F

    detected = batch_detect(spark, path, settings)
    return detected.where(F.col(schema.REASON_COLUMN).isNull() & (F.size("rules") > 0)) \
        .select(*alert_columns())


BATCH_FORMATS = ("json", "parquet")
"""Formats :func:`run_batch` writes alerts in: JSON lines (readable) or parquet (cheaper)."""


def run_batch(spark: SparkSession, path: str | Path, settings: Settings,
              out_dir: str | Path | None = None, *, fmt: str = "json") -> dict[str, Any]:
    """Batch mode: detect on a dataset file and write the alerts (Spark part files).

    Columnar from end to end: ``spark.read``, the checks and the rules as Column
    expressions, the counts gathered by ``observe`` in the same pass as the write.

    Args:
        spark: the session.
        path: the dataset (csv.gz, csv, parquet or jsonl).
        settings: thresholds; ``data_dir`` for the default output.
        out_dir: where ``alerts/`` and ``quarantine/`` are written (replaced).
            Default: ``settings.data_dir / "spark_batch"``.
        fmt: ``json`` (JSON lines) or ``parquet``. Default: json.

    Returns:
        Counts (rows, valid, quarantined, alerts, by_rule), seconds and rows_per_s.
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    if fmt not in BATCH_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(BATCH_FORMATS)}, got {fmt!r}")
    out = Path(out_dir) if out_dir is not None else Path(settings.data_dir) / "spark_batch"
    began = time.perf_counter()
    detected = detect(read_dataset(spark, path), settings.thresholds, keep_bits=True)
    valid = F.col(schema.REASON_COLUMN).isNull()
    bits = F.col(RULE_BITS)
    observation = Observation("bankcourse_batch_counts")
    observed = detected.observe(
        observation, F.count(F.lit(1)).alias("rows"), F.count_if(valid).alias("valid"),
        F.count_if(bits != 0).alias("alerts"),
        *[F.count_if(bits.bitwiseAND(F.lit(1 << i)) != 0).alias(n)
          for i, n in enumerate(rules.RULE_NAMES)])
    observed.where(bits != 0).select(*alert_columns()) \
        .write.mode("overwrite").format(fmt).save(str(out / "alerts"))
    counts = observation.get
    quarantined = int(counts["rows"]) - int(counts["valid"])
    if quarantined:
        detected.where(~valid).drop(RULE_BITS).write.mode("overwrite").format(fmt) \
            .save(str(out / "quarantine"))
    seconds = time.perf_counter() - began
    report = {
        "source": str(path), "out_dir": str(out), "rows": int(counts["rows"]),
        "valid": int(counts["valid"]), "quarantined": quarantined,
        "alerts": int(counts["alerts"]),
        "by_rule": {n: int(counts[n]) for n in rules.RULE_NAMES},
        "seconds": seconds, "rows_per_s": counts["rows"] / seconds if seconds else 0.0,
    }
    log.info("spark batch done: source=%s rows=%d valid=%d quarantined=%d alerts=%d "
             "seconds=%.3f rows_per_s=%.0f", path, report["rows"], report["valid"],
             quarantined, report["alerts"], seconds, report["rows_per_s"])
    return report


# --- command line ---------------------------------------------------------------------


def _cli_settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env()


def _cli_prefetch(args: argparse.Namespace) -> int:
    settings = _cli_settings(args)
    try:
        jars = prefetch(settings)
    except SparkSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Kafka connector {connector_package()} and {len(jars)} jars cached in "
          f"{jars[0].parent if jars else '?'}")
    return 0


def _cli_stream(args: argparse.Namespace) -> int:
    settings = _cli_settings(args)
    if not args.available_now and args.duration_s is None:
        print("error: say how long to run: --available-now or --duration-s SECONDS",
              file=sys.stderr)
        return 2
    try:
        spark = get_session(settings)
    except SparkSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        report = run_detector(
            spark, settings, available_now=args.available_now, duration_s=args.duration_s,
            checkpoint_dir=args.checkpoint_dir, reset=args.reset,
            trigger="real-time" if args.real_time else "processing-time",
            starting_offsets=args.starting_offsets,
            max_offsets_per_trigger=args.max_offsets_per_trigger,
            async_progress=args.async_progress and not args.available_now
            and not args.real_time,
            on_batch=(lambda m: print(m.log_line(), flush=True)) if args.print_batches
            else None,
        )
    except SparkSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    print(report)
    return 0


def _cli_batch(args: argparse.Namespace) -> int:
    settings = _cli_settings(args)
    try:
        spark = get_session(settings)
    except SparkSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        report = run_batch(spark, args.path, settings, args.out_dir)
    except (FileNotFoundError, schema.SchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    print(json.dumps(report, indent=2))
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``spark prefetch|stream|batch`` to the course's command line."""
    parser = subparsers.add_parser(
        "spark", help="stage 3: PySpark Structured Streaming, Kafka to Kafka, and batch",
        description="Run the fraud rules with Spark: a bounded streaming detector from "
                    "the transactions topic to the alerts, processed and dead-letter "
                    "topics, or a batch run on a dataset file.")
    actions = parser.add_subparsers(dest="spark_command", metavar="ACTION", required=True)
    p = actions.add_parser("prefetch", help="download the Spark Kafka connector into the cache")
    p.set_defaults(func=_cli_prefetch)

    p = actions.add_parser("stream", help="run the streaming detector (bounded)")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--available-now", action="store_true",
                       help="process what is in the topic now, then stop")
    bound.add_argument("--duration-s", type=float, default=None,
                       help="run micro-batches for this many seconds, then stop")
    p.add_argument("--real-time", action="store_true",
                   help="with --duration-s: use Spark's real-time mode (trigger realTime)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="checkpoint folder (default: under the cache dir)")
    p.add_argument("--reset", action="store_true", help="delete the checkpoint first")
    p.add_argument("--starting-offsets", choices=("earliest", "latest"), default="earliest",
                   help="where a new checkpoint starts (default earliest)")
    p.add_argument("--max-offsets-per-trigger", type=int, default=None,
                   help="cap of messages per micro-batch (default: no cap)")
    p.add_argument("--async-progress", action="store_true",
                   help="with --duration-s (micro-batches): checkpoint progress in the "
                        "background (lower latency; Spark's asynchronous progress tracking)")
    p.add_argument("--print-batches", action="store_true", help="print one line per batch")
    p.set_defaults(func=_cli_stream)

    p = actions.add_parser("batch", help="detect on a dataset file with spark.read")
    p.add_argument("path", help="a .csv.gz, .csv, .parquet or .jsonl dataset")
    p.add_argument("--out-dir", default=None,
                   help="where alerts/ and quarantine/ go (default: data/spark_batch)")
    p.set_defaults(func=_cli_batch)


def unique_name(prefix: str = "bankcourse") -> str:
    """A query name that no other running query has (for notebooks and tests)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"
