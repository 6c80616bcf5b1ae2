"""Benchmark Kafka mode: throughput end to end, latency at a steady rate, broker memory.

Usage::

    python benchmarks/bench_kafka.py                 # 200,000 rows, both modes
    python benchmarks/bench_kafka.py --rows 50000 --modes exactly-once --latency-s 10

For each detector mode it measures, on fresh topics:

1. produce: the producer alone streaming ``--rows`` transactions (txn/s);
2. detect: the detector alone working through that backlog (txn/s of batch work and of
   wall time, group join included);
3. end to end: a detector process already in its group while the producer streams
   ``--rows`` more; from the first send until the detector has made the last alert
   durable;
4. latency: the producer at each steady ``--latency-rates`` (txn/s) for ``--latency-s``
   seconds after a 2 s warm-up; produce time (the Kafka timestamp, ms) to alert
   durable, p50 and p99;

and the broker's resident memory (RSS) sampled through the run. Producer and detector
alone are also given per CPU-second of this process (time.process_time), a figure that
depends much less on what else shares the machine. Two baselines run on
the same machine at the same moment, so figures can be read as ratios when the machine
is shared: kafka-python sending the same pre-encoded bytes with default settings and no
keys, and a bare consumer that only counts the backlog.

Expected output: one block per mode with txn/s figures, latency p50/p99 in ms and the
broker's RSS in MiB, then the baselines. The targets are >= 50,000 txn/s end to end and
p99 < 50 ms at 2,000 txn/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import psutil

from bankcourse import broker, generator, kafka_mode
from bankcourse.settings import Settings

WARMUP_S = 2.0
"""Seconds of steady input left out of the latency figures (connections, first batches)."""


class RssSampler:
    """Samples a process's resident memory every ``interval_s`` in a thread."""

    def __init__(self, pid: int | None, interval_s: float = 0.5) -> None:
        self.samples: list[int] = []
        self._pid, self._interval_s = pid, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._pid is None:
            return
        process = psutil.Process(self._pid)
        while not self._stop.wait(self._interval_s):
            try:
                self.samples.append(process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary_mib(self) -> str:
        if not self.samples:
            return "n/a (broker pid unknown: external cluster?)"
        mib = [s / 2**20 for s in self.samples]
        return f"max {max(mib):.0f} MiB, mean {sum(mib) / len(mib):.0f} MiB"


def fresh_topics(settings: Settings) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    fresh = settings.replace(topic_transactions=f"bench-tx-{suffix}",
                             topic_alerts=f"bench-alerts-{suffix}",
                             topic_processed=f"bench-processed-{suffix}",
                             topic_dead_letter=f"bench-dlq-{suffix}")
    kafka_mode.ensure_topics(fresh)
    return fresh


def env_for(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "BANKCOURSE_KAFKA_PORT": str(settings.kafka_port),
        "BANKCOURSE_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "BANKCOURSE_TOPIC_TRANSACTIONS": settings.topic_transactions,
        "BANKCOURSE_TOPIC_ALERTS": settings.topic_alerts,
        "BANKCOURSE_TOPIC_PROCESSED": settings.topic_processed,
        "BANKCOURSE_TOPIC_DEAD_LETTER": settings.topic_dead_letter,
    })
    if settings.kafka_bootstrap_servers:
        env["KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka_bootstrap_servers
    return env


def wait_for_members(settings: Settings, group: str, timeout_s: float = 60) -> None:
    """Wait until the group is stable with a member holding partitions."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka_mode.client_config(settings))
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                info = admin.describe_groups([group]).get(group, {})
            except Exception:
                info = {}
            state = info.get("group_state", info.get("state"))
            if state == "Stable" and info.get("members"):
                return
            time.sleep(0.2)
    finally:
        admin.close()
    raise RuntimeError(f"detector group {group} did not become stable in {timeout_s} s")


def start_detector(settings: Settings, mode: str, group: str, max_messages: int,
                   latency_warmup_s: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bankcourse", "-q", "kafka", "detect", "--json",
         "--mode", mode, "--group", group, "--max-messages", str(max_messages),
         "--idle-timeout-s", "60", "--latency-warmup-s", str(latency_warmup_s)],
        env=env_for(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout_s: float = 600) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout_s)
    if process.returncode != 0:
        raise RuntimeError(f"detector failed: {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def bench_mode(settings: Settings, mode: str, frame: Any, rows: int,
               latency_rates: list[float], latency_s: float) -> dict[str, Any]:
    results: dict[str, Any] = {"mode": mode}

    # 1 + 2: produce alone, then detect the backlog alone.
    topics = fresh_topics(settings)
    cpu = time.process_time()
    produced = kafka_mode.produce(topics, frame, progress=False)
    results["produce_txn_per_cpu_s"] = rows / (time.process_time() - cpu)
    results["produce_txn_per_s"] = produced.rate_per_s
    cpu = time.process_time()
    report = kafka_mode.detect(topics, mode=mode, group=f"bench-{uuid.uuid4().hex[:6]}",
                               max_messages=rows, idle_timeout_s=30, keep_latencies=False)
    results["detect_txn_per_cpu_s"] = rows / (time.process_time() - cpu)
    results["detect_busy_txn_per_s"] = report.rows_per_s
    results["detect_wall_txn_per_s"] = report.consumed / report.seconds
    results["alerts"] = report.alerts

    # 3: end to end, the detector (its own process) already in its group.
    topics = fresh_topics(settings)
    group = f"bench-{uuid.uuid4().hex[:6]}"
    detector = start_detector(topics, mode, group, rows)
    wait_for_members(topics, group)
    began = time.perf_counter()
    kafka_mode.produce(topics, frame, progress=False)
    produced_s = time.perf_counter() - began
    detected = finish(detector)
    end_to_end_s = time.perf_counter() - began
    results["e2e_produce_txn_per_s"] = rows / produced_s
    results["e2e_txn_per_s"] = rows / end_to_end_s
    results["e2e_detector_busy_txn_per_s"] = detected["rows_per_s"]

    # 4: latency at steady rates.
    results["latency"] = {}
    for rate in latency_rates:
        topics = fresh_topics(settings)
        group = f"bench-{uuid.uuid4().hex[:6]}"
        count = min(int(rate * (latency_s + WARMUP_S)), len(frame))
        detector = start_detector(topics, mode, group, count, latency_warmup_s=WARMUP_S)
        wait_for_members(topics, group)
        kafka_mode.produce(topics, frame, max_messages=count, rate_per_s=rate,
                           progress=False)
        detected = finish(detector)
        results["latency"][rate] = {**detected["latency"], "consumed": detected["consumed"],
                                    "busy_txn_per_s": detected["rows_per_s"]}
    return results


def baselines(settings: Settings, values: list[bytes]) -> dict[str, float]:
    """Plain kafka-python: default producer on pre-encoded bytes; a bare counting consumer."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topics = fresh_topics(settings)
    producer = KafkaProducer(**kafka_mode.client_config(settings))
    began, cpu = time.perf_counter(), time.process_time()
    for value in values:
        producer.send(topics.topic_transactions, value=value)
    producer.flush()
    produce_s, produce_cpu_s = time.perf_counter() - began, time.process_time() - cpu
    producer.close()
    consumer = KafkaConsumer(**kafka_mode.client_config(settings), group_id=None,
                             enable_auto_commit=False)
    tps = [TopicPartition(topics.topic_transactions, p)
           for p in consumer.partitions_for_topic(topics.topic_transactions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    began, cpu = time.perf_counter(), time.process_time()
    seen = 0
    deadline = began + 120
    while seen < len(values) and time.perf_counter() < deadline:
        for batch in consumer.poll(timeout_ms=200, max_records=5000).values():
            seen += len(batch)
    consume_s, consume_cpu_s = time.perf_counter() - began, time.process_time() - cpu
    consumer.close()
    return {"baseline_produce_txn_per_s": len(values) / produce_s,
            "baseline_produce_txn_per_cpu_s": len(values) / produce_cpu_s,
            "baseline_consume_txn_per_s": seen / consume_s,
            "baseline_consume_txn_per_cpu_s": seen / consume_cpu_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--modes", nargs="+", default=list(kafka_mode.MODES),
                        choices=kafka_mode.MODES)
    parser.add_argument("--latency-rates", type=float, nargs="+", default=[2_000.0, 500.0])
    parser.add_argument("--latency-s", type=float, default=20.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # kafka-python warns when its I/O thread waits for the GIL; expected under load.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)

    settings = Settings.from_env()
    started = False
    if not settings.external_kafka and not broker.is_running(settings):
        broker.start(settings)
        started = True
    try:
        frame = generator.generate_frame(args.rows, seed=42)
        status = broker.status(settings)
        print(f"Kafka mode benchmark: {args.rows:,} transactions, broker {status.version} at "
              f"{status.bootstrap_servers}, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f} (a shared machine makes absolute figures noisy)")
        with RssSampler(status.pid) as rss:
            base = baselines(settings, kafka_mode.encode_frame(frame))
            results = [bench_mode(settings, mode, frame, args.rows, args.latency_rates,
                                  args.latency_s) for mode in args.modes]
        for r in results:
            print(f"\n{r['mode']}:")
            print(f"  produce alone          {r['produce_txn_per_s']:>10,.0f} txn/s "
                  f"({r['produce_txn_per_s'] / base['baseline_produce_txn_per_s']:.2f}x "
                  "the plain producer)")
            print(f"  detect alone (busy)    {r['detect_busy_txn_per_s']:>10,.0f} txn/s "
                  f"({r['detect_busy_txn_per_s'] / base['baseline_consume_txn_per_s']:.2f}x "
                  "the bare consumer)")
            print(f"  detect alone (wall)    {r['detect_wall_txn_per_s']:>10,.0f} txn/s "
                  f"({r['alerts']:,} alerts)")
            print(f"  per CPU-second         produce {r['produce_txn_per_cpu_s']:,.0f} txn "
                  f"({r['produce_txn_per_cpu_s'] / base['baseline_produce_txn_per_cpu_s']:.2f}"
                  f"x plain), detect {r['detect_txn_per_cpu_s']:,.0f} txn "
                  f"({r['detect_txn_per_cpu_s'] / base['baseline_consume_txn_per_cpu_s']:.2f}"
                  "x bare consumer)")
            print(f"  end to end             {r['e2e_txn_per_s']:>10,.0f} txn/s "
                  f"(producer {r['e2e_produce_txn_per_s']:,.0f}, detector busy "
                  f"{r['e2e_detector_busy_txn_per_s']:,.0f}; target >= 50,000)")
            for rate, lat in r["latency"].items():
                print(f"  latency @ {rate:>6,.0f} txn/s p50 {lat['p50_ms']:.1f} ms, "
                      f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms over "
                      f"{lat['count']:.0f} alerts of {lat['consumed']:,} txn, detector busy "
                      f"{lat['busy_txn_per_s']:,.0f} txn/s (target at 2,000 txn/s: p99 < 50 ms)")
        print(f"\nbaselines: plain producer {base['baseline_produce_txn_per_s']:,.0f} txn/s "
              f"({base['baseline_produce_txn_per_cpu_s']:,.0f} per CPU-second), bare consumer "
              f"{base['baseline_consume_txn_per_s']:,.0f} txn/s "
              f"({base['baseline_consume_txn_per_cpu_s']:,.0f} per CPU-second)")
        print("CPU-seconds count this process's threads only (not the broker): they do not "
              "shrink when other programs share the cores, so they compare across runs.")
        print(f"broker RSS during the run: {rss.summary_mib()}")
    finally:
        if started:
            broker.stop(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
