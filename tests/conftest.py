"""Shared fixtures: settings in a scratch folder, the real Kafka broker, a Spark session.

The broker and Spark are real. The broker fixture starts the course's own broker
(or uses ``KAFKA_BOOTSTRAP_SERVERS``) once per test session and stops it afterwards
only if it started it. ``BANKCOURSE_KAFKA_PORT`` picks another port.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bankcourse.settings import Settings


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Course settings from the environment, with data in a scratch folder."""
    return Settings.from_env(data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> Iterator[Settings]:
    """Settings whose ``bootstrap_servers`` reach a running broker."""
    from bankcourse import broker

    started = False
    if not settings.external_kafka and not broker.is_running(settings):
        broker.start(settings)
        started = True
    try:
        yield settings
    finally:
        if started:
            broker.stop(settings)


@pytest.fixture
def topics(kafka: Settings) -> Settings:
    """Settings with topics of this test only (created up front): tests that run side by
    side, or one after another on the same broker, never see each other's messages."""
    from bankcourse import kafka_mode

    suffix = uuid.uuid4().hex[:10]
    settings = kafka.replace(topic_transactions=f"tx-{suffix}", topic_alerts=f"alerts-{suffix}",
                             topic_processed=f"processed-{suffix}",
                             topic_dead_letter=f"dlq-{suffix}")
    kafka_mode.ensure_topics(settings)
    return settings


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[object]:
    """A local SparkSession with the Kafka connector, stopped at the end of the session."""
    from bankcourse import spark_mode

    session = spark_mode.get_session(settings)
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A fresh folder for one test's output files."""
    return tmp_path
