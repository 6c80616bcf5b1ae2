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


# --- whole fetches: the bulk PartitionRecords against kafka-python's own ------------------

AbortedTxn = collections.namedtuple("AbortedTxn", ["producer_id", "first_offset"])


def _with_base_offset(data: bytes, base_offset: int) -> bytes:
    """A record batch moved to ``base_offset`` (the offset is outside the batch's CRC)."""
    import struct

    return struct.pack(">q", base_offset) + data[8:]


def _batch(base_offset: int, count: int, *, producer_id: int = -1, transactional: bool = False,
           compression: int = 0, headers: bool = False, stamp: int = 1_700_000_000_000,
           ) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(2, compression, transactional, producer_id,
                                        0 if producer_id >= 0 else -1,
                                        0 if producer_id >= 0 else -1, 1 << 20)
    for i in range(count):
        builder.append(i, stamp + 7 * i, None if i % 4 == 3 else b"acct-%d" % (base_offset + i),
                       b'{"n": %d}' % (base_offset + i) if i % 5 != 4 else None,
                       [("trace", b"t%d" % i)] if headers and i == 1 else [])
    return _with_base_offset(bytes(builder.build()), base_offset)


def _marker(base_offset: int, producer_id: int, *, commit: bool) -> bytes:
    """A control batch ending a transaction (kafka-python's builder cannot make one)."""
    import struct

    import crc32c
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(2, 0, True, producer_id, 0, -1, 1 << 20)
    builder.append(0, 1_700_000_000_000, struct.pack(">hh", 0, 1 if commit else 0),
                   struct.pack(">hi", 0, 0), [])
    data = bytearray(_with_base_offset(bytes(builder.build()), base_offset))
    attributes = struct.unpack_from(">h", data, 21)[0] | 0x20  # the control flag
    struct.pack_into(">h", data, 21, attributes)
    struct.pack_into(">I", data, 17, crc32c.crc32c(bytes(data[21:])))
    return bytes(data)


def _fetches() -> dict[str, tuple[bytes, list[AbortedTxn]]]:
    """Fetched partition data of several shapes, with the aborted transactions in them."""
    gzip = 1
    return {
        "plain batches": (_batch(0, 6) + _batch(6, 1) + _batch(7, 9), []),
        "transactions between plain batches": (
            _batch(0, 5) + _batch(5, 3, producer_id=7, transactional=True)
            + _marker(8, 7, commit=False) + _batch(9, 4)
            + _batch(13, 2, producer_id=8, transactional=True) + _marker(15, 8, commit=True)
            + _batch(16, 5, producer_id=9),  # idempotent, not transactional
            [AbortedTxn(7, 5)]),
        "a compressed batch between plain ones": (
            _batch(0, 4) + _batch(4, 6, compression=gzip) + _batch(10, 3), []),
        "a record with headers between plain batches": (
            _batch(0, 4) + _batch(4, 3, headers=True) + _batch(7, 5), []),
    }


def _take_all(records_class: type, data: bytes, aborted: list[AbortedTxn], isolation: int,
              fetch_offset: int, step: int) -> tuple[list[Any], list[int], tuple[int, int]]:
    from kafka.record.memory_records import MemoryRecords
    from kafka.structs import TopicPartition

    part = records_class(fetch_offset, TopicPartition("t", 3), MemoryRecords(data),
                         check_crcs=True, isolation_level=isolation,
                         aborted_transactions=aborted)
    taken: list[Any] = []
    positions: list[int] = []
    while part:
        got = part.take(step)
        taken.extend((*r[:8], list(r.headers), *r[9:]) for r in got)
        positions.append(part.next_fetch_offset)
        if not got:
            break
    return taken, positions, (part.records_read, part.bytes_read)


def _bulk_records_class() -> type:
    from types import SimpleNamespace

    from kafka.consumer.fetcher import Fetcher

    consumer = SimpleNamespace(_fetcher=SimpleNamespace(PartitionRecords=Fetcher.PartitionRecords))
    assert kafka_wire.use_bulk_decoding(consumer)
    return consumer._fetcher.PartitionRecords


@pytest.mark.parametrize("shape", list(_fetches()))
@pytest.mark.parametrize("isolation", [0, 1], ids=["read_uncommitted", "read_committed"])
def test_bulk_fetches_give_kafka_pythons_records_positions_and_counts(shape: str,
                                                                    isolation: int) -> None:
    from kafka.consumer.fetcher import Fetcher

    data, aborted = _fetches()[shape]
    bulk = _bulk_records_class()
    for fetch_offset, step in ((0, 1), (0, 4), (2, 5), (0, 1_000)):
        expected = _take_all(Fetcher.PartitionRecords, data, aborted, isolation,
                             fetch_offset, step)
        got = _take_all(bulk, data, aborted, isolation, fetch_offset, step)
        assert got == expected, (fetch_offset, step)
    if isolation == 1 and shape.startswith("transactions"):
        offsets = [r[3] for r in expected[0]]
        assert not set(offsets) & {5, 6, 7, 8, 15}, "aborted records and markers are skipped"


def test_plain_batches_are_built_in_bulk_and_a_corrupt_one_still_fails() -> None:
    from kafka.errors import CorruptRecordError
    from kafka.record.memory_records import MemoryRecords
    from kafka.structs import TopicPartition

    bulk = _bulk_records_class()
    data, _ = _fetches()["plain batches"]
    part = bulk(0, TopicPartition("t", 0), MemoryRecords(data))
    records = part.take(100)
    assert len(records) == 16
    # The bulk path's mark: one shared immutable "no headers" instead of a list each.
    assert all(r.headers == () for r in records)
    corrupt = bytearray(data)
    corrupt[-3] ^= 0xFF  # a byte of the last batch's last value
    part = bulk(0, TopicPartition("t", 0), MemoryRecords(bytes(corrupt)))
    assert len(part.take(7)) == 7  # the first two batches are sound
    with pytest.raises(CorruptRecordError, match="CRC"):
        part.take(100)


def _read_all(settings: Settings, topic: str, *, bulk: bool, isolation: str) -> list[Any]:
    """Every message of ``topic`` up to its end, in small polls; bounded by 30 s."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka_mode.client_config(settings), enable_auto_commit=False,
                             isolation_level=isolation, max_poll_records=37,
                             fetch_max_wait_ms=50)
    try:
        assert kafka_wire.use_bulk_decoding(consumer) if bulk else True
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(parts)
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, "the topic was not read to its end in 30 s"
            for tp, batch in consumer.poll(timeout_ms=200).items():
                out.extend((tp.partition, m.offset, m.timestamp, m.key, m.value,
                            list(m.headers), m.serialized_value_size) for m in batch)
        return sorted(out)
    finally:
        consumer.close()


@pytest.mark.kafka
def test_a_real_topic_of_every_batch_kind_reads_the_same_in_bulk(topics: Settings) -> None:
    topic = topics.topic_alerts
    plain = kafka_mode.make_producer(topics)
    gzip = kafka_mode.make_producer(topics, compression_type="gzip")
    txn = kafka_mode.make_producer(topics, transactional_id=f"t-{uuid.uuid4().hex}")
    try:
        for i in range(300):
            plain.send(topic, key=b"k%d" % (i % 17), value=b"v%d" % i)
        plain.flush(timeout=30)
        txn.init_transactions()
        for commit in (False, True):
            txn.begin_transaction()
            for i in range(50):
                txn.send(topic, key=b"k%d" % i, value=b"%s %d" % (b"kept" if commit else b"no", i))
            txn.flush(timeout=30)
            (txn.commit_transaction if commit else txn.abort_transaction)()
        for i in range(40):  # plain batches after the transaction markers
            plain.send(topic, key=b"k%d" % i, value=b"after %d" % i)
        plain.flush(timeout=30)
        # Batches kafka-python decodes itself, then plain ones again.
        for i in range(20):
            plain.send(topic, key=b"h", value=b"with headers", headers=[("n", b"%d" % i)])
        plain.flush(timeout=30)
        for i in range(30):
            gzip.send(topic, key=b"k%d" % i, value=b"z" * i)
        gzip.flush(timeout=30)
        for i in range(10):
            plain.send(topic, key=b"k%d" % i, value=b"last %d" % i)
        plain.flush(timeout=30)
    finally:
        for producer in (plain, gzip, txn):
            producer.close(timeout=5)
    for isolation, count in (("read_committed", 450), ("read_uncommitted", 500)):
        expected = _read_all(topics, topic, bulk=False, isolation=isolation)
        assert len(expected) == count
        assert _read_all(topics, topic, bulk=True, isolation=isolation) == expected
