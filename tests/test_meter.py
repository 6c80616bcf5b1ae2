"""The throughput meter and the batch summaries every stage reports."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from bankcourse import generator, rules, schema
from bankcourse.meter import BatchMetrics, ThroughputMeter, summarise_frame, summarise_records


class FakeClock:
    """A clock the test moves by hand, so the meter's arithmetic can be checked exactly."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_rows_per_second_is_computed_per_batch_and_overall(clock: FakeClock) -> None:
    meter = ThroughputMeter("file", clock=clock).start()
    clock.now += 2.0
    first = meter.record(1000, 0.5)
    clock.now += 2.0
    second = meter.record(3000, 1.5)

    assert first.rows_per_s == pytest.approx(2000.0)
    assert second.rows_per_s == pytest.approx(2000.0)
    assert (first.batch, second.batch) == (1, 2)
    assert (first.total_rows, second.total_rows) == (1000, 4000)
    assert meter.uptime_s == pytest.approx(4.0)
    assert meter.rows_per_s == pytest.approx(1000.0)  # 4000 rows over 4 s of uptime
    assert meter.busy_rows_per_s == pytest.approx(2000.0)  # 4000 rows over 2 s of work
    assert meter.summary()["total_rows"] == 4000


def test_a_batch_without_seconds_is_timed_from_the_previous_batch(clock: FakeClock) -> None:
    meter = ThroughputMeter("kafka", clock=clock).start()
    clock.now += 0.25
    first = meter.record(500)
    clock.now += 1.0
    second = meter.record(100)

    assert first.seconds == pytest.approx(0.25)
    assert first.rows_per_s == pytest.approx(2000.0)
    assert second.seconds == pytest.approx(1.0)
    assert second.stage == "kafka"


def test_a_batch_of_zero_seconds_reports_zero_rows_per_second(clock: FakeClock) -> None:
    meter = ThroughputMeter(clock=clock).start()
    assert meter.record(10, 0.0).rows_per_s == 0.0
    assert meter.rows_per_s == 0.0


def test_start_resets_the_counts(clock: FakeClock) -> None:
    meter = ThroughputMeter(clock=clock).start()
    meter.record(10, 1.0, by_rule={"HIGH_AMOUNT": 2})
    meter.start()
    assert (meter.batches, meter.total_rows, meter.by_rule, meter.last) == (0, 0, {}, None)


def test_listeners_receive_every_batch_and_a_failing_one_does_not_stop_the_stream(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    meter = ThroughputMeter(clock=clock).start()
    seen: list[BatchMetrics] = []

    def broken(metrics: BatchMetrics) -> None:
        raise RuntimeError("display went away")

    meter.add_listener(broken)
    meter.add_listener(seen.append)
    with caplog.at_level(logging.WARNING, logger="bankcourse.meter"):
        meter.record(5, 1.0)
        meter.record(7, 1.0)
    meter.remove_listener(seen.append)
    meter.record(9, 1.0)

    assert [m.rows for m in seen] == [5, 7]
    assert "display went away" in caplog.text


def test_each_batch_logs_one_info_line_in_the_fixed_format(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    meter = ThroughputMeter("spark", clock=clock).start()
    with caplog.at_level(logging.INFO, logger="bankcourse.meter"):
        meter.record(1000, 2.0, alerts=3, fraud=1, lag=42)

    lines = [r.getMessage() for r in caplog.records if "batch=" in r.getMessage()]
    assert lines == ["stage=spark batch=1 rows=1000 seconds=2.000 rows_per_s=500 total=1000 "
                     "alerts=3 fraud=1 lag=42"]
    assert meter.last is not None and meter.last.log_line() == lines[0]


def test_counts_per_rule_and_type_add_up_over_batches(clock: FakeClock) -> None:
    meter = ThroughputMeter(clock=clock).start()
    meter.record(10, 1.0, alerts=2, by_rule={"HIGH_AMOUNT": 2}, by_type={"TRANSFER": 4})
    meter.record(10, 1.0, alerts=1, by_rule={"HIGH_AMOUNT": 1, "BALANCE_DRAIN": 1},
                 by_type={"TRANSFER": 1, "PAYMENT": 9})
    summary = meter.summary()
    assert summary["alerts"] == 3
    assert summary["by_rule"] == {"HIGH_AMOUNT": 3, "BALANCE_DRAIN": 1}
    assert summary["by_type"] == {"TRANSFER": 5, "PAYMENT": 9}


def test_batch_metrics_repr_is_one_readable_line(clock: FakeClock) -> None:
    meter = ThroughputMeter(clock=clock).start()
    metrics = meter.record(100, 0.5, alerts=1, by_rule={"HIGH_AMOUNT": 1},
                           latest_alerts=[{"txn_id": "T1"}])
    text = repr(metrics)
    assert "rows=100" in text and "HIGH_AMOUNT=1" in text and "\n" not in text
    assert metrics.to_dict()["latest_alerts"] == [{"txn_id": "T1"}]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generator.generate_frame(5000, seed=3)


def test_summarise_frame_counts_match_the_rule_flags(frame: pd.DataFrame) -> None:
    flags = rules.evaluate_frame(frame)
    summary = summarise_frame(frame, flags)

    assert summary["by_rule"] == {name: int(flags[name].sum()) for name in rules.RULE_NAMES}
    assert summary["alerts"] == int(flags.any(axis=1).sum())
    assert summary["fraud"] == int((frame["isFraud"] == 1).sum())
    assert summary["by_type"] == frame["type"].value_counts().to_dict()
    last = rules.alerts_frame(frame, flags).iloc[-1]
    latest = summary["latest_alerts"]
    assert len(latest) == 5
    assert tuple(latest[-1]) == rules.ALERT_FIELDS
    assert latest[-1]["txn_id"] == last["txn_id"]
    assert latest[-1]["event_time"].endswith("Z")


def test_summarise_records_agrees_with_summarise_frame(frame: pd.DataFrame) -> None:
    flags = rules.evaluate_frame(frame)
    records = []
    for raw in frame.assign(event_time=frame["event_time"].map(schema.format_event_time)
                            ).to_dict(orient="records"):
        record, reason = schema.clean_record(raw)
        assert reason is None
        records.append(record)
    fired = [rules.evaluate_record(r) for r in records]

    from_records = summarise_records(records, fired)
    from_frame = summarise_frame(frame, flags)

    assert from_records == from_frame
