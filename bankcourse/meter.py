"""Throughput and batch metrics, shared by the three stages and the dashboard.

Every stage works in batches: file mode reads a chunk of the file, the Kafka
detector handles one poll, Spark runs one micro-batch. After each batch the stage
calls :meth:`ThroughputMeter.record`, which

* computes the batch's rows per second and the running totals,
* logs one INFO line in a fixed, greppable format::

      stage=file batch=3 rows=200000 seconds=0.152 rows_per_s=1315789 total=600000 \
alerts=1234 fraud=210 lag=-

* and hands a :class:`BatchMetrics` to every listener (the live dashboard subscribes
  with :meth:`ThroughputMeter.add_listener`).

:func:`summarise_frame` and :func:`summarise_records` count a batch's alerts, fraud,
types and fired rules, so a stage can write
``meter.record(len(frame), seconds, **summarise_frame(frame, flags))``.

Usage::

    meter = ThroughputMeter("file").start()
    meter.add_listener(print)
    for frame in frames:
        began = time.perf_counter()
        flags = rules.evaluate_frame(frame)
        meter.record(len(frame), time.perf_counter() - began, **summarise_frame(frame, flags))
    print(meter.summary())
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bankcourse import rules, schema

log = logging.getLogger(__name__)

Listener = Callable[["BatchMetrics"], Any]
"""A function called with each :class:`BatchMetrics`; its return value is ignored."""

LATEST_ALERTS = 5
"""How many of a batch's alerts :func:`summarise_frame` keeps in ``latest_alerts``."""


@dataclass(frozen=True)
class BatchMetrics:
    """What one batch (file chunk, Kafka poll, Spark micro-batch) did.

    Attributes:
        stage: which stage produced it: ``file``, ``kafka``, ``spark`` or another name.
        batch: the batch number, from 1.
        rows: transactions in this batch.
        seconds: how long the batch took.
        rows_per_s: ``rows / seconds`` (0.0 when ``seconds`` is 0).
        total_rows: transactions so far, this batch included.
        alerts: transactions of this batch on which at least one rule fired.
        fraud: transactions of this batch labelled ``isFraud == 1``.
        by_type: transactions of this batch per ``type``.
        by_rule: how often each rule fired in this batch.
        latest_alerts: a few of this batch's alerts as JSON-ready dicts
            (:data:`bankcourse.rules.ALERT_FIELDS`).
        lag: consumer lag in messages after the batch, when the stage knows it
            (Kafka, Spark). Default: None.
        wall_time: when the batch was recorded, as ``time.time()``.
    """

    stage: str
    batch: int
    rows: int
    seconds: float
    rows_per_s: float
    total_rows: int
    alerts: int = 0
    fraud: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_rule: dict[str, int] = field(default_factory=dict)
    latest_alerts: list[dict[str, Any]] = field(default_factory=list)
    lag: int | None = None
    wall_time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """The metrics as a plain dict (JSON-ready)."""
        return asdict(self)

    def log_line(self) -> str:
        """The batch as the meter logs it: ``key=value`` pairs in a fixed order."""
        return (
            f"stage={self.stage} batch={self.batch} rows={self.rows} "
            f"seconds={self.seconds:.3f} rows_per_s={self.rows_per_s:.0f} "
            f"total={self.total_rows} alerts={self.alerts} fraud={self.fraud} "
            f"lag={'-' if self.lag is None else self.lag}"
        )

    def __repr__(self) -> str:
        rules_fired = ", ".join(f"{k}={v}" for k, v in self.by_rule.items() if v)
        return (
            f"BatchMetrics({self.log_line()} rules[{rules_fired}] "
            f"latest_alerts={len(self.latest_alerts)})"
        )


class ThroughputMeter:
    """Rows per second per batch and overall, with listeners for live displays.

    Args:
        stage: the stage name written into every :class:`BatchMetrics`. Default: ``file``.
        clock: a monotonic clock in seconds. Default: ``time.perf_counter``.
        history: how many recent :class:`BatchMetrics` :attr:`history` keeps. Default: 1000.
        log_batches: log one INFO line per batch. Default: True.

    ``record(rows)`` without ``seconds`` times the batch as the time since the previous
    ``record`` (or :meth:`start`), which suits a loop that records once per batch.
    """

    def __init__(
        self,
        stage: str = "file",
        *,
        clock: Callable[[], float] = time.perf_counter,
        history: int = 1000,
        log_batches: bool = True,
    ) -> None:
        self.stage = stage
        self._clock = clock
        self._listeners: list[Listener] = []
        self.log_batches = log_batches
        self.history: deque[BatchMetrics] = deque(maxlen=history)
        self._lock = threading.Lock()  # record() may come from a listener thread (Spark)
        self._reset()

    def _reset(self) -> None:
        self._started: float | None = None
        self._last: float | None = None
        self.batches = 0
        self.total_rows = 0
        self.total_alerts = 0
        self.total_fraud = 0
        self.busy_s = 0.0
        self.by_rule: dict[str, int] = {}
        self.by_type: dict[str, int] = {}
        self.history.clear()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> ThroughputMeter:
        """Reset the counts and start the clock; returns the meter for chaining."""
        self._reset()
        self._started = self._last = self._clock()
        log.info("stage=%s meter started", self.stage)
        return self

    @property
    def started(self) -> bool:
        """True once :meth:`start` (or a first :meth:`record`) has run."""
        return self._started is not None

    def add_listener(self, listener: Listener) -> Listener:
        """Call ``listener(metrics)`` after every batch; returns it (usable as a decorator)."""
        self._listeners.append(listener)
        return listener

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; no error if it was not registered."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    # --- recording -------------------------------------------------------------------

    def record(
        self,
        rows: int,
        seconds: float | None = None,
        *,
        alerts: int = 0,
        fraud: int = 0,
        by_type: Mapping[str, int] | None = None,
        by_rule: Mapping[str, int] | None = None,
        latest_alerts: Sequence[Mapping[str, Any]] | None = None,
        lag: int | None = None,
    ) -> BatchMetrics:
        """Record one batch and tell the listeners.

        Args:
            rows: transactions in the batch.
            seconds: how long the batch took; None means the time since the previous
                ``record`` or :meth:`start`.
            alerts, fraud, by_type, by_rule, latest_alerts, lag: the batch's counts,
                as :func:`summarise_frame` returns them; see :class:`BatchMetrics`.

        Returns:
            The batch's :class:`BatchMetrics`.
        """
        if int(rows) < 0:
            raise ValueError(f"rows must be >= 0, got {rows}")
        with self._lock:
            metrics = self._add(int(rows), seconds, alerts, fraud, by_type, by_rule,
                                latest_alerts, lag)
        if self.log_batches:
            log.info(
                "stage=%s batch=%d rows=%d seconds=%.3f rows_per_s=%.0f total=%d "
                "alerts=%d fraud=%d lag=%s",
                metrics.stage, metrics.batch, metrics.rows, metrics.seconds,
                metrics.rows_per_s, metrics.total_rows, metrics.alerts, metrics.fraud,
                "-" if metrics.lag is None else metrics.lag,
            )
        for listener in list(self._listeners):
            try:
                listener(metrics)
            except Exception:  # a broken display must not stop the stream
                log.warning("stage=%s listener %r failed; the stream goes on",
                            self.stage, listener, exc_info=True)
        return metrics

    def _add(
        self,
        rows: int,
        seconds: float | None,
        alerts: int,
        fraud: int,
        by_type: Mapping[str, int] | None,
        by_rule: Mapping[str, int] | None,
        latest_alerts: Sequence[Mapping[str, Any]] | None,
        lag: int | None,
    ) -> BatchMetrics:
        now = self._clock()
        if self._started is None:
            self._started = self._last = now
        if seconds is None:
            seconds = now - (self._last if self._last is not None else now)
        self._last = now
        seconds = max(float(seconds), 0.0)
        self.batches += 1
        self.total_rows += rows
        self.total_alerts += int(alerts)
        self.total_fraud += int(fraud)
        self.busy_s += seconds
        by_rule = {k: int(v) for k, v in (by_rule or {}).items()}
        by_type = {k: int(v) for k, v in (by_type or {}).items()}
        _add_counts(self.by_rule, by_rule)
        _add_counts(self.by_type, by_type)
        metrics = BatchMetrics(
            stage=self.stage,
            batch=self.batches,
            rows=rows,
            seconds=seconds,
            rows_per_s=rows / seconds if seconds > 0 else 0.0,
            total_rows=self.total_rows,
            alerts=int(alerts),
            fraud=int(fraud),
            by_type=by_type,
            by_rule=by_rule,
            latest_alerts=[dict(a) for a in (latest_alerts or ())],
            lag=None if lag is None else int(lag),
        )
        self.history.append(metrics)
        return metrics

    # --- overall figures -------------------------------------------------------------

    @property
    def uptime_s(self) -> float:
        """Seconds since :meth:`start` (0.0 before it)."""
        return 0.0 if self._started is None else self._clock() - self._started

    @property
    def rows_per_s(self) -> float:
        """Overall throughput: total rows over the uptime (wall clock, overheads included)."""
        uptime = self.uptime_s
        return self.total_rows / uptime if uptime > 0 else 0.0

    @property
    def busy_rows_per_s(self) -> float:
        """Total rows over the summed batch seconds (the work itself, no idle time)."""
        return self.total_rows / self.busy_s if self.busy_s > 0 else 0.0

    @property
    def last(self) -> BatchMetrics | None:
        """The most recent batch, or None before the first."""
        return self.history[-1] if self.history else None

    def summary(self) -> dict[str, Any]:
        """Overall figures: batches, total_rows, uptime_s, rows_per_s, busy_s, and so on."""
        per_batch = [m.rows_per_s for m in self.history if m.seconds > 0]
        return {
            "stage": self.stage,
            "batches": self.batches,
            "total_rows": self.total_rows,
            "uptime_s": self.uptime_s,
            "rows_per_s": self.rows_per_s,
            "busy_s": self.busy_s,
            "busy_rows_per_s": self.busy_rows_per_s,
            "min_batch_rows_per_s": min(per_batch) if per_batch else math.nan,
            "max_batch_rows_per_s": max(per_batch) if per_batch else math.nan,
            "alerts": self.total_alerts,
            "fraud": self.total_fraud,
            "by_rule": dict(self.by_rule),
            "by_type": dict(self.by_type),
        }

    def __repr__(self) -> str:
        return (
            f"ThroughputMeter(stage={self.stage!r}, batches={self.batches}, "
            f"total_rows={self.total_rows}, uptime_s={self.uptime_s:.3f}, "
            f"rows_per_s={self.rows_per_s:.0f})"
        )


def _add_counts(into: dict[str, int], counts: Mapping[str, int]) -> None:
    for key, value in counts.items():
        into[key] = into.get(key, 0) + int(value)


# --- counting a batch ----------------------------------------------------------------


def alert_dicts(alerts: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of :func:`bankcourse.rules.alerts_frame` as JSON-ready dicts.

    ``event_time`` becomes ISO text ending in Z, numbers become Python numbers.
    """
    out = []
    for rec in alerts.to_dict(orient="records"):
        rec = {k: rec.get(k) for k in rules.ALERT_FIELDS}
        if rec["event_time"] is not None and not pd.isna(rec["event_time"]):
            rec["event_time"] = schema.format_event_time(rec["event_time"])
        rec["rules"] = list(rec["rules"])
        for key in ("amount",):
            if isinstance(rec[key], (np.floating, float)):
                rec[key] = float(rec[key])
        if isinstance(rec["step"], np.integer):
            rec["step"] = int(rec["step"])
        out.append(rec)
    return out


def summarise_frame(
    frame: pd.DataFrame,
    flags: pd.DataFrame,
    *,
    alerts: pd.DataFrame | None = None,
    latest: int = LATEST_ALERTS,
) -> dict[str, Any]:
    """Count one batch for :meth:`ThroughputMeter.record`.

    Args:
        frame: the batch's valid transactions.
        flags: ``rules.evaluate_frame(frame, ...)``.
        alerts: ``rules.alerts_frame(frame, flags)`` if already built (saves work).
        latest: how many alerts to keep in ``latest_alerts`` (the last ones). Default: 5.

    Returns:
        A dict with ``alerts``, ``fraud``, ``by_type``, ``by_rule`` and ``latest_alerts``.
    """
    hit = flags.to_numpy().any(axis=1) if len(flags.columns) else np.zeros(len(flags), bool)
    by_rule = {name: int(flags[name].to_numpy().sum()) for name in flags.columns}
    fraud = 0
    if "isFraud" in frame.columns:
        fraud = int((pd.to_numeric(frame["isFraud"], errors="coerce") == 1).sum())
    by_type: dict[str, int] = {}
    if "type" in frame.columns and len(frame):
        counts = frame["type"].value_counts(sort=False, dropna=True)
        by_type = {str(k): int(v) for k, v in counts.items() if v}
    latest_alerts: list[dict[str, Any]] = []
    n_alerts = int(hit.sum())
    if latest > 0 and n_alerts:
        if alerts is None:
            tail = np.flatnonzero(hit)[-latest:]
            alerts = rules.alerts_frame(frame.iloc[tail], flags.iloc[tail])
        latest_alerts = alert_dicts(alerts.tail(latest))
    return {
        "alerts": n_alerts,
        "fraud": fraud,
        "by_type": by_type,
        "by_rule": by_rule,
        "latest_alerts": latest_alerts,
    }


def summarise_records(
    records: Iterable[Mapping[str, Any]],
    fired: Iterable[Sequence[str]],
    *,
    latest: int = LATEST_ALERTS,
) -> dict[str, Any]:
    """Count one batch of records (Kafka mode) for :meth:`ThroughputMeter.record`.

    Args:
        records: the batch's valid records, as :func:`bankcourse.schema.clean_record` gives.
        fired: for each record, ``rules.evaluate_record(record, ...)``.
        latest: how many alerts to keep in ``latest_alerts`` (the last ones). Default: 5.

    Returns:
        The same keys as :func:`summarise_frame`.
    """
    by_rule = dict.fromkeys(rules.RULE_NAMES, 0)
    by_type: dict[str, int] = {}
    alerts = fraud = 0
    recent: deque[dict[str, Any]] = deque(maxlen=max(latest, 0))
    for record, names in zip(records, fired, strict=True):
        kind = record.get("type")
        if kind is not None:
            by_type[str(kind)] = by_type.get(str(kind), 0) + 1
        if record.get("isFraud") == 1:
            fraud += 1
        if names:
            alerts += 1
            for name in names:
                by_rule[name] = by_rule.get(name, 0) + 1
            if latest > 0:
                recent.append(rules.alert_record(record, names))
    latest_alerts = []
    for alert in recent:
        if alert.get("event_time") is not None and not isinstance(alert["event_time"], str):
            alert["event_time"] = schema.format_event_time(alert["event_time"])
        latest_alerts.append(alert)
    return {
        "alerts": alerts,
        "fraud": fraud,
        "by_type": by_type,
        "by_rule": by_rule,
        "latest_alerts": latest_alerts,
    }
