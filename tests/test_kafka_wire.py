"""Kafka's record format in bulk: the same partitions, bytes and records as kafka-python.

The pure tests compare :mod:`bankcourse.kafka_wire` with kafka-python's own partitioner,
record builder and record parser; the ``kafka`` ones send through a real broker and read
back, through the bulk path and through the per-message fallback.
"""

from __future__ import annotations

import collections
import uuid
from typing import Any

import numpy as np
import pytest

from bankcourse import generator, kafka_mode, kafka_wire
from bankcourse.settings import Settings


def test_vectorised_murmur2_puts_every_key_where_kafkas_partitioner_would() -> None:
    import random

    from kafka.partitioner.default import murmur2

    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30)))
            for _ in range(3_000)]
    keys += [f"C{rng.randrange(10**10)}".encode() for _ in range(3_000)]
    expected = [murmur2(key) & 0x7FFFFFFF for key in keys]
    assert (kafka_wire.murmur2_many(keys) & 0x7FFFFFFF).tolist() == expected


def test_arrow_partitions_equal_kafka_pythons_default_partitioner() -> None:
    import random

    import pyarrow as pa
    from kafka.partitioner.default import DefaultPartitioner

    rng = random.Random(11)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
            for _ in range(2_000)]
    keys += [f"C{rng.randrange(10**10)}".encode() for _ in range(2_000)]
    class Cluster:  # what the partitioner reads of the cluster metadata
        def __init__(self, count: int) -> None:
            self.count = count

        def topics(self) -> set[str]:
            return {"t"}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(self.count))

        available_partitions_for_topic = partitions_for_topic

    partitioner = DefaultPartitioner()
    for count in (1, 2, 3, 7, 12):
        chosen = kafka_wire.KeyPartitions.__new__(kafka_wire.KeyPartitions)
        chosen._partitions = np.arange(count)
        expected = [partitioner.partition("t", key, key, None, None, Cluster(count))
                    for key in keys]
        assert chosen.arrow(pa.array(keys, type=pa.binary())).tolist() == expected


def _plain_batch(keys: list[bytes | None], values: list[bytes | None],
                 stamps: list[int]) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 30)
    for offset, (key, value, stamp) in enumerate(zip(keys, values, stamps, strict=True)):
        builder.append(offset, stamp, key, value, [])
    return bytes(builder.build())


def test_bulk_encoded_records_are_byte_for_byte_kafka_pythons() -> None:
    import random

    import pyarrow as pa

    rng = random.Random(5)
    for count in (1, 3, 130, 700):
        keys = [None if rng.random() < 0.2 else
                bytes(rng.randrange(256) for _ in range(rng.choice([0, 5, 200])))
                for _ in range(count)]
        values = [bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 127, 128, 20_000])))
                  for _ in range(count)]
        expected = _plain_batch(keys, values, [1_700_000_000_000] * count)[61:]
        records, offsets = kafka_wire.encode_records(pa.array(keys, type=pa.binary()),
                                                     pa.array(values, type=pa.binary()))
        assert bytes(kafka_wire._records_bytes(records)) == expected
        assert offsets[-1] == len(expected)


def test_bulk_decoded_batches_give_the_records_kafka_python_gives() -> None:
    import random

    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

    def fields(r: Any) -> tuple[Any, ...]:
        return (r.offset, r.timestamp, r.timestamp_type, r.key, r.value, r.headers,
                r.size_in_bytes)

    rng = random.Random(6)
    for count in (1, 2, 150, 1_000):
        keys = [None if rng.random() < 0.2 else bytes(rng.randrange(256) for _ in range(
            rng.choice([0, 9, 300]))) for _ in range(count)]
        values = [None if rng.random() < 0.05 else bytes(rng.randrange(256) for _ in range(
            rng.choice([0, 127, 128, 20_000]))) for _ in range(count)]
        stamps = [1_700_000_000_000 + rng.randrange(-10, 10**7) for _ in range(count)]
        data = _plain_batch(keys, values, stamps)
        expected = [fields(r) for r in DefaultRecordBatch(data)]
        decoded = kafka_wire.decode_batch_records(DefaultRecordBatch(data))
        assert decoded is not None
        assert [fields(r) for r in decoded] == expected
    # A record with headers is left to kafka-python.
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    builder.append(0, 1, b"k", b"v", [("h", b"x")])
    assert kafka_wire.decode_batch_records(DefaultRecordBatch(bytes(builder.build()))) is None


@pytest.mark.kafka
@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "per-message fallback"])
def test_batch_writer_messages_read_back_as_sent_and_transactions_cover_them(
        topics: Settings, bulk: bool) -> None:
    import pyarrow as pa

    frame = generator.generate_frame(3_000, seed=13)
    values = kafka_mode.encode_frame_arrow(frame)
    keys = kafka_mode._key_array(frame)
    producer = kafka_mode.make_producer(topics)
    try:
        writer = kafka_wire.BatchWriter(producer, max_batch_bytes=64 * 1024)
        assert writer.supported, "kafka-python's internals differ from those BatchWriter uses"
        writer.supported = bulk  # False: what a kafka-python with other internals gets
        partitions = kafka_wire.KeyPartitions(producer, topics.topic_transactions).arrow(keys)
        writer.send(topics.topic_transactions, partitions, keys, values)
        # A keyless message in between, through the usual send.
        producer.send(topics.topic_transactions, value=b"{}", partition=0)
        writer.send(topics.topic_transactions, partitions[:5], keys[:5], values[:5])
        producer.flush(timeout=30)
        assert not writer.failures.count
    finally:
        producer.close(timeout=5)
    got = kafka_mode.read_topic(topics, topics.topic_transactions, timeout_s=30)
    sent = list(zip(partitions.tolist(), keys.to_pylist(), values.to_pylist(), strict=True))
    sent_per_partition: dict[int, list[Any]] = collections.defaultdict(list)
    for partition, key, value in [*sent, (0, None, b"{}"), *sent[:5]]:
        sent_per_partition[partition].append((key, value))
    got_per_partition: dict[int, list[Any]] = collections.defaultdict(list)
    for m in got:
        got_per_partition[m.partition].append((m.key, m.value))
    assert got_per_partition == sent_per_partition

    # In a transaction: nothing is visible to read_committed until the commit.
    producer = kafka_mode.make_producer(topics, transactional_id=f"t-{uuid.uuid4().hex}")
    try:
        producer.init_transactions()
        writer = kafka_wire.BatchWriter(producer)
        writer.supported = bulk
        small = pa.array([b"a" * 10] * 100, type=pa.binary())
        small_keys = pa.array([b"k%d" % i for i in range(100)], type=pa.binary())
        parts = kafka_wire.KeyPartitions(producer, topics.topic_alerts).arrow(small_keys)
        producer.begin_transaction()
        writer.send(topics.topic_alerts, parts, small_keys, small)
        producer.flush(timeout=30)  # written to the log, then aborted
        producer.abort_transaction()
        producer.begin_transaction()
        writer.send(topics.topic_alerts, parts, small_keys, small)
        producer.commit_transaction()
    finally:
        producer.close(timeout=5)
    committed = kafka_mode.read_topic(topics, topics.topic_alerts, timeout_s=20)
    assert len(committed) == 100
    everything = kafka_mode.read_topic(topics, topics.topic_alerts, timeout_s=20,
                                       isolation_level="read_uncommitted")
    assert len(everything) == 200


def test_bulk_decoding_leaves_a_consumer_without_the_expected_internals_alone() -> None:
    class Other:  # a consumer whose fetcher kafka_wire does not know
        _fetcher = object()

    consumer = Other()
    fetcher = consumer._fetcher
    assert kafka_wire.use_bulk_decoding(consumer) is False
    assert consumer._fetcher is fetcher
    assert not hasattr(fetcher, "PartitionRecords")



@pytest.mark.kafka
def test_the_pinned_kafka_python_takes_the_bulk_paths(kafka: Settings) -> None:
    """Guards the speed: an upgrade that changes the internals must be noticed here."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**kafka_mode.client_config(kafka))
    producer = kafka_mode.make_producer(kafka)
    try:
        assert kafka_wire.use_bulk_decoding(consumer), kafka_wire.kafka_python_version()
        assert kafka_wire.BatchWriter(producer).supported, kafka_wire.kafka_python_version()
    finally:
        consumer.close()
        producer.close(timeout=5)
