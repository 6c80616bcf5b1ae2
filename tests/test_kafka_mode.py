"""Kafka mode against the real broker: producer, detector, dead letters, crashes, kcat.

Every test that talks to Kafka uses its own topics and consumer group (a random suffix),
so tests never see each other's messages. Detectors that must be killed or run side by
side are separate processes started with ``python -m bankcourse kafka detect``.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bankcourse import generator, kafka_mode, rules, schema
from bankcourse.settings import Settings

# --- helpers -----------------------------------------------------------------------------


def _group() -> str:
    return f"detector-{uuid.uuid4().hex[:10]}"


def _env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``python -m bankcourse`` use ``settings``."""
    return {**os.environ, **settings.to_env()}


def _start_detector(settings: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bankcourse", "-q", "kafka", "detect", "--json", *args],
        env=_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(process: subprocess.Popen[str], timeout_s: float = 180) -> dict[str, Any]:
    """Wait for a detector process and return its JSON report."""
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"detector did not stop within {timeout_s} s; stderr:\n{err[-3000:]}")
    assert process.returncode == 0, f"detector failed ({process.returncode}):\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _expected_alerts(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    return rules.alerts_frame(frame, rules.evaluate_frame(frame, settings.thresholds))


def _committed(settings: Settings, group: str) -> int:
    """Offsets the group has committed on the input topic, summed (0 when none)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka_mode.client_config(settings))
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except Exception:  # the group does not exist yet
        return 0
    finally:
        admin.close()
    return sum(o.offset for tp, o in offsets.items()
               if tp.topic == settings.topic_transactions and o.offset > 0)


def _members_with_partitions(settings: Settings, group: str) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka_mode.client_config(settings))
    try:
        described = admin.describe_groups([group])
    except Exception:
        return 0
    finally:
        admin.close()
    info = described.get(group, {}) if isinstance(described, dict) else {}
    if info.get("group_state", info.get("state")) != "Stable":
        return 0
    count = 0
    for member in info.get("members", []):
        assignment = member.get("member_assignment") or {}
        text = json.dumps(assignment, default=str)
        if settings.topic_transactions in text:
            count += 1
    return count


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _records(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    for raw in kafka_mode.encode_frame(frame):
        yield json.loads(raw)


# --- encoding and batch processing (no broker) -------------------------------------------


def test_encoded_messages_pass_clean_record_with_the_frames_values() -> None:
    frame = generator.generate_frame(300, seed=3)
    for (_, row), message in zip(frame.iterrows(), _records(frame), strict=True):
        record, reason = schema.clean_record(message)
        assert reason is None
        assert record["txn_id"] == row["txn_id"]
        assert record["amount"] == row["amount"]
        assert record["step"] == row["step"]
        assert record["event_time"] == schema.format_event_time(row["event_time"])
        for name in ("oldbalanceOrg", "newbalanceOrig", "oldbalanceDest", "newbalanceDest"):
            assert (pd.isna(record[name]) and pd.isna(row[name])) or record[name] == row[name]


def test_encode_frame_escapes_text_and_keeps_bad_values_for_the_detector_to_reject() -> None:
    frame = pd.DataFrame({"name": ['say "hi"\n', None], "amount": [float("inf"), 1.5]})
    decoded = [json.loads(v) for v in kafka_mode.encode_frame(frame)]
    assert decoded == [{"name": 'say "hi"\n', "amount": "inf"},
                       {"name": None, "amount": 1.5}]


def _consumer_records(values: list[bytes], keys: list[bytes | None] | None = None) -> list[Any]:
    from kafka.consumer.fetcher import ConsumerRecord

    keys = keys or [None] * len(values)
    return [ConsumerRecord("tx", 0, -1, i, 1_000 + i, 0, key, value, [], None, -1,
                           len(value or b""), -1)
            for i, (key, value) in enumerate(zip(keys, values, strict=True))]


def test_batch_alerts_agree_with_alert_record_for_every_transaction() -> None:
    frame = generator.generate_frame(2_000, seed=5)
    values = kafka_mode.encode_frame(frame)
    out = kafka_mode.process_batch(_consumer_records(values), Settings())
    expected = []
    for message in _records(frame):
        record, _ = schema.clean_record(message)
        fired = rules.evaluate_record(record)
        if fired:
            expected.append(rules.alert_record(record, fired))
    got = [json.loads(value) for _, value in out.alerts]
    assert got == expected
    assert all(list(a) == list(rules.ALERT_FIELDS) for a in got)
    assert [key.decode() for key, _ in out.alerts] == [a["account"] for a in expected]
    assert len(out.processed) == len(frame) and not out.dead_letters


def test_processed_values_carry_the_fired_rules_and_severity() -> None:
    frame = generator.generate_frame(500, seed=8)
    out = kafka_mode.process_batch(_consumer_records(kafka_mode.encode_frame(frame)),
                                   Settings())
    for (_, value), message in zip(out.processed, _records(frame), strict=True):
        processed = json.loads(value)
        record, _ = schema.clean_record(message)
        fired = rules.evaluate_record(record)
        assert processed["rules"] == fired
        assert processed["severity"] == rules.severity_of(fired)
        assert {k: processed[k] for k in schema.NAMES} == message


def test_record_by_record_and_whole_batch_evaluation_write_the_same_messages() -> None:
    frame = generator.generate_frame(400, seed=17)
    frame.loc[frame.index[::7], "newbalanceOrig"] = float("nan")
    messages = _consumer_records(kafka_mode.encode_frame(frame), kafka_mode._keys(frame))
    by_record = kafka_mode.process_batch(messages, Settings(), per_record_below=10**9)
    by_frame = kafka_mode.process_batch(messages, Settings(), per_record_below=0)

    def decoded(pairs: list[tuple[bytes | None, bytes]]) -> list[Any]:
        return [(key, json.loads(value)) for key, value in pairs]

    assert by_record.alerts and decoded(by_record.alerts) == decoded(by_frame.alerts)
    assert decoded(by_record.processed) == decoded(by_frame.processed)
    assert list(by_record.alert_timestamps_ms) == list(by_frame.alert_timestamps_ms)
    for name in ("alerts", "fraud", "by_type", "by_rule", "latest_alerts"):
        assert by_record.summary[name] == by_frame.summary[name], name


def test_batch_decoding_sends_malformed_messages_to_the_dead_letters_like_record_by_record(
        ) -> None:
    frame = generator.generate_frame(1_500, seed=21)
    frame.loc[frame.index[::50], "oldbalanceDest"] = float("nan")
    values = kafka_mode.encode_frame(frame)
    template = json.loads(values[0])
    odd: list[bytes | None] = [
        b"this is not json",
        b"\xff\xfe\x00",
        b"[1, 2, 3]",
        b"",
        None,
        b'{"txn_id": "T1", "amount": 5}',
        json.dumps({**template, "amount": "lots"}).encode(),
        json.dumps({**template, "amount": "12.5"}).encode(),  # text that is a number: valid
        json.dumps({**template, "amount": -1.0}).encode(),
        json.dumps({**template, "type": "WIRE"}).encode(),
        json.dumps({**template, "step": 3.5}).encode(),
        json.dumps({**template, "isFraud": True}).encode(),
        json.dumps({**template, "txn_id": "   "}).encode(),
        json.dumps({**template, "event_time": "2026-02-30T00:00:00Z"}).encode(),
        json.dumps({**template, "event_time": "2026-01-01 00:00:00"}).encode(),
        json.dumps({**template, "oldbalanceOrg": None}).encode(),
        json.dumps({**template, "extra": "\u00e9"}).encode(),
        json.dumps({**template, "amount": float("inf")}).encode(),
        json.dumps({**template, "amount": float("nan")}).encode(),
        json.dumps(template).replace(', "step"', ',\n "step"').encode(),
        json.dumps(template).encode()[:-1] + b', "amount": 7}',  # a field twice: last wins
        json.dumps(template).encode() + json.dumps(template).encode(),
        b"  " + json.dumps(template).encode(),
        json.dumps(template).encode()[:-1] + b', "x": "\xff"}',
    ]
    mixed: list[bytes | None] = list(values)
    for i, value in enumerate(odd):
        mixed.insert(37 * i + 5, value)
    keys = [None if v is None else b"C%d" % i for i, v in enumerate(mixed)]
    messages = _consumer_records(mixed, keys)  # type: ignore[arg-type]
    by_record = kafka_mode.process_batch(messages, Settings(), per_record_below=10**9)
    in_bulk = kafka_mode.process_batch(messages, Settings(), per_record_below=0)

    assert in_bulk.valid == by_record.valid
    assert in_bulk.valid + len(in_bulk.dead_letters) == len(mixed)
    assert in_bulk.reasons == by_record.reasons and len(in_bulk.reasons) >= 15
    assert in_bulk.dead_letters == by_record.dead_letters
    assert in_bulk.processed_keys.to_pylist() == by_record.processed_keys.to_pylist()

    def decoded(values: list[bytes]) -> list[Any]:
        return [json.loads(v) for v in values]

    assert decoded(in_bulk.processed_values.to_pylist()) == decoded(
        by_record.processed_values.to_pylist())
    assert in_bulk.alerts and decoded([v for _, v in in_bulk.alerts]) == decoded(
        [v for _, v in by_record.alerts])
    assert list(in_bulk.alert_timestamps_ms) == list(by_record.alert_timestamps_ms)


def test_latency_percentiles_report_the_middle_and_the_tail() -> None:
    summary = kafka_mode.latency_percentiles(list(range(1, 101)))
    assert summary["count"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == 100


# --- against the broker ------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.parametrize("mode", kafka_mode.MODES)
def test_kafka_alerts_equal_file_mode_alerts_on_the_same_dataset(
        topics: Settings, scratch: Path, mode: str) -> None:
    from bankcourse import file_mode

    path = generator.write_dataset(scratch / "tx.csv.gz", 3_000, seed=21)
    produced = kafka_mode.produce(topics, path, progress=False)
    assert produced.messages == 3_000
    report = kafka_mode.detect(topics, mode=mode, group=_group(), idle_timeout_s=4)
    file_report = file_mode.run_file_mode(path, topics, scratch / "file")

    with open(file_report.alerts_path, encoding="utf-8") as lines:
        file_alerts = {a["txn_id"]: a for a in map(json.loads, lines)}
    kafka_alerts = {a["txn_id"]: a for a in kafka_mode.read_json(topics, topics.topic_alerts)}
    assert report.consumed == 3_000 and report.dead_letters == 0
    assert report.alerts == len(file_alerts) > 0
    assert kafka_alerts == file_alerts


@pytest.mark.kafka
def test_detector_reports_each_poll_batch_to_on_batch_with_counts_that_add_up(
        topics: Settings) -> None:
    frame = generator.generate_frame(2_500, seed=22)
    kafka_mode.produce(topics, frame, progress=False)
    batches: list[Any] = []
    report = kafka_mode.detect(topics, group=_group(), idle_timeout_s=4, max_batch_rows=400,
                               on_batch=batches.append)

    flags = rules.evaluate_frame(frame, topics.thresholds)
    assert len(batches) == report.batches >= 7
    assert all(b.stage == "kafka" and 0 < b.rows <= 400 for b in batches)
    assert [b.batch for b in batches] == list(range(1, len(batches) + 1))
    assert sum(b.rows for b in batches) == batches[-1].total_rows == 2_500
    assert sum(b.alerts for b in batches) == report.alerts == int(flags.any(axis=1).sum())
    for name in rules.RULE_NAMES:
        assert sum(b.by_rule.get(name, 0) for b in batches) == int(flags[name].sum())
    assert batches[-1].lag == 0
    assert all(set(a) == set(rules.ALERT_FIELDS) for b in batches for a in b.latest_alerts)
    assert len(report.latencies_ms) == report.alerts
    assert all(latency >= 0 for latency in report.latencies_ms)


@pytest.mark.kafka
def test_producer_keys_by_account_so_each_accounts_transactions_stay_in_order(
        topics: Settings) -> None:
    frame = generator.generate_frame(2_000, seed=4)
    kafka_mode.produce(topics, frame, progress=False)
    messages = kafka_mode.read_topic(topics, topics.topic_transactions)
    assert len(messages) == 2_000
    partitions: dict[bytes, set[int]] = collections.defaultdict(set)
    order: dict[bytes, list[str]] = collections.defaultdict(list)
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        assert m.key == m.json()["nameOrig"].encode()
        partitions[m.key].add(m.partition)
        order[m.key].append(m.json()["txn_id"])
    assert all(len(p) == 1 for p in partitions.values())
    assert all(ids == sorted(ids) for ids in order.values())
    assert len({p for ps in partitions.values() for p in ps}) == topics.partitions


@pytest.mark.kafka
def test_producer_stops_at_max_messages(topics: Settings) -> None:
    frame = generator.generate_frame(1_000, seed=4)
    report = kafka_mode.produce(topics, frame, max_messages=321, progress=False)
    assert report.messages == 321 and report.stopped_because == "max_messages"
    assert len(kafka_mode.read_topic(topics, topics.topic_transactions)) == 321


@pytest.mark.kafka
def test_malformed_messages_go_to_the_dead_letter_topic_with_their_reason(
        topics: Settings) -> None:
    good = generator.generate_frame(400, seed=9)
    template = next(_records(good.iloc[:1]))
    bad = {
        b"this is not json": "not JSON",
        b"\xff\xfe\x00": "not JSON",
        b"[1, 2, 3]": "not a JSON object",
        json.dumps({"txn_id": "T1", "amount": 5}).encode(): "missing field(s)",
        json.dumps({**template, "amount": "lots"}).encode(): "amount: not a number",
        json.dumps({**template, "amount": -10.0}).encode(): "amount: negative",
        json.dumps({**template, "type": "WIRE"}).encode(): "type: unknown value",
        json.dumps({**template, "step": "3.5"}).encode(): "step: not a whole number",
        b"": "empty message",
    }
    kafka_mode.produce(topics, good.iloc[:200], progress=False)
    kafka_mode.send_raw(topics, list(bad))
    kafka_mode.produce(topics, good.iloc[200:], progress=False)

    report = kafka_mode.detect(topics, group=_group(), idle_timeout_s=4)

    assert report.consumed == 400 + len(bad)
    assert report.valid == 400 and report.dead_letters == len(bad)
    assert report.consumed == report.valid + report.dead_letters
    letters = kafka_mode.read_json(topics, topics.topic_dead_letter)
    assert len(letters) == len(bad)
    for letter in letters:
        assert list(letter) == list(kafka_mode.DEAD_LETTER_FIELDS)
        original = base64.b64decode(letter["original_base64"])
        assert bad[original] in letter["reason"], letter
        assert letter["topic"] == topics.topic_transactions
    processed = kafka_mode.read_json(topics, topics.topic_processed)
    assert sorted(p["txn_id"] for p in processed) == sorted(good["txn_id"])


def _kill_mid_stream_and_restart(topics: Settings, mode: str,
                                 rows: int = 12_000) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Produce at a steady rate, SIGKILL the detector once it committed, then restart."""
    frame = generator.generate_frame(rows, seed=31)
    group = _group()
    producer = threading.Thread(target=kafka_mode.produce, args=(topics, frame),
                                kwargs={"rate_per_s": 2_000, "progress": False})
    args = ["--mode", mode, "--group", group, "--instance-id", "one",
            "--batch-rows", "200", "--idle-timeout-s", "30"]
    first = _start_detector(topics, *args)
    producer.start()
    try:
        deadline = time.monotonic() + 90
        committed = 0
        while time.monotonic() < deadline and first.poll() is None:
            committed = _committed(topics, group)
            if committed >= 500:
                break
            time.sleep(0.1)
        assert first.poll() is None, f"detector exited early: {first.communicate()[1][-2000:]}"
        assert 500 <= committed < rows, f"committed {committed}: not mid-stream"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        producer.join(timeout=120)
    assert first.returncode == -signal.SIGKILL
    second = _start_detector(topics, *args[:-1], "6")
    return frame, _finish(second)


@pytest.mark.kafka
def test_exactly_once_detector_killed_mid_stream_loses_and_duplicates_no_alert(
        topics: Settings) -> None:
    frame, report = _kill_mid_stream_and_restart(topics, "exactly-once")
    expected = _expected_alerts(frame, topics)["txn_id"]

    alerts = kafka_mode.read_json(topics, topics.topic_alerts, timeout_s=30,
                                  isolation_level="read_committed")
    ids = collections.Counter(a["txn_id"] for a in alerts)
    assert set(ids) == set(expected)
    assert max(ids.values()) == 1, "an alert was written twice"
    processed = kafka_mode.read_json(topics, topics.topic_processed, timeout_s=30)
    assert len(processed) == len(frame) == len({p["txn_id"] for p in processed})
    assert report["consumed"] < len(frame)  # the restart resumed; it did not start over


@pytest.mark.kafka
def test_at_least_once_detector_killed_mid_stream_loses_no_alert(topics: Settings) -> None:
    frame, report = _kill_mid_stream_and_restart(topics, "at-least-once")
    expected = set(_expected_alerts(frame, topics)["txn_id"])

    alerts = kafka_mode.read_json(topics, topics.topic_alerts, timeout_s=30)
    ids = collections.Counter(a["txn_id"] for a in alerts)
    assert set(ids) == expected
    assert len(alerts) >= len(expected)
    duplicates = len(alerts) - len(expected)
    print(f"at-least-once after SIGKILL: {duplicates} duplicate alert(s) "
          f"of {len(expected)}")
    assert report["consumed"] < len(frame)


@pytest.mark.kafka
def test_two_detectors_in_one_group_share_the_partitions(kafka: Settings) -> None:
    suffix = uuid.uuid4().hex[:10]
    settings = kafka.replace(partitions=4, topic_transactions=f"tx-{suffix}",
                             topic_alerts=f"alerts-{suffix}",
                             topic_processed=f"processed-{suffix}",
                             topic_dead_letter=f"dlq-{suffix}")
    kafka_mode.ensure_topics(settings)
    group = _group()
    args = ["--group", group, "--idle-timeout-s", "8", "--batch-rows", "500"]
    detectors = [_start_detector(settings, *args, "--instance-id", name)
                 for name in ("a", "b")]
    try:
        deadline = time.monotonic() + 90
        while _members_with_partitions(settings, group) < 2:
            assert time.monotonic() < deadline, "the two detectors never both got partitions"
            assert all(d.poll() is None for d in detectors), "a detector exited early"
            time.sleep(0.25)
        frame = generator.generate_frame(4_000, seed=12)
        kafka_mode.produce(settings, frame, progress=False)
        reports = [_finish(d) for d in detectors]
    finally:
        for d in detectors:
            if d.poll() is None:
                d.kill()
                d.wait()
    assert all(r["partitions"] for r in reports)
    assert all(r["consumed"] > 0 for r in reports)
    assert sum(r["consumed"] for r in reports) >= 4_000
    processed = {p["txn_id"] for p in kafka_mode.read_json(settings, settings.topic_processed)}
    assert processed == set(frame["txn_id"])


@pytest.mark.kafka
def test_kcat_reads_fraud_alerts_as_json_with_the_alert_fields(topics: Settings) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        message = "kcat is not installed: install it with `apt-get install -y kcat`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    frame = generator.generate_frame(1_500, seed=13)
    kafka_mode.produce(topics, frame, progress=False)
    kafka_mode.detect(topics, mode="exactly-once", group=_group(), idle_timeout_s=4)

    result = subprocess.run(
        [kcat, "-b", topics.bootstrap_servers, "-C", "-t", topics.topic_alerts,
         "-o", "beginning", "-e", "-q", "-X", "isolation.level=read_committed",
         "-f", "%s\n"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    alerts = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(alerts) == len(_expected_alerts(frame, topics)) > 0
    assert all(list(a) == list(rules.ALERT_FIELDS) for a in alerts)


@pytest.mark.kafka
def test_tail_prints_the_last_alerts_of_a_topic(topics: Settings) -> None:
    frame = generator.generate_frame(800, seed=14)
    kafka_mode.produce(topics, frame, progress=False)
    kafka_mode.detect(topics, group=_group(), idle_timeout_s=4)
    result = subprocess.run(
        [sys.executable, "-m", "bankcourse", "-q", "kafka", "tail", "alerts", "-n", "5"],
        env=_env(topics), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    by_partition: dict[int, list[Any]] = collections.defaultdict(list)
    for m in kafka_mode.read_topic(topics, topics.topic_alerts):
        by_partition[m.partition].append(m)
    newest = {m.json()["txn_id"] for ms in by_partition.values()
              for m in sorted(ms, key=lambda m: m.offset)[-5:]}
    assert len(printed) == 5
    assert all(list(a) == list(rules.ALERT_FIELDS) for a in printed)
    assert {a["txn_id"] for a in printed} <= newest


@pytest.mark.kafka
def test_reading_a_topic_that_does_not_exist_fails_with_its_name_and_creates_nothing(
        kafka: Settings) -> None:
    from kafka import KafkaAdminClient

    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    with pytest.raises(kafka_mode.KafkaModeError, match=missing):
        kafka_mode.read_topic(kafka, missing, timeout_s=10)
    admin = KafkaAdminClient(**kafka_mode.client_config(kafka))
    try:
        assert missing not in admin.list_topics()
    finally:
        admin.close()


# --- an unreachable broker ---------------------------------------------------------------


def _nowhere(settings: Settings) -> Settings:
    port = _free_port()
    return settings.replace(kafka_bootstrap_servers=None, kafka_port=port,
                            kafka_controller_port=_free_port())


def test_producer_fails_fast_with_a_clear_message_when_the_broker_is_down(
        settings: Settings) -> None:
    nowhere = _nowhere(settings)
    began = time.monotonic()
    with pytest.raises(kafka_mode.KafkaModeError) as caught:
        kafka_mode.produce(nowhere, generator.generate_frame(10, seed=1), progress=False)
    assert time.monotonic() - began < 30
    assert f"127.0.0.1:{nowhere.kafka_port}" in str(caught.value)
    assert "broker start" in str(caught.value)


def test_detector_fails_fast_with_a_clear_message_when_the_broker_is_down(
        settings: Settings) -> None:
    nowhere = _nowhere(settings)
    began = time.monotonic()
    with pytest.raises(kafka_mode.KafkaModeError) as caught:
        kafka_mode.detect(nowhere, idle_timeout_s=5)
    assert time.monotonic() - began < 30
    assert f"127.0.0.1:{nowhere.kafka_port}" in str(caught.value)


def test_detect_command_exits_with_an_error_when_the_broker_is_down(
        settings: Settings) -> None:
    nowhere = _nowhere(settings)
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bankcourse", "-q", "kafka", "detect", "--idle-timeout-s", "5"],
        env=_env(nowhere), capture_output=True, text=True, timeout=60, check=False)
    assert time.monotonic() - began < 30
    assert result.returncode == 1
    assert "error:" in result.stderr and str(nowhere.kafka_port) in result.stderr


def test_detector_refuses_to_run_without_any_bound(settings: Settings) -> None:
    with pytest.raises(kafka_mode.KafkaModeError, match="bound"):
        kafka_mode.detect(settings, idle_timeout_s=None)


def test_the_one_line_object_check_of_a_whole_batch_matches_the_check_of_each_value() -> None:
    good = [b'{"a": 1}', b"{}", b'{"b": "x}\\n{y"}']
    shapes: list[list[bytes | None]] = [
        good, [*good, None], [b""] + good, [b'{"a": 1}\n{"b": 2}'], [b'{"a": 1}\r'],
        [b"[1]", *good], [*good, b'{"a": 1} '], [b'{"a":\n1}', b"{}"], [b"{}"], [],
    ]
    for values in shapes:
        each = [i for i, v in enumerate(values)
                if v and v[:1] == b"{" and v[-1:] == b"}" and b"\n" not in v and b"\r" not in v]
        rows, data = kafka_mode._one_object_lines(values)
        assert rows == each, values
        assert data == b"\n".join([values[i] for i in each])  # type: ignore[misc]
