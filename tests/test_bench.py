"""Tests of the benchmark command: its baseline agrees with the rules, its files are sane.

No test here asserts a speed: the figures are measured by ``python -m bankcourse bench``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bankcourse import bench, cli, generator, rules
from bankcourse.settings import Settings, Thresholds


def _write_lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _generated_records(scratch: Path, rows: int) -> list[dict]:
    path = generator.write_dataset(scratch / "data.jsonl", rows, seed=11)
    return [json.loads(line) for line in path.read_text().splitlines()]


def _boundary_records(template: dict, t: Thresholds) -> list[dict]:
    """Records exactly at and just past every threshold, for every transaction type."""
    out = []
    for kind in ("CASH_IN", "CASH_OUT", "DEBIT", "PAYMENT", "TRANSFER"):
        for amount in (t.high_amount, t.high_amount + 0.01, t.transfer_spike,
                       t.transfer_spike + 0.01, 1.0):
            for balance in (t.drain_balance, t.drain_balance + 0.01):
                for fraud in (0, 1):
                    out.append({**template, "txn_id": f"B{len(out):09d}", "type": kind,
                                "amount": amount, "newbalanceOrig": balance,
                                "isFraud": fraud})
    return out


@pytest.mark.parametrize("thresholds", [
    Thresholds(),
    Thresholds(high_amount=50_000, transfer_spike=10_000, drain_balance=100),
], ids=["default-thresholds", "other-thresholds"])
def test_naive_baseline_gives_the_same_verdicts_as_evaluate_record(
        scratch: Path, thresholds: Thresholds) -> None:
    records = _generated_records(scratch, 20_000)
    records += _boundary_records(records[0], thresholds)
    path = _write_lines(scratch / "mixed.jsonl", records)

    scan = bench.naive_scan(path, thresholds, keep_verdicts=True,
                            alerts_path=scratch / "alerts.jsonl")

    expected = [(r["txn_id"], rules.evaluate_record(r, thresholds)) for r in records]
    assert scan.verdicts == expected
    assert scan.rows == len(records)
    assert scan.alerts == sum(1 for _, fired in expected if fired)
    for name in rules.RULE_NAMES:  # every rule fired somewhere, so each one was compared
        assert scan.by_rule[name] == sum(name in fired for _, fired in expected) > 0
    written = (scratch / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(a)["rules"] for a in written] == [f for _, f in expected if f]


def test_naive_baseline_stops_after_max_rows(scratch: Path) -> None:
    path = _write_lines(scratch / "some.jsonl", _generated_records(scratch, 1_000))

    scan = bench.naive_scan(path, max_rows=250, keep_verdicts=True)

    assert scan.rows == 250 and len(scan.verdicts) == 250


def test_a_missed_target_says_by_how_much() -> None:
    target = bench.Target(min_rows_per_s=1_000, max_p99_ms=50)

    slow = bench.StageResult(name="x", stage="kafka", rows_per_s=250.0, p99_ms=100.0)
    met, shortfall = target.check(slow)
    assert met is False
    assert "throughput 75% short" in shortfall and "p99 2.0x over" in shortfall

    fast = bench.StageResult(name="x", stage="kafka", rows_per_s=2_000.0, p99_ms=10.0)
    assert target.check(fast) == (True, "")
    assert target.check(bench.StageResult(name="x", stage="kafka")) == (None, "")


def test_best_and_median_pick_the_run_by_throughput() -> None:
    runs = [(100, 1.0, {"n": 1}), (100, 0.5, {"n": 2}), (100, 2.0, {"n": 3})]

    best, rates = bench._choose(runs, "best")
    median, _ = bench._choose(runs, "median")

    assert best[2]["n"] == 2 and median[2]["n"] == 1
    assert rates == [100.0, 200.0, 50.0]


def test_machine_info_records_cores_memory_java_and_versions(settings: Settings) -> None:
    import pyspark

    info = bench.machine_info(settings)

    assert info["cores"] == os.cpu_count()
    assert info["memory_gb"] == pytest.approx(psutil.virtual_memory().total / 2**30, abs=0.1)
    assert info["java"] and ("version" in info["java"] or info["java"].startswith("missing"))
    assert info["pyspark"] == pyspark.__version__
    assert info["kafka"] and len(info["load_average"]) == 3


def test_memory_sampler_counts_child_processes_as_python() -> None:
    child = subprocess.Popen([sys.executable, "-c",
                              "import time; x = bytearray(200 * 2**20); time.sleep(20)"])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if psutil.Process(child.pid).memory_info().rss > 190 * 2**20:
                    break
            except psutil.Error:
                pass
            time.sleep(0.1)
        own_mb = psutil.Process().memory_info().rss / 2**20
        with bench.MemorySampler(broker_pid=None) as sampler, sampler.stage("child"):
            time.sleep(0.3)
        peak = sampler.peak("child")
    finally:
        child.kill()
        child.wait(timeout=10)
    assert peak["python"] >= own_mb + 190
    assert peak["broker"] == 0
    # A Spark JVM that this test session started earlier is a child too, and is Spark's.
    if not _java_children():
        assert peak["spark"] == 0
    assert peak["total"] == pytest.approx(peak["python"], abs=0.2)


def _java_children() -> list[str]:
    names = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            names.append(child.name())
    return [n for n in names if "java" in n]


@pytest.fixture
def logger_levels() -> object:
    """Put back the logger levels the bench command changes (it runs in this process)."""
    import logging

    names = ("", "kafka", "kafka.net.selector", "py4j", "bankcourse")
    levels = {n: logging.getLogger(n).level for n in names}
    yield levels
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_a_small_run_without_java_writes_markdown_json_and_chart(
        settings: Settings, scratch: Path, monkeypatch: pytest.MonkeyPatch,
        logger_levels: object) -> None:
    monkeypatch.setenv("BANKCOURSE_DATA_DIR", str(settings.data_dir))
    out = scratch / "bench"

    code = cli.main(["bench", "--stages", "baseline,generator,file", "--rows", "20000",
                     "--baseline-rows", "5000", "--repeat", "2", "--out", str(out)])

    assert code == 0
    data = json.loads((out / "bench.json").read_text())
    assert data["options"]["rows"] == 20_000 and data["options"]["baseline_rows"] == 5_000
    assert data["machine"]["cores"] == os.cpu_count()
    names = [s["name"] for s in data["stages"]]
    assert names == ["baseline (naive loop)", "generator", "file (csv.gz)", "file (parquet)",
                     "rules alone (in memory)", "whole run (peak memory)"]
    stages = {s["name"]: s for s in data["stages"]}
    base = stages["baseline (naive loop)"]
    assert base["rows"] == 5_000 and base["ratio_to_baseline"] == 1.0
    for name in names[1:5]:
        s = stages[name]
        assert s["skipped"] is None and s["rows"] == 20_000
        assert len(s["runs_rows_per_s"]) == 2
        assert s["rows_per_s"] == pytest.approx(s["rows"] / s["seconds"], rel=1e-3)
        assert s["rows_per_s"] == pytest.approx(max(s["runs_rows_per_s"]), rel=1e-3)
        assert s["ratio_to_baseline"] == pytest.approx(s["rows_per_s"] / base["rows_per_s"],
                                                       abs=0.01)
        assert s["peak_rss_mb"]["python"] > 50 and s["peak_rss_mb"]["broker"] == 0
        assert s["cpu_s"] > 0
        assert s["rows_per_cpu_s"] == pytest.approx(s["rows"] / s["cpu_s"], rel=1e-2)
        assert s["target"] and s["target_met"] in (True, False)
    whole = stages["whole run (peak memory)"]
    assert whole["peak_rss_mb"]["total"] >= max(
        stages[n]["peak_rss_mb"]["total"] for n in names[:5])
    assert whole["target"] == "< 2,048 MB"
    assert stages["rules alone (in memory)"]["target"] == ">= 20,000,000/s"

    markdown = (out / "bench.md").read_text()
    assert "| stage | rows | txn/s | x baseline | txn/CPU-s |" in markdown
    for name in names:
        assert f"| {name} |" in markdown
    assert str(data["machine"]["cores"]) + " cores" in markdown
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = bench.load_results(out)
    assert [s.to_dict() for s in again.stages] == data["stages"]
    frame = bench.to_frame(again)
    assert list(frame.index) == names
    assert frame.loc["file (parquet)", "txn/s"] == stages["file (parquet)"]["rows_per_s"]
    assert frame.loc["file (parquet)", "reference txn/s"] == 1_000


def test_kafka_stages_are_skipped_with_the_fix_when_no_broker_answers(
        settings: Settings, scratch: Path) -> None:
    nowhere = settings.replace(kafka_port=49_171, kafka_controller_port=49_172,
                               kafka_bootstrap_servers=None, cache_dir=scratch / "cache")

    results = bench.run_bench(nowhere, stages=("baseline", "kafka"), rows=5_000,
                              baseline_rows=1_000, repeat=1, start_broker=False,
                              out_dir=scratch / "out")

    by_name = {s.name: s for s in results.stages}
    assert by_name["baseline (naive loop)"].rows == 1_000
    for mode in ("at-least-once", "exactly-once"):
        skipped = by_name[f"kafka {mode}"].skipped
        assert skipped and "python -m bankcourse broker start" in skipped
    assert "skipped kafka at-least-once" in bench.format_table(results)


@pytest.mark.kafka
def test_a_small_kafka_run_measures_latency_percentiles(kafka: Settings, scratch: Path) -> None:
    paths = bench.bench_datasets(kafka, rows=5_000, seed=42, baseline_rows=1_000)

    result, topics = bench.measure_kafka(kafka, paths["parquet"], mode="at-least-once",
                                         rows=2_000, latency_rate_per_s=500.0,
                                         latency_s=2.0)

    assert result.rows == 2_000 and result.rows_per_s > 0 and result.cpu_s > 0
    assert result.p50_ms is not None and result.p99_ms is not None
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.latency_rate_per_s > 0
    assert topics.topic_transactions.startswith("bench-kafka-at-least-once-")
    counts = bench._topic_counts(topics, [topics.topic_transactions, topics.topic_processed])
    assert counts == {topics.topic_transactions: 2_000, topics.topic_processed: 2_000}


@pytest.mark.kafka
def test_two_detectors_in_one_group_share_the_input_and_raise_every_alert(
        kafka: Settings, scratch: Path) -> None:
    from bankcourse import dataio, schema

    paths = bench.bench_datasets(kafka, rows=5_000, seed=42, baseline_rows=1_000)
    first = next(dataio.iter_frames(paths["parquet"])).head(2_000)
    expected = int(rules.evaluate_frame(schema.clean_frame(first)[0],
                                        kafka.thresholds).any(axis=1).sum())

    figures = bench.kafka_group_end_to_end(kafka, paths["parquet"], rows=2_000, detectors=2)

    assert sum(figures["consumed"]) == 2_000
    assert len(figures["consumed"]) == 2 and min(figures["consumed"]) > 0
    assert figures["alerts"] == expected > 0
    assert figures["seconds"] > 0 and figures["cpu_s"] > 0


@pytest.mark.spark
def test_spark_batch_line_is_checked_against_the_batch_target(
        spark: object, settings: Settings, scratch: Path) -> None:
    from bankcourse import dataio

    path = dataio.ensure_dataset(settings, rows=5_000, seed=42, fmt="parquet")

    result = bench.measure_spark_batch(spark, path, settings, scratch, repeat=1)
    bench._finish(result, None)

    assert result.name == "spark batch (parquet)" and result.rows == 5_000
    assert result.target_key == "spark-batch"
    assert result.target == ">= 1,000,000/s" and result.target_met in (True, False)
