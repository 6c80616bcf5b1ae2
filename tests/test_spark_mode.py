"""Spark mode against a real local Spark and the course's real Kafka broker.

Every streaming query here is bounded (``availableNow``, ``processAllAvailable`` or a
time limit) and stopped in a ``finally``. Each test uses topics of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bankcourse import generator, kafka_mode, rules, schema, spark_mode, spark_session
from bankcourse.meter import BatchMetrics
from bankcourse.settings import Settings

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[1]


# --- helpers --------------------------------------------------------------------------


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes ``python -m bankcourse`` use ``settings``."""
    return {**os.environ, **settings.to_env(), **extra}


def _file_mode_alerts(path: Path, settings: Settings, out_dir: Path) -> dict[str, dict]:
    from bankcourse import file_mode

    report = file_mode.run_file_mode(path, settings, out_dir)
    with open(report.alerts_path, encoding="utf-8") as lines:
        return {a["txn_id"]: a for a in map(json.loads, lines)}


def _by_txn(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["txn_id"]: a for a in alerts}


# --- the session ----------------------------------------------------------------------


def test_the_session_has_the_connector_of_pyspark_s_own_version_and_small_settings(
        spark: Any) -> None:
    conf = spark.sparkContext.getConf()
    version = spark_session.pyspark_version()
    assert spark.version == version
    assert conf.get("spark.jars.packages") == \
        f"org.apache.spark:spark-sql-kafka-0-10_2.13:{version}"
    assert f"spark-sql-kafka-0-10_2.13-{version}.jar" in conf.get("spark.jars")
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    assert conf.get("spark.ui.enabled") == "false"
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark_session.driver_rss_mb(spark) > 0


def test_a_connector_of_another_spark_version_is_refused_with_the_fix() -> None:
    with pytest.raises(spark_session.SparkSetupError) as error:
        spark_session.check_packages(
            "io.delta:delta-spark_2.13:4.0.0,"
            "org.apache.spark:spark-sql-kafka-0-10_2.13:3.5.1", "4.2.0")
    message = str(error.value)
    assert "3.5.1" in message and "4.2.0" in message
    assert "org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0" in message
    spark_session.check_packages("org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0", "4.2.0")


def _run_cli(args: list[str], env: dict[str, str], timeout_s: float = 60) -> \
        subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bankcourse", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def test_a_bogus_java_home_is_reported_before_spark_starts(settings: Settings) -> None:
    env = _env(settings, JAVA_HOME="/nonexistent/jdk")
    result = _run_cli(["spark", "prefetch"], env)
    assert result.returncode == 1
    assert "JAVA_HOME is '/nonexistent/jdk'" in result.stderr
    assert "Java 17+" in result.stderr


def test_a_mismatched_connector_in_pyspark_submit_args_is_refused(settings: Settings) -> None:
    env = _env(settings, PYSPARK_SUBMIT_ARGS="--packages "
               "org.apache.spark:spark-sql-kafka-0-10_2.12:3.5.1 pyspark-shell")
    result = _run_cli(["spark", "prefetch"], env)
    assert result.returncode == 1
    assert "does not match PySpark" in result.stderr
    assert "PYSPARK_SUBMIT_ARGS" in result.stderr


# --- the streaming detector -----------------------------------------------------------


@pytest.mark.kafka
def test_kafka_stream_gives_file_mode_s_alerts_and_reports_every_micro_batch(
        spark: Any, topics: Settings, scratch: Path) -> None:
    path = generator.write_dataset(scratch / "tx.csv.gz", 4_000, seed=21)
    kafka_mode.produce(topics, path, progress=False)
    batches: list[BatchMetrics] = []

    report = spark_mode.run_detector(spark, topics, checkpoint_dir=scratch / "ck",
                                     max_offsets_per_trigger=1_500, on_batch=batches.append)

    expected = _file_mode_alerts(path, topics, scratch / "file")
    streamed = _by_txn(kafka_mode.read_json(topics, topics.topic_alerts))
    assert streamed == expected and len(expected) > 0
    assert report.rows == report.valid == 4_000 and report.dead_letters == 0
    assert report.alerts == len(expected)
    processed = kafka_mode.read_json(topics, topics.topic_processed)
    assert len(processed) == 4_000
    assert {p["txn_id"]: p["rules"] for p in processed if p["rules"]} == \
        {k: a["rules"] for k, a in expected.items()}
    # Spark's listener turned each micro-batch's progress into BatchMetrics.
    assert len(batches) >= 3 and all(b.stage == "spark" for b in batches)
    assert sum(b.rows for b in batches) == 4_000
    assert sum(b.alerts for b in batches) == len(expected)
    counted = {n: sum(b.by_rule.get(n, 0) for b in batches) for n in rules.RULE_NAMES}
    assert counted == {n: sum(n in a["rules"] for a in expected.values())
                       for n in rules.RULE_NAMES}
    assert all(len(b.latest_alerts) <= 5 for b in batches)
    assert all(a["txn_id"] in expected for b in batches for a in b.latest_alerts)
    assert batches[-1].lag == 0


@pytest.mark.kafka
def test_the_memory_sink_shows_the_same_alerts_for_teaching(
        spark: Any, topics: Settings, scratch: Path) -> None:
    frame = generator.generate_frame(1_000, seed=13)
    kafka_mode.produce(topics, frame, progress=False)
    name = spark_mode.unique_name("alerts")
    query = spark_mode.start_alert_query(spark, topics, query_name=name)
    try:
        query.awaitTermination(180)
    finally:
        query.stop()
    shown = spark.table(name).collect()
    expected = rules.alerts_frame(frame, rules.evaluate_frame(frame))
    assert sorted(r.txn_id for r in shown) == sorted(expected["txn_id"])
    assert {r.txn_id: list(r.rules) for r in shown} == dict(
        zip(expected["txn_id"], expected["rules"], strict=True))


BAD_MESSAGES = [
    "not json at all",
    "[1, 2, 3]",
    '{"txn_id": "T1"}',
    "",
]


def _mutations(base: dict[str, Any]) -> list[str]:
    """Transactions broken one field at a time, as JSON text."""
    out = []
    for field_name, value in [("amount", "abc"), ("amount", -5), ("type", "LOAN"),
                              ("step", 0), ("isFraud", 2), ("isFraud", None),
                              ("event_time", "yesterday"), ("nameOrig", "  "),
                              ("amount", float("inf")), ("amount", None),
                              ("oldbalanceOrg", "x")]:
        broken = dict(base, **{field_name: value})
        out.append(json.dumps(broken))
    without = dict(base)
    del without["nameDest"]
    out.append(json.dumps(without))
    return out


@pytest.mark.kafka
def test_malformed_messages_reach_the_dead_letter_topic_with_clean_record_s_reason(
        spark: Any, topics: Settings, scratch: Path) -> None:
    frame = generator.generate_frame(50, seed=5)
    good = [m.decode() for m in kafka_mode.encode_frame(frame)]
    base = json.loads(good[0])
    bad = BAD_MESSAGES + _mutations(base)
    # Valid but unusual: a numeric string, a null balance, NaN balance (Python's JSON).
    odd_valid = [json.dumps(dict(base, amount="12.5", txn_id="T9000000001")),
                 json.dumps(dict(base, oldbalanceOrg=None, txn_id="T9000000002")),
                 json.dumps(dict(base, newbalanceDest=float("nan"), txn_id="T9000000003"))]
    kafka_mode.send_raw(topics, good + bad + odd_valid)

    report = spark_mode.run_detector(spark, topics, checkpoint_dir=scratch / "ck")

    dead = kafka_mode.read_json(topics, topics.topic_dead_letter)
    assert report.rows == len(good) + len(bad) + len(odd_valid)
    assert report.rows == report.valid + report.dead_letters
    assert report.dead_letters == len(dead) == len(bad)
    reasons = {d["original"]: d["reason"] for d in dead}
    for message in bad:
        try:
            expected = schema.clean_record(json.loads(message))[1]
        except ValueError:
            expected = "empty message (no value)" if message == "" else "not JSON"
        assert reasons[message].startswith(expected), message
    assert set(dead[0]) == set(kafka_mode.DEAD_LETTER_FIELDS)
    processed = kafka_mode.read_json(topics, topics.topic_processed)
    assert len(processed) == len(good) + len(odd_valid)


def _wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def _committed_batches(checkpoint: Path) -> int:
    commits = checkpoint / "commits"
    return len([p for p in commits.iterdir() if p.name.isdigit()]) if commits.is_dir() else 0


@pytest.mark.kafka
def test_a_query_stopped_mid_stream_resumes_from_its_checkpoint_without_losing_alerts(
        spark: Any, topics: Settings, scratch: Path) -> None:
    frame = generator.generate_frame(6_000, seed=8)
    kafka_mode.produce(topics, frame, progress=False)
    checkpoint = scratch / "ck"
    expected = rules.alerts_frame(frame, rules.evaluate_frame(frame))

    query, listener = spark_mode.start_detector(
        spark, topics, checkpoint_dir=checkpoint, trigger="processing-time",
        max_offsets_per_trigger=1_000, query_name=spark_mode.unique_name("stop"))
    try:
        _wait_for(lambda: _committed_batches(checkpoint) >= 2, 120, "two micro-batches")
    finally:
        query.stop()
        spark.streams.removeListener(listener)
    partial = kafka_mode.read_json(topics, topics.topic_alerts)
    assert 0 < len({a["txn_id"] for a in partial}) < len(expected)

    spark_mode.run_detector(spark, topics, checkpoint_dir=checkpoint)

    alerts = kafka_mode.read_json(topics, topics.topic_alerts)
    ids = [a["txn_id"] for a in alerts]
    assert set(ids) == set(expected["txn_id"])
    # A clean stop finishes or abandons the running batch; its alerts may be written
    # again on restart (the Kafka sink is at-least-once), never more than one batch.
    assert len(ids) - len(set(ids)) <= 1_000


@pytest.mark.kafka
def test_a_killed_detector_process_restarts_from_its_checkpoint_and_loses_no_alert(
        spark: Any, topics: Settings, scratch: Path) -> None:
    frame = generator.generate_frame(8_000, seed=9)
    kafka_mode.produce(topics, frame, progress=False)
    checkpoint = scratch / "ck"
    expected = rules.alerts_frame(frame, rules.evaluate_frame(frame))
    process = subprocess.Popen(
        [sys.executable, "-m", "bankcourse", "-q", "spark", "stream", "--duration-s", "300",
         "--max-offsets-per-trigger", "500", "--checkpoint-dir", str(checkpoint)],
        env=_env(topics), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        _wait_for(lambda: _committed_batches(checkpoint) >= 2 or process.poll() is not None,
                  240, "the detector process to commit two micro-batches")
        assert process.poll() is None, process.stderr.read()[-3000:]
    finally:
        # SIGKILL the process group we started: Python and its Spark JVM, no clean stop.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        process.stderr.close()
    before = kafka_mode.read_json(topics, topics.topic_alerts)
    assert len({a["txn_id"] for a in before}) < len(expected)

    report = spark_mode.run_detector(spark, topics, checkpoint_dir=checkpoint)

    ids = [a["txn_id"] for a in kafka_mode.read_json(topics, topics.topic_alerts)]
    assert set(ids) == set(expected["txn_id"])
    duplicates = len(ids) - len(set(ids))
    # At-least-once: the batch that was running when the process died is replayed,
    # so its alerts may appear twice; nothing else may.
    assert duplicates <= 500, f"{duplicates} duplicate alerts"
    assert report.rows < len(frame)  # the restart did not start again from the beginning


# --- windows and late data -----------------------------------------------------------


def _alert_events(times: list[str], amount: float = 900_000.0) -> list[str]:
    """Transactions that fire HIGH_AMOUNT only, at the given event times."""
    base = json.loads(kafka_mode.encode_frame(generator.generate_frame(1, seed=1))[0])
    out = []
    for i, when in enumerate(times):
        out.append(json.dumps(dict(base, txn_id=f"T8{i:09d}", type="CASH_IN", amount=amount,
                                   oldbalanceOrg=0.0, newbalanceOrig=amount, isFraud=0,
                                   event_time=when)))
    return out


def _rows(frame: Any) -> pd.DataFrame:
    """Window counts as pandas, window_start in UTC (whatever the local time zone)."""
    from pyspark.sql import functions as F

    rows = frame.select(F.unix_seconds("window_start").alias("start"), "rule", "alerts")
    out = pd.DataFrame([r.asDict() for r in rows.collect()], columns=["start", "rule", "alerts"])
    out["window_start"] = pd.to_datetime(out.pop("start"), unit="s", utc=True)
    return out


@pytest.mark.kafka
def test_windowed_alert_counts_equal_a_pandas_groupby_and_late_events_are_dropped(
        spark: Any, topics: Settings, scratch: Path) -> None:
    frame = generator.generate_frame(3_000, seed=12)
    kafka_mode.produce(topics, frame, progress=False)
    name = spark_mode.unique_name("windows")
    query = spark_mode.start_window_query(spark, topics, query_name=name, window_s=3600,
                                          watermark_s=600, checkpoint_dir=scratch / "ck")
    try:
        query.processAllAvailable()
        counted = _rows(spark_mode.window_counts(spark, name))

        alerts = rules.alerts_frame(frame, rules.evaluate_frame(frame)).explode("rules")
        alerts["window_start"] = alerts["event_time"].dt.floor("3600s")
        expected = alerts.groupby(["window_start", "rules"]).size()
        got = counted.set_index(["window_start", "rule"])["alerts"]
        assert len(got) == len(expected) > 10
        assert {(k[0].isoformat(), k[1]): int(v) for k, v in got.items()} == \
            {(k[0].isoformat(), k[1]): int(v) for k, v in expected.items()}

        # The latest event time is in the last hour of the month; an alert a day
        # earlier is beyond the 600 s watermark and is dropped, one on time counts.
        last = frame["event_time"].max()
        late = (last - pd.Timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        on_time = last.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        late_window = (last - pd.Timedelta(days=1)).floor("3600s")
        before_late = int(got.get((late_window, "HIGH_AMOUNT"), 0))
        kafka_mode.send_raw(topics, _alert_events([late, on_time]))
        query.processAllAvailable()

        after = _rows(spark_mode.window_counts(spark, name))
        late_count = after[(after.window_start == late_window) & (after.rule == "HIGH_AMOUNT")]
        assert int(late_count["alerts"].max() if len(late_count) else 0) == before_late
        last_window = last.floor("3600s")
        now_count = after[(after.window_start == last_window) & (after.rule == "HIGH_AMOUNT")]
        assert int(now_count["alerts"].max()) == int(got.get((last_window, "HIGH_AMOUNT"), 0)) + 1
        dropped = sum(op["numRowsDroppedByWatermark"]
                      for p in query.recentProgress for op in p["stateOperators"])
        assert dropped >= 1
    finally:
        query.stop()


# --- batch mode -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["parquet", "csv.gz"])
def test_batch_mode_gives_file_mode_s_alerts(spark: Any, settings: Settings, scratch: Path,
                                             suffix: str) -> None:
    path = generator.write_dataset(scratch / f"tx.{suffix}", 5_000, seed=33)
    expected = _file_mode_alerts(path, settings, scratch / "file")

    alerts = spark_mode.batch_alerts(spark, path, settings).collect()
    report = spark_mode.run_batch(spark, path, settings, scratch / "spark")

    assert _by_txn([r.asDict() for r in alerts]) == expected and len(expected) > 0
    assert report["rows"] == report["valid"] == 5_000 and report["quarantined"] == 0
    assert report["alerts"] == len(expected)
    written = [json.loads(line) for part in sorted((scratch / "spark" / "alerts").glob("*.json"))
               for line in part.read_text().splitlines()]
    assert _by_txn(written) == expected


def test_batch_mode_quarantines_bad_csv_rows_with_file_mode_s_reasons(
        spark: Any, settings: Settings, scratch: Path) -> None:
    frame = generator.generate_frame(20, seed=2)
    text = frame.astype({"event_time": "str"}).astype(str)
    text.loc[3, "amount"] = "lots"
    text.loc[5, "type"] = "LOAN"
    text.loc[7, "step"] = "0"
    path = scratch / "bad.csv"
    text.to_csv(path, index=False)
    valid, quarantined = schema.clean_frame(pd.read_csv(path, dtype=str))

    detected = spark_mode.batch_detect(spark, path, settings) \
        .where("reason IS NOT NULL").select("txn_id", "reason").collect()

    assert {r.txn_id: r.reason for r in detected} == \
        dict(zip(quarantined["txn_id"], quarantined[schema.REASON_COLUMN], strict=True))
    assert len(detected) == 3


# --- freeing the JVM ------------------------------------------------------------------

_STOP_SCRIPT = """
import json, sys
import psutil
from bankcourse import spark_session
spark = spark_session.get_session(app_name="stop-test")
first = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
ended = spark_session.stop_session(spark)
gone = not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"
again = spark_session.get_session(app_name="stop-test-again")
second = int(again.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
rows = again.range(3).count()
ended_again = spark_session.stop_session()
print(json.dumps({"first": first, "ended": ended, "gone": gone, "second": second,
                  "rows": rows, "ended_again": ended_again}))
"""


def test_stop_session_ends_the_jvm_and_a_new_session_can_start(settings: Settings) -> None:
    # In a child process: the JVM of this test session must stay up for other tests.
    done = subprocess.run([sys.executable, "-c", _STOP_SCRIPT], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env=_env(settings))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ended"] and result["gone"]
    assert result["second"] != result["first"] and result["rows"] == 3
    assert result["ended_again"]
    import psutil

    assert not psutil.pid_exists(result["second"]) or \
        psutil.Process(result["second"]).status() == "zombie"
