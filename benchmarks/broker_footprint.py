"""How long the course's Kafka broker takes to start and how much memory it uses.

Usage::

    python benchmarks/broker_footprint.py [--messages 200000] [--cold]

It starts a broker of its own in a scratch cache folder (port BANKCOURSE_KAFKA_PORT,
default here 19092, controller BANKCOURSE_KAFKA_CONTROLLER_PORT, default 19093),
produces ``--messages`` JSON transactions of about 250 bytes with kafka-python,
and stops it. ``--cold`` also fetches the jars from Maven Central into the scratch
folder (the first start a learner sees); otherwise the jars of the normal cache
folder are reused.

Expected output (2 cores, Java 17, Kafka 4.1.1, heap 320 MB), roughly::

    jars fetched from Maven Central in 40 s            (only with --cold)
    start (storage format + JVM until metadata): 10 s
    broker RSS idle: 200 MB
    produced 200000 messages in 20 s (10000 msg/s)
    broker RSS after producing: 300 MB
    stop: 1 s
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import psutil

from bankcourse import broker
from bankcourse.settings import Settings


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def main() -> None:
    """Start, measure, load, measure, stop; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--cold", action="store_true",
                        help="fetch the jars from Maven Central too (about 45 MB)")
    args = parser.parse_args()

    base = Settings.from_env(kafka_bootstrap_servers=None,
                             kafka_port=int(os.environ.get("BANKCOURSE_KAFKA_PORT", 19092)),
                             kafka_controller_port=int(
                                 os.environ.get("BANKCOURSE_KAFKA_CONTROLLER_PORT", 19093)))
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as scratch:
        settings = base.replace(cache_dir=Path(scratch))
        if args.cold:
            began = time.monotonic()
            broker.kafka_libs(settings)
            print(f"jars fetched from Maven Central in {time.monotonic() - began:.1f} s")
        else:
            settings = settings.replace(kafka_home=broker.kafka_libs(base).parent)
        if broker.is_running(settings):
            raise SystemExit(f"something already answers at {settings.bootstrap_servers}; "
                             f"set BANKCOURSE_KAFKA_PORT to a free port")

        began = time.monotonic()
        current = broker.start(settings)
        print(f"start (storage format + JVM until metadata): {time.monotonic() - began:.1f} s")
        try:
            assert current.pid is not None
            time.sleep(5)
            print(f"broker RSS idle: {_rss_mb(current.pid):.0f} MB "
                  f"(heap limit {settings.broker_heap_mb} MB)")
            _produce(settings, args.messages)
            time.sleep(2)
            print(f"broker RSS after producing: {_rss_mb(current.pid):.0f} MB")
        finally:
            began = time.monotonic()
            broker.stop(settings)
            print(f"stop: {time.monotonic() - began:.1f} s")


def _produce(settings: Settings, count: int) -> None:
    from kafka import KafkaProducer

    broker.ensure_topics(settings)
    producer = KafkaProducer(**broker.client_config(settings), linger_ms=20,
                             batch_size=256 * 1024, acks=1)
    record = {"txn_id": "", "step": 1, "type": "TRANSFER", "amount": 181.0,
              "nameOrig": "C1231006815", "oldbalanceOrg": 181.0, "newbalanceOrig": 0.0,
              "nameDest": "C1666544295", "oldbalanceDest": 0.0, "newbalanceDest": 0.0,
              "isFraud": 1, "isFlaggedFraud": 0, "event_time": "2026-01-01T00:00:00Z"}
    began = time.monotonic()
    try:
        for i in range(count):
            record["txn_id"] = f"T{i:09d}"
            producer.send(settings.topic_transactions, json.dumps(record).encode())
        producer.flush(timeout=300)
    finally:
        producer.close()
    seconds = time.monotonic() - began
    print(f"produced {count} messages in {seconds:.1f} s ({count / seconds:.0f} msg/s)")


if __name__ == "__main__":
    main()
