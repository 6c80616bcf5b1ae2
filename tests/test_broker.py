"""The course's own Kafka broker, tested against the real broker (no mocks).

These tests run their own broker on ports 19192/19193 with a scratch cache
folder, so they neither collide with the session broker of ``conftest.kafka``
(port 9092) nor touch its storage. The jars are shared: they are fetched once
into the normal cache folder (or taken from ``KAFKA_HOME``) and the scratch
broker uses them as its ``kafka_home``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bankcourse import broker
from bankcourse.settings import Settings

TEST_PORT = 19192
TEST_CONTROLLER_PORT = 19193


def _cli_env(settings: Settings) -> dict[str, str]:
    """Environment that makes ``python -m bankcourse`` use the same broker as ``settings``."""
    env = dict(os.environ)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("BANKCOURSE_KAFKA_BOOTSTRAP_SERVERS", None)
    env.update({
        "BANKCOURSE_CACHE_DIR": str(settings.cache_dir),
        "BANKCOURSE_KAFKA_PORT": str(settings.kafka_port),
        "BANKCOURSE_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "KAFKA_HOME": str(settings.kafka_home),
    })
    return env


def _cli(settings: Settings, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bankcourse", "-q", "broker", *args],
                          env=_cli_env(settings), capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def _consume(settings: Settings, topic: str, count: int, timeout_s: float = 20,
             **options: object) -> list:
    """Read ``topic`` from the start until ``count`` records arrived or ``timeout_s`` passed.

    Polls once more after reaching ``count`` so that an unexpected extra record shows up.
    """
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, **broker.client_config(settings), group_id=f"g-{topic}",
                             auto_offset_reset="earliest", **options)
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
    finally:
        consumer.close()
    return records


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of a broker of these tests' own, started through the CLI with --no-wait.

    Starting it from a child process that exits at once also shows the broker
    outlives the process that launched it.
    """
    base = Settings.from_env(kafka_bootstrap_servers=None)
    libs = broker.kafka_libs(base)
    settings = base.replace(
        cache_dir=tmp_path_factory.mktemp("cache"), kafka_home=libs.parent,
        kafka_port=TEST_PORT, kafka_controller_port=TEST_CONTROLLER_PORT,
    )
    launched = _cli(settings, "start", "--no-wait")
    assert launched.returncode == 0, launched.stderr
    try:
        broker.start(settings, timeout_s=90)  # waits for the broker the CLI launched
        yield settings
    finally:
        broker.stop(settings)


def _topics(settings: Settings) -> Settings:
    """``settings`` with topic names of this test alone."""
    tag = uuid.uuid4().hex[:8]
    return settings.replace(
        topic_transactions=f"txn-{tag}", topic_alerts=f"alerts-{tag}",
        topic_processed=f"processed-{tag}", topic_dead_letter=f"dlq-{tag}",
    )


def test_client_config_passes_security_settings_through_as_kafka_python_values() -> None:
    settings = Settings(kafka_bootstrap_servers="kafka.example:9093", kafka_security={
        "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
        "ssl_check_hostname": "false", "request_timeout_ms": "40000",
    })

    config = broker.client_config(settings)

    assert config == {
        "bootstrap_servers": "kafka.example:9093", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN", "ssl_check_hostname": False, "request_timeout_ms": 40000,
    }


@pytest.mark.kafka
def test_broker_launched_by_a_process_that_exited_is_running(own: Settings) -> None:
    current = broker.status(own)

    assert broker.is_running(own)
    assert current.running and current.owned
    assert current.pid is not None and current.pid != os.getpid()


@pytest.mark.kafka
def test_start_is_idempotent_and_keeps_the_same_broker(own: Settings) -> None:
    before = broker.status(own)

    again = broker.start(own)

    assert again.running
    assert again.pid == before.pid


@pytest.mark.kafka
def test_status_reports_the_listening_address_pid_version_and_data_dir(own: Settings) -> None:
    current = broker.status(own)

    assert current.bootstrap_servers == f"127.0.0.1:{TEST_PORT}"
    assert current.controller == f"127.0.0.1:{TEST_CONTROLLER_PORT}"
    assert current.data_dir == own.cache_dir / "kafka" / f"broker-{TEST_PORT}"
    assert (current.data_dir / "kraft-logs" / "meta.properties").is_file()
    assert current.version == broker._libs_version(own.kafka_home / "libs")
    assert str(current.pid) in current.describe()
    assert f"127.0.0.1:{TEST_PORT}" in current.describe()


@pytest.mark.kafka
def test_a_message_produced_through_the_broker_is_consumed_back(own: Settings) -> None:
    from kafka import KafkaProducer

    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(**broker.client_config(own))
    try:
        producer.send(topic, key=b"C123", value=b'{"amount": 181.0}').get(timeout=30)
    finally:
        producer.close()
    received = [(m.key, m.value) for m in _consume(own, topic, count=1)]

    assert received == [(b"C123", b'{"amount": 181.0}')]


@pytest.mark.kafka
def test_ensure_topics_creates_the_four_topics_with_the_configured_partitions(
    own: Settings,
) -> None:
    from kafka import KafkaConsumer

    settings = _topics(own).replace(partitions=3)

    names = broker.ensure_topics(settings)
    again = broker.ensure_topics(settings)

    assert names == again == [settings.topic_transactions, settings.topic_alerts,
                              settings.topic_processed, settings.topic_dead_letter]
    consumer = KafkaConsumer(**broker.client_config(settings))
    try:
        counts = {name: len(consumer.partitions_for_topic(name) or ()) for name in names}
    finally:
        consumer.close()
    assert counts == {settings.topic_transactions: 3, settings.topic_alerts: 3,
                      settings.topic_processed: 3, settings.topic_dead_letter: 1}


@pytest.mark.kafka
def test_a_committed_transaction_is_read_and_an_aborted_one_is_not(own: Settings) -> None:
    from kafka import KafkaProducer

    topic = f"txn-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(**broker.client_config(own), transactional_id=f"p-{topic}")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, b"aborted")
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic, b"committed")
        producer.commit_transaction()
    finally:
        producer.close()
    values = [m.value for m in _consume(own, topic, count=1, isolation_level="read_committed")]

    assert values == [b"committed"]


@pytest.mark.kafka
def test_an_external_cluster_setting_starts_and_stops_nothing(own: Settings) -> None:
    external = own.replace(kafka_bootstrap_servers=f"127.0.0.1:{TEST_PORT}",
                           kafka_port=_free_port(), kafka_controller_port=_free_port())

    started = broker.start(external)
    stopped = broker.stop(external)

    assert started.external and started.running
    assert stopped is False
    assert broker.is_running(own)


@pytest.mark.kafka
def test_broker_status_command_prints_the_address_and_data_dir(own: Settings) -> None:
    result = _cli(own, "status")

    assert result.returncode == 0, result.stderr
    assert f"running at 127.0.0.1:{TEST_PORT}" in result.stdout
    assert str(own.cache_dir / "kafka" / f"broker-{TEST_PORT}") in result.stdout


@pytest.mark.kafka
def test_broker_logs_command_prints_the_requested_number_of_lines(own: Settings) -> None:
    result = _cli(own, "logs", "--lines", "5")

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5


@pytest.mark.kafka
@pytest.mark.timeout(60)
def test_a_port_taken_by_another_program_is_named_in_the_error(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        settings = Settings(cache_dir=tmp_path, kafka_port=port,
                            kafka_controller_port=_free_port())

        with pytest.raises(broker.BrokerError, match=rf"port {port}\b.*BANKCOURSE_KAFKA_PORT"):
            broker.start(settings)
        assert not broker.is_running(settings)


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_a_broker_that_exits_while_starting_reports_the_end_of_its_log(own: Settings) -> None:
    # Storage claimed by another node id makes the real broker refuse to start.
    settings = own.replace(kafka_port=TEST_PORT + 2, kafka_controller_port=TEST_PORT + 3)
    storage = broker.broker_dir(settings) / "kraft-logs"
    storage.mkdir(parents=True)
    (storage / "meta.properties").write_text(
        f"version=1\nnode.id=7\ncluster.id={broker._new_cluster_id()}\n"
        f"directory.id={broker._new_cluster_id()}\n")

    with pytest.raises(broker.BrokerError, match=r"exited while starting(.|\n)*node id 7"):
        broker.start(settings)
    assert not broker.is_running(settings)
    assert broker.status(settings).pid is None


@pytest.mark.timeout(60)
def test_start_without_java_fails_with_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = Settings(cache_dir=tmp_path, kafka_port=_free_port(),
                        kafka_controller_port=_free_port())

    with pytest.raises(broker.BrokerError, match="no `java` is on PATH.*openjdk-17"):
        broker.start(settings)


def test_java_home_pointing_at_nothing_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-such-jdk"))

    with pytest.raises(broker.BrokerError, match="JAVA_HOME.*does not exist.*Java 17"):
        broker.find_java()


def test_a_java_older_than_17_is_refused_with_how_to_install_a_newer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in JDK whose java answers -version like Java 11 does (no Java 11 is installed).
    java = tmp_path / "jdk-11" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk-11"))

    with pytest.raises(broker.BrokerError, match="needs Java 17 or newer.*Java 11"):
        broker.find_java()


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_an_unknown_kafka_version_fails_naming_the_artifact(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path, kafka_version="0.0.1")

    with pytest.raises(broker.BrokerError, match="kafka_2.13:0.0.1.*not found"):
        broker.kafka_libs(settings)
    assert not (tmp_path / "kafka" / "0.0.1" / "libs").exists()


@pytest.mark.kafka
@pytest.mark.timeout(60)
def test_after_stop_the_broker_is_gone_and_clients_fail_fast_with_the_fix(
    own: Settings,
) -> None:
    # Runs last in this module: it stops the module's broker.
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    pid = broker.status(own).pid

    assert broker.stop(own) is True
    assert broker.stop(own) is False
    assert not broker.is_running(own)
    assert broker.status(own).pid is None
    with pytest.raises(broker.BrokerError, match=r"no Kafka broker answers.*broker start"):
        broker.require_running(own, timeout_s=1)
    with pytest.raises(KafkaError, match="bootstrap"):
        KafkaProducer(**broker.client_config(own), bootstrap_timeout_ms=2_000)
    assert pid is not None and not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
