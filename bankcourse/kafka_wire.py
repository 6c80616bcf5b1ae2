"""Kafka's record format in bulk, around kafka-python: partitioning, encoding, decoding.

kafka-python does its per-message work in Python: ``KafkaProducer.send`` checks, hashes
the key, estimates the size and appends field by field; the consumer parses every
fetched record the same way. At tens of thousands of messages a second that work, not
the fraud rules, is what a detector spends its time on. This module does it a batch at
a time with numpy and Arrow:

* :func:`murmur2_many` / :func:`murmur2_arrow` and :class:`KeyPartitions`: the partition
  of each key, as Kafka's default partitioner picks it;
* :func:`encode_records` and :class:`BatchWriter`: whole record batches handed to a
  kafka-python producer's accumulator; its sender thread still does acks, retries,
  idempotence and transactions;
* :func:`decode_batch_records` and :func:`use_bulk_decoding`: a consumer that decodes
  each fetched record batch at once and builds a plain batch's ``ConsumerRecord``
  objects in one go; transactional, control and compressed batches and records with
  headers stay kafka-python's own.

The bulk paths use kafka-python internals (tested with the version pyproject.toml pins).
Both check them first and, when they differ, fall back to the public per-message API,
logging why: slower, never wrong. ``tests/test_kafka_wire.py`` proves the bytes and the
records equal kafka-python's own.
"""

from __future__ import annotations

import functools
import itertools
import logging
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

ACK_TIMEOUT_MS = 15_000
"""How long :class:`BatchWriter` waits for the broker to acknowledge its oldest batch
when too many bytes are pending (the producer's own ``max_block_ms`` in kafka_mode)."""


class SendFailures:
    """Counts failed sends (an errback per future); keeps the first error."""

    def __init__(self) -> None:
        self.count = 0
        self.first: BaseException | None = None

    def __call__(self, exc: BaseException) -> None:
        self.count += 1
        if self.first is None:
            self.first = exc


_MURMUR2_M = np.uint32(0x5BD1E995)


def murmur2_many(keys: Sequence[bytes]) -> np.ndarray:
    """Kafka's murmur2 hash of each key (as the Java client computes it), vectorised.

    Keys of equal length are hashed together with numpy's wrapping uint32 arithmetic,
    which gives the same numbers as ``kafka.partitioner.default.murmur2`` (taken
    ``& 0x7FFFFFFF``) without a Python loop per byte.

    Returns:
        One uint32 hash per key.
    """
    out = np.empty(len(keys), dtype=np.uint32)
    if not len(keys):
        return out
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        data = np.frombuffer(b"".join([keys[i] for i in rows]), dtype=np.uint8)
        out[rows] = _murmur2_same_length(data.reshape(len(rows), length), length)
    return out


def _murmur2_same_length(data: np.ndarray, length: int) -> np.ndarray:
    m = _MURMUR2_M
    h = np.full(len(data), (0x9747B28C ^ length) & 0xFFFFFFFF, dtype=np.uint32)
    blocks = length // 4
    if blocks:
        words = np.ascontiguousarray(data[:, :blocks * 4]).view("<u4")
        for b in range(blocks):
            k = words[:, b] * m
            k ^= k >> np.uint32(24)
            k *= m
            h *= m
            h ^= k
    tail, base = length & 3, blocks * 4
    if tail >= 3:
        h ^= data[:, base + 2].astype(np.uint32) << np.uint32(16)
    if tail >= 2:
        h ^= data[:, base + 1].astype(np.uint32) << np.uint32(8)
    if tail >= 1:
        h ^= data[:, base].astype(np.uint32)
        h *= m
    h ^= h >> np.uint32(13)
    h *= m
    h ^= h >> np.uint32(15)
    return h


class KeyPartitions:
    """The partition of each key, as Kafka's default partitioner picks it.

    kafka-python hashes every key in pure Python on each ``send``; here a whole batch
    of keys is hashed at once (:func:`murmur2_many`, the Java client's rule, so every
    client puts an account on the same partition) and the partition is passed to
    ``send`` explicitly.
    """

    def __init__(self, producer: Any, topic: str) -> None:
        self._partitions = np.asarray(sorted(producer.partitions_for(topic)), dtype=np.int64)

    def many(self, keys: Sequence[bytes | None]) -> list[int | None]:
        """The partition of each key (None for a None key: the producer chooses)."""
        present = [i for i, k in enumerate(keys) if k is not None]
        if len(present) == len(keys):
            hashes = murmur2_many(keys)  # type: ignore[arg-type]
            return self._partitions[(hashes & 0x7FFFFFFF) % len(self._partitions)].tolist()
        out: list[int | None] = [None] * len(keys)
        if present:
            hashes = murmur2_many([keys[i] for i in present])
            chosen = self._partitions[(hashes & 0x7FFFFFFF) % len(self._partitions)].tolist()
            for i, partition in zip(present, chosen, strict=True):
                out[i] = partition
        return out

    def arrow(self, keys: pa.Array) -> np.ndarray:
        """The partition of each key of an Arrow binary array, as int64.

        A null key (no account) gets a partition in turn, as Kafka spreads keyless
        messages; a keyed one the partition Kafka's default partitioner picks.
        """
        count = len(self._partitions)
        chosen = self._partitions[(murmur2_arrow(keys) & 0x7FFFFFFF) % count]
        if keys.null_count:
            nulls = np.flatnonzero(np.asarray(keys.is_null()))
            chosen[nulls] = self._partitions[np.arange(len(nulls)) % count]
        return chosen


def single_chunk(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _binary_parts(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The int64 offsets (length + 1, from 0) and the data bytes of a binary array."""
    array = single_chunk(array)
    array = array.cast(pa.binary()) if not pa.types.is_binary(array.type) else array
    if array.null_count:
        array = pc.fill_null(array, b"")
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[
        array.offset:array.offset + len(array) + 1].astype(np.int64)
    data = array.buffers()[2]
    raw = (np.frombuffer(data, dtype=np.uint8) if data is not None and data.size
           else np.zeros(0, dtype=np.uint8))
    return offsets - offsets[0], raw[offsets[0]:offsets[-1]]


def murmur2_arrow(keys: pa.Array) -> np.ndarray:
    """:func:`murmur2_many` of an Arrow binary or string array (nulls hash as empty)."""
    offsets, data = _binary_parts(keys)
    lengths = np.diff(offsets)
    out = np.empty(len(lengths), dtype=np.uint32)
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        index = offsets[rows][:, None] + np.arange(length, dtype=np.int64)
        out[rows] = _murmur2_same_length(data[index].reshape(len(rows), length), length)
    return out


_VARINT_SHIFTS = np.arange(0, 35, 7, dtype=np.uint64)


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kafka's zigzag varints of int64 ``values`` (each below 2**34 in size): a
    ``(n, 5)`` byte matrix and each varint's length in bytes."""
    zigzag = ((values << 1) ^ (values >> 63)).astype(np.uint64)
    lengths = 1 + sum((zigzag >= np.uint64(1 << bits)).astype(np.int64)
                      for bits in (7, 14, 21, 28))
    matrix = ((zigzag[:, None] >> _VARINT_SHIFTS) & np.uint64(0x7F)).astype(np.uint8)
    matrix |= (np.arange(5) < (lengths - 1)[:, None]).astype(np.uint8) << 7
    return matrix, lengths


def _binary_array(matrix: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Row ``i`` of ``matrix`` cut to ``lengths[i]`` bytes, as an Arrow binary array."""
    keep = np.arange(matrix.shape[1]) < lengths[:, None]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), len(lengths), [
        None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(matrix[keep]))])


def encode_records(keys: pa.Array, values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Kafka v2 records (no headers, timestamp delta 0) for ``keys``/``values``, in bulk.

    Record ``i`` gets offset delta ``i``: pass the rows of one record batch.

    Returns:
        ``(records, offsets)``: the records as one Arrow binary array (their bytes lie
        end to end in its data buffer) and the int64 byte offsets of each record in it.
    """
    n = len(values)
    index = np.arange(n, dtype=np.int64)
    key_offsets, _ = _binary_parts(keys)
    value_offsets, _ = _binary_parts(values)
    key_len = np.diff(key_offsets)
    if keys.null_count:
        key_len[np.asarray(keys.is_null())] = -1
    value_len = np.diff(value_offsets)
    delta, delta_n = _varints(index)
    klen, klen_n = _varints(key_len)
    vlen, vlen_n = _varints(value_len)
    # body: attributes, timestamp delta, offset delta, key, value, header count
    body = 2 + delta_n + klen_n + np.maximum(key_len, 0) + vlen_n + value_len + 1
    blen, blen_n = _varints(body)
    zeros = np.zeros((n, 2), dtype=np.uint8)
    head = np.hstack([blen, zeros, delta, klen])
    head_n = np.hstack([blen_n[:, None], np.full((n, 2), 1), delta_n[:, None],
                        klen_n[:, None]])
    # Lay the pieces of the head out left-aligned: varint, 0, 0, varint, varint.
    starts = np.cumsum(head_n, axis=1) - head_n
    widths = np.array([5, 1, 1, 5, 5])
    column = np.repeat(np.arange(5), widths)
    within = np.concatenate([np.arange(w) for w in widths])
    keep = within < head_n[:, column]
    packed = np.zeros((n, 17), dtype=np.uint8)
    rows, cols = np.nonzero(keep)
    packed[rows, starts[rows, column[cols]] + within[cols]] = head[rows, cols]
    prefix = _binary_array(packed, head_n.sum(axis=1))
    middle = _binary_array(vlen, vlen_n)
    key_bytes = keys.cast(pa.binary()) if not pa.types.is_binary(keys.type) else keys
    records = pc.binary_join_element_wise(
        prefix, pc.fill_null(key_bytes, b""), middle, values.cast(pa.binary()),
        pa.scalar(b"\x00"), pa.scalar(b""))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(blen_n + body, out=offsets[1:])
    return records, offsets


def _records_bytes(records: pa.Array) -> memoryview:
    """The bytes of all ``records`` (contiguous in the array's data buffer)."""
    offsets = np.frombuffer(records.buffers()[1], dtype=np.int32)[
        records.offset:records.offset + len(records) + 1]
    data = records.buffers()[2]
    return memoryview(data)[int(offsets[0]):int(offsets[-1])]


class BatchWriter:
    """Sends many keyed records to a kafka-python producer a record batch at a time.

    ``KafkaProducer.send`` costs tens of microseconds of Python per message (checks,
    partitioner, size estimate, a future, appending field by field). Here the records
    of each partition are encoded together by numpy and Arrow into Kafka's record
    format (:func:`encode_records`) and handed to the producer's accumulator as whole
    batches; its sender thread then sends them as it sends any batch (same acks,
    retries, idempotence sequence numbers and transactions). This uses kafka-python's
    internal classes: :attr:`supported` is False for a version whose internals differ,
    and then :meth:`send` falls back to ``producer.send`` per message.

    Fewer than ``per_message_below`` records go through ``producer.send`` one by one,
    which costs less than the bulk encoding's fixed cost of about a millisecond.

    Memory stays bounded: when more than ``max_pending_bytes`` wait unacknowledged,
    :meth:`send` waits for the oldest batches. Failed batches are counted in
    :attr:`failures`; ``producer.flush()`` waits for every batch, as for any send.
    """

    def __init__(self, producer: Any, *, max_batch_bytes: int = 512 * 1024,
                 max_pending_bytes: int = 32 << 20, per_message_below: int = 64) -> None:
        self.producer = producer
        self.per_message_below = per_message_below
        self.failures = SendFailures()
        self.max_batch_bytes = max_batch_bytes
        self.max_pending_bytes = max_pending_bytes
        self._pending: deque[tuple[Any, int]] = deque()
        self._pending_bytes = 0
        self.supported = _batches_supported(producer)

    def send(self, topic: str, partitions: Sequence[int] | np.ndarray, keys: pa.Array,
             values: pa.Array, timestamp_ms: int | None = None) -> None:
        """Queue ``values`` (Arrow binary) with ``keys`` (Arrow binary, nulls allowed)
        for ``topic``, each to its partition. All get the same timestamp (now)."""
        if not len(values):
            return
        keys, values = single_chunk(keys), single_chunk(values)
        partitions = np.asarray(partitions, dtype=np.int64)
        if not self.supported or len(values) < self.per_message_below:
            send = self.producer.send
            for partition, key, value in zip(partitions.tolist(), keys.to_pylist(),
                                             values.to_pylist(), strict=True):
                send(topic, value=value, key=key, partition=partition,
                     timestamp_ms=timestamp_ms).add_errback(self.failures)
            return
        stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        order = np.argsort(partitions, kind="stable")
        if not np.array_equal(order, np.arange(len(order))):
            take = pa.array(order)
            keys, values, partitions = keys.take(take), values.take(take), partitions[order]
        sizes = np.diff(_binary_parts(values)[0]) + np.diff(_binary_parts(keys)[0]) + 24
        bounds = np.flatnonzero(np.diff(partitions)) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(partitions)]
        for start, end in zip(starts, ends, strict=True):
            # split one partition's rows into batches of at most max_batch_bytes
            cumulative = np.cumsum(sizes[start:end])
            cut = (cumulative // self.max_batch_bytes).astype(np.int64)
            inner = (np.flatnonzero(np.diff(cut)) + 1 + start).tolist()
            for a, b in zip([start, *inner], [*inner, end], strict=True):
                self._append(topic, int(partitions[start]), keys.slice(a, b - a),
                             values.slice(a, b - a), stamp)
        self.producer._sender.wakeup()

    def _append(self, topic: str, partition: int, keys: pa.Array, values: pa.Array,
                stamp: int) -> None:
        from kafka.errors import IllegalStateError
        from kafka.producer.producer_batch import ProducerBatch
        from kafka.record.memory_records import MemoryRecordsBuilder
        from kafka.structs import TopicPartition

        producer = self.producer
        records, offsets = encode_records(keys, values)
        count = len(records)
        tp = TopicPartition(topic, partition)
        manager = producer._transaction_manager
        if manager is not None and manager.is_transactional():
            manager.maybe_add_partition_to_transaction(tp)
        accumulator = producer._accumulator
        # batch_size 0: the batch counts as full, so nothing else is appended to it
        # and the sender takes it at once.
        builder = MemoryRecordsBuilder(2, accumulator.config["compression_attrs"], 0)
        inner = builder._builder
        inner._buffer += _records_bytes(records)
        inner._first_timestamp = inner._max_timestamp = stamp
        inner._num_records = count
        inner._last_offset = count - 1
        builder._next_offset = count
        now = time.monotonic()
        batch = ProducerBatch(tp, builder, now=now)
        batch.max_record_size = int(np.diff(offsets).max())
        batch.produce_future.add_callback(functools.partial(self._done, self.failures))
        batch.produce_future.add_errback(self.failures)
        accumulator._appends_in_progress.increment()
        try:
            with accumulator._tp_lock(tp):
                if accumulator._closed:
                    raise IllegalStateError("RecordAccumulator is closed")
                accumulator._batches[tp].append(batch)
                accumulator._incomplete.add(batch)
        finally:
            accumulator._appends_in_progress.decrement()
        size = len(inner._buffer)
        self._pending.append((batch.produce_future, size))
        self._pending_bytes += size
        self._bound_memory()

    @staticmethod
    def _done(failures: SendFailures, result: tuple[int, int, Any]) -> None:
        error_of = result[2]
        if error_of is not None:
            failures(error_of(0))

    def _bound_memory(self) -> None:
        pending = self._pending
        while pending and (pending[0][0].is_done or
                           self._pending_bytes > self.max_pending_bytes):
            future, size = pending[0]
            if not future.is_done:
                self.producer._sender.wakeup()
                if not future.wait(timeout=ACK_TIMEOUT_MS / 1000):
                    from kafka.errors import KafkaTimeoutError

                    raise KafkaTimeoutError(f"no acknowledgement within {ACK_TIMEOUT_MS} ms")
            pending.popleft()
            self._pending_bytes -= size


def kafka_python_version() -> str:
    from kafka.version import __version__

    return str(__version__)


def _batches_supported(producer: Any) -> bool:
    """True when ``producer`` has the kafka-python internals :class:`BatchWriter` uses."""
    try:
        from kafka.producer.producer_batch import ProducerBatch  # noqa: F401
        from kafka.record.memory_records import MemoryRecordsBuilder

        accumulator = producer._accumulator
        builder = MemoryRecordsBuilder(2, 0, 0)
        inner = builder._builder
        needed = (hasattr(accumulator, name) for name in (
            "_tp_lock", "_batches", "_incomplete", "_appends_in_progress", "_closed",
            "config"))
        return (all(needed) and hasattr(producer, "_sender")
                and hasattr(producer, "_transaction_manager")
                and "compression_attrs" in accumulator.config
                and isinstance(getattr(inner, "_buffer", None), bytearray)
                and all(hasattr(inner, n) for n in ("_first_timestamp", "_max_timestamp",
                                                     "_num_records", "_last_offset"))
                and hasattr(builder, "_next_offset"))
    except (ImportError, AttributeError, TypeError, AssertionError):
        return False


# --- reading fetched record batches in bulk ----------------------------------------------


_VARINT_SPAN = np.arange(10, dtype=np.int64)
_VARINT_WEIGHTS = np.arange(0, 70, 7, dtype=np.uint64)


def _read_varints(data: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kafka zigzag varints starting at each position ``at`` of ``data``, decoded.

    Returns:
        The values (int64) and the position just after each.
    """
    index = np.minimum(at[:, None] + _VARINT_SPAN, len(data) - 1)
    raw = data[index]
    size = np.argmin(raw >= 0x80, axis=1) + 1
    keep = _VARINT_SPAN < size[:, None]
    parts = (raw & 0x7F).astype(np.uint64) << _VARINT_WEIGHTS
    unsigned = np.where(keep, parts, np.uint64(0)).sum(axis=1, dtype=np.uint64)
    values = (unsigned >> np.uint64(1)).astype(np.int64) ^ -(unsigned & np.uint64(1)).astype(
        np.int64)
    return values, at + size


class _Columns(NamedTuple):
    """The records of one plain batch as columns, in offset order."""

    sizes: list[int]
    offsets: list[int]
    stamps: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    key_sizes: list[int]
    value_sizes: list[int]


def _decode_columns(batch: Any) -> _Columns | None:
    """The records of an uncompressed kafka-python ``DefaultRecordBatch`` as columns, or
    None when the batch is not a plain one (see :func:`decode_batch_records`)."""
    if batch.compression_type or batch.is_control_batch:
        return None
    buffer = bytes(batch._buffer)
    count = batch._num_records
    pos = batch._pos
    starts: list[int] = []
    lengths: list[int] = []
    end = len(buffer)
    try:
        for _ in range(count):
            byte = buffer[pos]
            if byte < 0x80:
                unsigned, pos = byte, pos + 1
            else:
                unsigned, shift = byte & 0x7F, 7
                pos += 1
                while byte >= 0x80:
                    byte = buffer[pos]
                    unsigned |= (byte & 0x7F) << shift
                    shift += 7
                    pos += 1
            length = (unsigned >> 1) ^ -(unsigned & 1)
            starts.append(pos)
            lengths.append(length)
            pos += length
    except IndexError:
        return None
    if pos != end or not count:
        return None
    data = np.frombuffer(buffer, dtype=np.uint8)
    start = np.asarray(starts, dtype=np.int64)
    ts_delta, at = _read_varints(data, start + 1)  # after the attributes byte
    offset_delta, at = _read_varints(data, at)
    key_len, at = _read_varints(data, at)
    key_at = at
    value_len, at = _read_varints(data, at + np.maximum(key_len, 0))
    value_at = at
    header_count, at = _read_varints(data, at + np.maximum(value_len, 0))
    if header_count.any() or not np.array_equal(at, start + np.asarray(lengths)):
        return None
    if batch.timestamp_type == batch.LOG_APPEND_TIME:
        stamps = [batch.max_timestamp] * count
    else:
        stamps = (ts_delta + batch.first_timestamp).tolist()
    key_sizes, value_sizes = key_len.tolist(), value_len.tolist()
    keys = [buffer[a:a + n] if n >= 0 else None
            for a, n in zip(key_at.tolist(), key_sizes, strict=True)]
    values = [buffer[a:a + n] if n >= 0 else None
              for a, n in zip(value_at.tolist(), value_sizes, strict=True)]
    return _Columns(lengths, (offset_delta + batch.base_offset).tolist(), stamps, keys,
                    values, key_sizes, value_sizes)


def decode_batch_records(batch: Any) -> list[Any] | None:
    """The records of an uncompressed kafka-python ``DefaultRecordBatch``, decoded in bulk.

    Each record's start follows from the previous one's length (a short Python loop);
    its fields are then decoded for all records at once with numpy. Gives the same
    ``DefaultRecord`` objects as iterating the batch, or None when the batch is not a
    plain one (compressed, control, records with headers, or not well formed): then the
    caller iterates it the usual way, which also reports a corrupt batch.
    """
    from kafka.record.default_records import DefaultRecord

    columns = _decode_columns(batch)
    if columns is None:
        return None
    stamp_type = batch.timestamp_type
    return [DefaultRecord(size, offset, stamp, stamp_type, key, value, [])
            for size, offset, stamp, key, value in zip(
                columns.sizes, columns.offsets, columns.stamps, columns.keys, columns.values,
                strict=True)]


class _BulkBatch:
    """A kafka-python record batch whose iteration decodes all records at once."""

    __slots__ = ("_batch",)

    def __init__(self, batch: Any) -> None:
        self._batch = batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __iter__(self) -> Iterator[Any]:
        records = decode_batch_records(self._batch)
        return iter(records) if records is not None else iter(self._batch)


class _BulkRecords:
    """kafka-python ``MemoryRecords`` handing out :class:`_BulkBatch` batches (control and
    compressed batches as they are: kafka-python reads a control batch's marker with
    ``next(batch)``, and a compressed one decodes its own way)."""

    __slots__ = ("_records",)

    def __init__(self, records: Any) -> None:
        self._records = records

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)

    def next_batch(self) -> Any:
        from kafka.record.default_records import DefaultRecordBatch

        batch = self._records.next_batch()
        if (isinstance(batch, DefaultRecordBatch) and not batch.is_control_batch
                and not batch.compression_type):
            return _BulkBatch(batch)
        return batch


class _Pending:
    """Record batches: ``first``, then the rest of ``records``."""

    __slots__ = ("_first", "_records")

    def __init__(self, first: Any, records: Any) -> None:
        self._first, self._records = first, records

    def next_batch(self) -> Any:
        if self._first is None:
            return self._records.next_batch()
        batch, self._first = self._first, None
        return batch


_CONSUMER_RECORD_FIELDS = (
    "topic", "partition", "leader_epoch", "offset", "timestamp", "timestamp_type", "key",
    "value", "headers", "checksum", "serialized_key_size", "serialized_value_size",
    "serialized_header_size")


_NO_HEADERS: tuple[()] = ()
"""The headers of a record without any (one shared immutable empty sequence)."""


def _unpack_plain_first(part: Any, usual: Any, make: type, read_committed: Any, tp: Any,
                        records: Any, key_deserializer: Any, value_deserializer: Any,
                        ) -> Iterator[Any]:
    """A fetched partition's ``ConsumerRecord`` objects, plain batches built in bulk.

    A plain batch (format v2, not transactional, not a control batch, uncompressed, no
    headers) has nothing to filter: its records are made at once from
    :func:`_decode_columns`. At the first batch that is not plain, the rest of the fetch
    goes to kafka-python's own ``usual`` generator (``_unpack_records``), which handles
    transactions, aborted batches, control records, compression and deserializers. The
    positions, metrics and ends are kafka-python's: ``next_fetch_offset`` moves with each
    record handed out, and the partition is drained after the last batch.

    Args:
        part: the kafka-python ``PartitionRecords`` being read.
        usual: its own ``_unpack_records``.
        make: kafka-python's ``ConsumerRecord`` type.
        read_committed: kafka-python's ``IsolationLevel.READ_COMMITTED``.
    """
    from kafka.errors import CorruptRecordError

    if key_deserializer is not None or value_deserializer is not None:
        yield from usual(tp, records, key_deserializer, value_deserializer)
        return
    committed_only = part.isolation_level == read_committed
    topic, partition = tp.topic, tp.partition
    last = None
    batch = records.next_batch()
    while batch is not None:
        plain = getattr(batch, "_batch", batch)  # unwrap a _BulkBatch
        if (plain.magic != 2 or plain.is_transactional or plain.is_control_batch
                or plain.compression_type):
            break
        if part.check_crcs and not plain.validate_crc():
            raise CorruptRecordError(f"record batch of {tp.topic}-{tp.partition} at offset "
                                     f"{plain.base_offset} failed its CRC check")
        columns = _decode_columns(plain)
        if columns is None:
            break
        part.leader_epoch = epoch = plain.leader_epoch
        if committed_only and plain.has_producer_id():
            # Keeps kafka-python's queue of aborted transactions where its own loop would.
            part._consume_aborted_transactions_up_to(plain.last_offset)
        count = len(columns.offsets)
        built = list(map(tuple.__new__, itertools.repeat(make, count), zip(
            itertools.repeat(topic), itertools.repeat(partition), itertools.repeat(epoch),
            columns.offsets, columns.stamps, itertools.repeat(plain.timestamp_type),
            columns.keys, columns.values, itertools.repeat(_NO_HEADERS),
            itertools.repeat(None), columns.key_sizes, columns.value_sizes,
            itertools.repeat(-1))))
        part.records_read += count
        part.bytes_read += sum(columns.sizes)
        for record, offset in zip(built, columns.offsets, strict=True):
            part.next_fetch_offset = offset + 1
            yield record
        last = plain
        batch = records.next_batch()
    if batch is not None:
        yield from usual(tp, _Pending(batch, records), key_deserializer, value_deserializer)
        return
    if last is not None:
        part.next_fetch_offset = last.next_offset
    part.drain()


def use_bulk_decoding(consumer: Any) -> bool:
    """Make ``consumer`` decode each fetched record batch in bulk (:func:`decode_batch_records`).

    kafka-python parses every record field by field in Python and then builds each
    ``ConsumerRecord`` in a loop; the detector reads tens of thousands a second, for which
    that work was the largest cost of a poll. A plain batch's records are now made at once
    (:func:`_unpack_plain_first`), its checksum checked with kafka-python's own check;
    transactions, aborted batches, control records and compressed batches stay
    kafka-python's. Uses its internals: returns False, changing nothing, when they are
    not as expected.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    base = getattr(fetcher, "PartitionRecords", None)
    if base is None or not isinstance(base, type):
        return False
    module = sys.modules.get(base.__module__)
    make = getattr(module, "ConsumerRecord", None)
    read_committed = getattr(getattr(module, "IsolationLevel", None), "READ_COMMITTED", None)
    in_bulk = (getattr(make, "_fields", None) == _CONSUMER_RECORD_FIELDS
               and read_committed is not None
               and all(hasattr(base, name) for name in (
                   "_unpack_records", "_consume_aborted_transactions_up_to", "drain")))

    class BulkPartitionRecords(base):  # type: ignore[misc, valid-type]
        def __init__(self, fetch_offset: int, tp: Any, records: Any, *args: Any,
                     **kwargs: Any) -> None:
            super().__init__(fetch_offset, tp, _BulkRecords(records), *args, **kwargs)

        def _unpack_records(self, tp: Any, records: Any, key_deserializer: Any,
                            value_deserializer: Any) -> Iterator[Any]:
            usual = super()._unpack_records
            if not in_bulk:
                return usual(tp, records, key_deserializer, value_deserializer)
            return _unpack_plain_first(self, usual, make, read_committed,
                                       tp, records, key_deserializer, value_deserializer)

    fetcher.PartitionRecords = BulkPartitionRecords
    return True
