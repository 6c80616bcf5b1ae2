"""Benchmark Spark mode: Kafka -> Spark -> Kafka, batch on parquet, latency, driver memory.

Usage::

    python benchmarks/bench_spark.py                      # 1,000,000 transactions
    python benchmarks/bench_spark.py --rows 200000 --latency-s 10 --no-real-time

What it measures, on fresh topics of its own:

1. stream: ``--rows`` transactions already in the input topic (loaded first, not
   timed) go through the streaming detector with ``availableNow``: parse, check, the
   four rules, and the processed / alerts / dead-letter writes back to Kafka. Figures:
   txn/s over the wall time (query start and stop included) and over Spark's own
   batch durations. Target >= 330,000 txn/s.
   Baseline: the same availableNow query that only copies each message to another
   topic (no parsing, no rules), on the same data, at the same moment.
2. batch: :func:`bankcourse.spark_mode.run_batch` on a parquet file of ``--rows``
   (read, check, rules, alerts written as JSON). Target >= 1,000,000 txn/s.
   Baseline: a plain ``spark.read.parquet`` scan of the same file into the noop sink.
3. latency: the detector already running while kafka_mode's producer sends at a steady
   ``--rate-per-s`` for ``--latency-s`` seconds; per alert, its Kafka timestamp minus
   its transaction's (both CreateTime on this machine's clock), p50 and p99, for
   micro-batch (back to back triggers, asynchronous progress tracking) and, beside
   it, Spark's real-time mode (``trigger(realTime=...)``). Target p99 < 1 s in micro-batch.
4. memory: the driver JVM's resident memory (RSS), sampled through the run; its peak.

The machine may be shared: the load average is printed and the ratios to the
baselines are the figures to compare between runs.

Expected output: four blocks (stream, batch, latency, memory) with txn/s, ms and MiB,
then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bankcourse import broker, dataio, kafka_mode, spark_mode, spark_session
from bankcourse.settings import Settings

log = logging.getLogger("bench_spark")


class RssSampler:
    """Samples a process's resident memory every ``interval_s`` in a thread (MiB)."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.samples: list[float] = []
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._process.memory_info().rss / 2**20)
            except psutil.Error:
                return
            self._stop.wait(self._interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def fresh_topics(settings: Settings, label: str) -> Settings:
    """Settings with four new topics for one phase (created now)."""
    suffix = f"{label}-{uuid.uuid4().hex[:8]}"
    topics = settings.replace(topic_transactions=f"bench-tx-{suffix}",
                              topic_alerts=f"bench-alerts-{suffix}",
                              topic_processed=f"bench-processed-{suffix}",
                              topic_dead_letter=f"bench-dlq-{suffix}")
    spark_mode.ensure_topics(topics)
    return topics


def preload(spark: Any, settings: Settings, parquet: Path, how: str) -> float:
    """Put the dataset into the input topic (not part of the measurement); seconds taken.

    ``kafka-mode`` uses the course's producer; ``spark`` writes the same JSON with a
    Spark batch job (faster on a busy machine).
    """
    began = time.perf_counter()
    if how == "kafka-mode":
        kafka_mode.produce(settings, parquet, progress=False)
    else:
        from pyspark.sql import functions as F

        frame = spark.read.parquet(str(parquet))
        columns = [(F.date_format("event_time", spark_mode.EVENT_TIME_FORMAT)
                    if c == "event_time" else F.col(c)).alias(c) for c in frame.columns]
        frame.select(F.col("nameOrig").alias("key"),
                     F.to_json(F.struct(*columns)).alias("value")) \
            .write.format("kafka").options(**spark_mode.kafka_options(settings)) \
            .option("topic", settings.topic_transactions).save()
    return time.perf_counter() - began


def copy_baseline(spark: Any, settings: Settings, checkpoint: Path) -> dict[str, float]:
    """availableNow query that only copies messages to another topic: the baseline."""
    messages = spark_mode.read_transactions(spark, settings)
    began = time.perf_counter()
    query = messages.select("key", "value").writeStream.format("kafka") \
        .options(**spark_mode.kafka_options(settings)) \
        .option("topic", settings.topic_processed) \
        .option("checkpointLocation", str(checkpoint)).trigger(availableNow=True).start()
    try:
        query.awaitTermination(1800)
    finally:
        query.stop()
    seconds = time.perf_counter() - began
    rows = sum(p["numInputRows"] for p in query.recentProgress)
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def bench_stream(spark: Any, settings: Settings, parquet: Path, rows: int, how: str,
                 work: Path) -> dict[str, Any]:
    topics = fresh_topics(settings, "stream")
    load_s = preload(spark, topics, parquet, how)
    print(f"  loaded {rows:,} messages into {topics.topic_transactions} in {load_s:.1f} s "
          f"({how})", flush=True)
    report = spark_mode.run_detector(spark, topics, checkpoint_dir=work / "ck-stream",
                                     timeout_s=1800, query_name="bench_stream")
    busy_s = sum(p["duration_ms"].get("triggerExecution", 0) for p in report.progress) / 1000
    baseline = copy_baseline(spark, fresh_copy_target(topics), work / "ck-copy")
    return {
        "rows": report.rows, "valid": report.valid, "dead_letters": report.dead_letters,
        "alerts": report.alerts, "batches": report.batches, "seconds": report.seconds,
        "rows_per_s": report.rows_per_s,
        "busy_rows_per_s": report.rows / busy_s if busy_s else 0.0,
        "baseline_copy_rows_per_s": baseline["rows_per_s"],
        "ratio_to_copy": report.rows_per_s / baseline["rows_per_s"],
    }


def fresh_copy_target(settings: Settings) -> Settings:
    """The same input topic, a new output topic for the copy baseline."""
    target = settings.replace(topic_processed=f"{settings.topic_processed}-copy")
    spark_mode.ensure_topics(target)
    return target


def bench_batch(spark: Any, settings: Settings, parquet: Path, work: Path) -> dict[str, Any]:
    began = time.perf_counter()
    spark.read.parquet(str(parquet)).write.format("noop").mode("overwrite").save()
    scan_s = time.perf_counter() - began
    report = spark_mode.run_batch(spark, parquet, settings, work / "batch")
    rows_per_s = report["rows"] / report["seconds"]
    return {
        "rows": report["rows"], "alerts": report["alerts"], "seconds": report["seconds"],
        "rows_per_s": rows_per_s, "baseline_scan_rows_per_s": report["rows"] / scan_s,
        "ratio_to_scan": rows_per_s / (report["rows"] / scan_s),
    }


def bench_latency(spark: Any, settings: Settings, trigger: str, rate_per_s: float,
                  duration_s: float, work: Path) -> dict[str, Any]:
    """Produce at a steady rate into a running detector; produce -> alert latency."""
    topics = fresh_topics(settings, trigger)
    query, listener = spark_mode.start_detector(
        spark, topics, checkpoint_dir=work / f"ck-{trigger}", trigger=trigger,
        interval_s=0 if trigger == "processing-time" else 30, starting_offsets="earliest",
        query_name=f"bench_latency_{trigger.replace('-', '_')}",
        async_progress=trigger == "processing-time")
    try:
        # Warm up: the first records pay for code generation and the Kafka clients.
        # They have txn_ids of their own and are left out of the figures.
        from bankcourse import generator

        warm = generator.generate_frame(200, seed=5, start_row=50_000_000)
        warm_ids = set(warm["txn_id"])
        kafka_mode.produce(topics, warm, progress=False)
        warm_deadline = time.monotonic() + 180
        while time.monotonic() < warm_deadline:
            seen = {json.loads(m.value)["txn_id"]
                    for m in kafka_mode.read_topic(topics, topics.topic_processed, timeout_s=10)}
            if warm_ids <= seen:
                break
            time.sleep(0.5)
        batches_before = len(listener.progress)
        frames = dataio.iter_frames(Path(settings.data_dir) / "latency.parquet")
        kafka_mode.produce(topics, frames, rate_per_s=rate_per_s, duration_s=duration_s,
                           progress=False)
        deadline = time.monotonic() + 60
        sent = {json.loads(m.value)["txn_id"]: m.timestamp_ms
                for m in kafka_mode.read_topic(topics, topics.topic_transactions,
                                               timeout_s=60)}
        sent = {k: v for k, v in sent.items() if k not in warm_ids}
        alerts: list[Any] = []
        while time.monotonic() < deadline:
            alerts = kafka_mode.read_topic(topics, topics.topic_alerts, timeout_s=30)
            if alerts and len(alerts) >= 0.99 * _expected_alerts(sent) + len(warm_ids) * 0.3:
                break
            time.sleep(1)
    finally:
        query.stop()
        spark.streams.removeListener(listener)
    latencies = np.array([a.timestamp_ms - sent[json.loads(a.value)["txn_id"]]
                          for a in alerts if json.loads(a.value)["txn_id"] in sent], float)
    parts: dict[str, list[float]] = {}
    for progress in listener.progress[batches_before:]:
        for key, value in progress["duration_ms"].items():
            parts.setdefault(key, []).append(value)
    return {
        "trigger": trigger, "sent": len(sent), "alerts": int(len(latencies)),
        "batches": len(listener.progress) - batches_before,
        "batch_ms_median": {k: float(np.median(v)) for k, v in parts.items()},
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
        "max_ms": float(latencies.max()) if len(latencies) else None,
    }


_EXPECTED: dict[int, int] = {}


def _expected_alerts(sent: dict[str, int]) -> int:
    """How many alerts the sent transactions give (from the latency dataset)."""
    return _EXPECTED.get(len(sent), int(len(sent) * 0.3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="transactions for the stream and batch phases (default 1000000)")
    parser.add_argument("--rate-per-s", type=float, default=2_000,
                        help="steady producer rate of the latency phase (default 2000)")
    parser.add_argument("--latency-s", type=float, default=15,
                        help="seconds of steady producing per latency run (default 15)")
    parser.add_argument("--no-real-time", action="store_true",
                        help="skip the real-time mode latency run")
    parser.add_argument("--preload", choices=("kafka-mode", "spark"), default="kafka-mode",
                        help="how the stream phase's backlog is loaded (default kafka-mode)")
    parser.add_argument("--skip", nargs="*", default=(), choices=("stream", "batch", "latency"),
                        help="phases to skip")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    settings = Settings.from_env()
    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    started_broker = False
    if not settings.external_kafka and not broker.is_running(settings):
        broker.start(settings)
        started_broker = True
    results: dict[str, Any] = {"rows": args.rows, "cpus": os.cpu_count(),
                               "load_average_1m_before": os.getloadavg()[0]}
    spark = spark_session.get_session(settings)
    try:
        pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
        with RssSampler(pid) as rss:
            parquet = dataio.ensure_dataset(settings, rows=args.rows, seed=42, fmt="parquet")
            if "stream" not in args.skip:
                print("stream: Kafka -> Spark -> Kafka (availableNow)", flush=True)
                results["stream"] = s = bench_stream(spark, settings, parquet, args.rows,
                                                     args.preload, work)
                print(f"  {s['rows']:,} txn in {s['seconds']:.1f} s: {s['rows_per_s']:,.0f} "
                      f"txn/s wall, {s['busy_rows_per_s']:,.0f} txn/s in batches "
                      f"({s['batches']} batches, {s['alerts']:,} alerts); copy baseline "
                      f"{s['baseline_copy_rows_per_s']:,.0f} txn/s; ratio "
                      f"{s['ratio_to_copy']:.2f}", flush=True)
            if "batch" not in args.skip:
                print("batch: parquet -> alerts (spark.read)", flush=True)
                results["batch"] = b = bench_batch(spark, settings, parquet, work)
                print(f"  {b['rows']:,} txn in {b['seconds']:.2f} s: {b['rows_per_s']:,.0f} "
                      f"txn/s; scan baseline {b['baseline_scan_rows_per_s']:,.0f} txn/s; "
                      f"ratio {b['ratio_to_scan']:.2f}", flush=True)
            if "latency" not in args.skip:
                rows = int(args.rate_per_s * args.latency_s) + 1
                from bankcourse import generator, rules

                frame = generator.generate_frame(rows, seed=77)
                _EXPECTED[rows] = int(rules.evaluate_frame(frame).any(axis=1).sum())
                generator.write_dataset(Path(settings.data_dir) / "latency.parquet", rows, 77)
                triggers = ["processing-time"] + ([] if args.no_real_time else ["real-time"])
                results["latency"] = []
                for trigger in triggers:
                    print(f"latency: {trigger} at {args.rate_per_s:,.0f} txn/s for "
                          f"{args.latency_s:.0f} s", flush=True)
                    lat = bench_latency(spark, settings, trigger, args.rate_per_s,
                                        args.latency_s, work)
                    results["latency"].append(lat)
                    print(f"  {lat['alerts']:,} alerts of {lat['sent']:,} txn: p50 "
                          f"{lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms; "
                          f"{lat['batches']} batches, median ms {lat['batch_ms_median']}",
                          flush=True)
        results["driver_rss_mb_peak"] = max(rss.samples) if rss.samples else None
        results["driver_rss_mb_end"] = spark_session.driver_rss_mb(spark)
        results["driver_memory_mb_setting"] = settings.spark_driver_memory_mb
        print(f"memory: driver JVM RSS peak {results['driver_rss_mb_peak']:.0f} MiB, end "
              f"{results['driver_rss_mb_end']:.0f} MiB (heap setting "
              f"{settings.spark_driver_memory_mb} MB)")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
        if started_broker:
            broker.stop(settings)
    results["load_average_1m_after"] = os.getloadavg()[0]
    print(f"load average (1 min) before {results['load_average_1m_before']:.1f}, after "
          f"{results['load_average_1m_after']:.1f} on {os.cpu_count()} CPUs")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
