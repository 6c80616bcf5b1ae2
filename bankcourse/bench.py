"""Every stage measured in one run, on the same data, against one naive baseline.

``python -m bankcourse bench`` generates one dataset (``--rows`` rows, ``--seed``) in
csv.gz, parquet and, for its first ``--baseline-rows`` rows, JSON lines, then measures

* ``baseline``: a naive per-record Python loop (:func:`naive_scan`) that reads JSON
  lines and checks the four rules one transaction at a time with plain if-statements;
* ``generator``: :func:`bankcourse.generator.iter_chunks` drawing the rows in memory;
* ``file``: :func:`bankcourse.file_mode.run_file_mode` from csv.gz and from parquet;
* ``kafka``: Kafka mode end to end, at-least-once and exactly-once: a detector process
  (``python -m bankcourse kafka detect``) already in its group while
  :func:`bankcourse.kafka_mode.produce` streams ``--stream-rows`` transactions, from the
  first send until the detector has made the last alert durable; then the producer at a
  steady ``--latency-rate`` for ``--latency-s`` seconds, produce time to alert durable;
* ``spark``: :func:`bankcourse.spark_mode.run_batch` on the parquet file and on a
  larger one (``--spark-batch-rows``, fixed job cost amortised); the Kafka-to-Kafka
  detector (:func:`bankcourse.spark_mode.run_detector`) working through
  ``--spark-stream-rows`` messages loaded into a topic beforehand (not timed), after an
  untimed warm-up query (Spark's own batch durations: first offset to last output
  written); its latency at the steady rate in micro-batch (asynchronous progress
  tracking) and, where Spark has it, real-time mode;

sampling the resident memory (RSS) of the broker, of this Python process and its
children, and of Spark's driver JVM every 0.1 s (:class:`MemorySampler`).

Every throughput is also given as a ratio to the baseline measured in the same run, so
the table means the same on a loaded machine as on an idle one. The results, with the
machine they ran on, go to ``bench.md``, ``bench.json`` and ``bench.png`` in ``--out``;
:func:`load_results` and :func:`plot_results` read and draw them again (notebook 06).

Usage::

    python -m bankcourse bench                                   # everything, a few minutes
    python -m bankcourse bench --stages baseline,generator,file  # no Java needed
    python -m bankcourse bench --rows 2000000 --repeat 5 --out output/bench

or from Python::

    results = run_bench(Settings.from_env(), stages=("baseline", "file"), rows=200_000)
    print(format_table(results))
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bankcourse import rules
from bankcourse.settings import Settings, Thresholds

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("baseline", "generator", "file", "kafka", "spark")
"""The stages ``--stages`` can choose from, in the order they run."""

NEEDS_JAVA: frozenset[str] = frozenset({"kafka", "spark"})
"""Stages that need Java (the broker, Spark)."""

DEFAULT_ROWS = 1_000_000
"""Rows of the dataset the generator and file stages use."""

DEFAULT_BASELINE_ROWS = 200_000
"""Rows (the dataset's first) the naive baseline reads."""

DEFAULT_STREAM_ROWS = 200_000
"""Rows (the dataset's first) streamed through Kafka and Spark for throughput."""

DEFAULT_LATENCY_RATE_PER_S = 2_000.0
"""The steady produce rate at which latency is measured."""

DEFAULT_LATENCY_S = 10.0
"""How long the steady-rate latency runs produce."""

DEFAULT_REPEAT = 3
"""Runs of the stages that take seconds (baseline, generator, file)."""

SAMPLE_INTERVAL_S = 0.1
"""Seconds between two memory samples."""

WARMUP_ROWS = 20_000
"""Rows of the small dataset Spark batch runs once, untimed, before it is measured."""

CHILDREN_REFRESH_S = 1.0
"""How often the memory sampler looks for new child processes (a detector, Spark)."""

SPARK_BATCHES = 2
"""Micro-batches the Spark throughput run splits its backlog into (one task per core each)."""

SPARK_STREAM_ROWS = 1_000_000
"""Messages the Spark Kafka-to-Kafka throughput run works through (``--spark-stream-rows``)."""

SPARK_BATCH_ROWS = 3_000_000
"""Rows of the larger parquet dataset Spark batch is also timed on (fixed job cost
amortised; ``--spark-batch-rows``, 0 to skip)."""

SPARK_WARMUP_ROWS = 20_000
"""Messages of the untimed warm-up query run before the Spark throughput is timed."""

SPARK_WARMUP_S = 2.0
"""Spark latency runs ignore the messages of their first seconds (query warm-up)."""

SPARK_LATENCY_WARMUP = 500
"""Warm-up transactions a Spark latency run sends, and waits for, before its steady run."""

GROUPS: tuple[str, ...] = ("broker", "python", "spark")
"""The process groups whose resident memory is sampled."""

REFERENCE_TXN_PER_S: dict[str, float] = {"file": 1_000.0, "kafka": 10_000.0, "spark": 33_000.0}
"""What the reference platform claims per stage (txn/s), drawn beside the measured bars."""


# --- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a stage should reach. Any bound left as None is not checked.

    Attributes:
        min_rows_per_s: throughput at least this. Default: None.
        max_p99_ms: 99th percentile latency below this. Default: None.
        max_rss_mb: peak resident memory (all process groups) below this. Default: None.
    """

    min_rows_per_s: float | None = None
    max_p99_ms: float | None = None
    max_rss_mb: float | None = None

    def describe(self) -> str:
        """The target as short text, such as ``>= 50,000/s, p99 < 50 ms``."""
        parts = []
        if self.min_rows_per_s is not None:
            parts.append(f">= {self.min_rows_per_s:,.0f}/s")
        if self.max_p99_ms is not None:
            parts.append(f"p99 < {self.max_p99_ms:,.0f} ms")
        if self.max_rss_mb is not None:
            parts.append(f"< {self.max_rss_mb:,.0f} MB")
        return ", ".join(parts)

    def check(self, result: StageResult) -> tuple[bool | None, str]:
        """Whether ``result`` meets the target, and by how much it misses (empty if met).

        Returns:
            ``(met, shortfall)``; ``met`` is None when nothing could be checked.
        """
        checks: list[tuple[float, float, bool, str]] = []  # value, bound, higher_is_better
        if self.min_rows_per_s is not None and result.rows_per_s:
            checks.append((result.rows_per_s, self.min_rows_per_s, True, "throughput"))
        if self.max_p99_ms is not None and result.p99_ms is not None:
            checks.append((result.p99_ms, self.max_p99_ms, False, "p99"))
        if self.max_rss_mb is not None and result.peak_rss_mb.get("total"):
            checks.append((result.peak_rss_mb["total"], self.max_rss_mb, False, "memory"))
        if not checks:
            return None, ""
        misses = []
        for value, bound, higher, what in checks:
            if higher and value < bound:
                misses.append(f"{what} {1 - value / bound:.0%} short ({value / bound:.2f}x)")
            elif not higher and value >= bound:
                misses.append(f"{what} {value / bound:.1f}x over")
        return not misses, "; ".join(misses)


TARGETS: dict[str, Target] = {
    "generator": Target(min_rows_per_s=2_000_000),
    "file": Target(min_rows_per_s=1_000_000),
    "rules": Target(min_rows_per_s=20_000_000),
    "kafka": Target(min_rows_per_s=50_000, max_p99_ms=50),
    "kafka-throughput": Target(min_rows_per_s=50_000),
    "spark-batch": Target(min_rows_per_s=1_000_000),
    "spark-stream": Target(min_rows_per_s=330_000, max_p99_ms=1_000),
    "spark-real-time": Target(max_p99_ms=1_000),
    "memory": Target(max_rss_mb=2_048),
}
"""The course's targets, by target key (see :attr:`StageResult.target_key`). Latency
targets are meant at 2,000 txn/s."""


# --- results ---------------------------------------------------------------------------------


@dataclass
class StageResult:
    """One line of the benchmark table.

    Attributes:
        name: what was measured, such as ``file (csv.gz)``.
        stage: which ``--stages`` entry it belongs to.
        rows: transactions handled in the chosen run.
        seconds: how long the chosen run took (what ``rows_per_s`` divides by).
        rows_per_s: throughput of the chosen run (best or median of ``runs_rows_per_s``).
        ratio_to_baseline: ``rows_per_s`` over the baseline's, None without a baseline.
        cpu_s: CPU seconds (user + system) the chosen run used in this process, its child
            processes (a detector, Spark's JVM) and, for Kafka and Spark streams, the
            broker; rows_per_cpu_s: rows over them, a figure a busy machine changes less.
        p50_ms, p99_ms: latency percentiles, for the streaming stages; None otherwise.
        latency_rate_per_s: the steady produce rate of the latency run.
        peak_rss_mb: peak resident memory per process group (``broker``, ``python``,
            ``spark``) and ``total`` (the largest sum of one sample) during the stage.
        target_key: the key of :data:`TARGETS` that applies ("" for none).
        target: the target as text; target_met: None when there is none or when it
            could not be checked; shortfall: by how much a missed target is missed.
        runs_rows_per_s: the throughput of every run.
        load_average: the machine's 1-minute load average when the stage started
            (above the number of cores, other work was competing for them).
        notes: what else was seen (alerts, partial figures, how the figure was taken).
        skipped: why the stage did not run (None when it ran).
    """

    name: str
    stage: str
    rows: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    ratio_to_baseline: float | None = None
    cpu_s: float | None = None
    rows_per_cpu_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_rate_per_s: float | None = None
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    target_key: str = ""
    target: str = ""
    target_met: bool | None = None
    shortfall: str = ""
    runs_rows_per_s: list[float] = field(default_factory=list)
    load_average: float | None = None
    notes: str = ""
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)


@dataclass
class BenchResults:
    """A whole benchmark run: the machine, the options and one result per line."""

    machine: dict[str, Any]
    options: dict[str, Any]
    stages: list[StageResult] = field(default_factory=list)
    started_at: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The run as a JSON-ready dict (``reference_txn_per_s`` and targets included)."""
        return {
            "started_at": self.started_at,
            "seconds": self.seconds,
            "machine": self.machine,
            "options": self.options,
            "targets": {k: asdict(t) for k, t in TARGETS.items()},
            "reference_txn_per_s": REFERENCE_TXN_PER_S,
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResults:
        """Rebuild results from :meth:`to_dict`'s output (``bench.json``)."""
        return cls(machine=data["machine"], options=data["options"],
                   stages=[StageResult(**s) for s in data["stages"]],
                   started_at=data.get("started_at", ""), seconds=data.get("seconds", 0.0))

    def get(self, name: str) -> StageResult | None:
        """The result called ``name``, or None."""
        return next((s for s in self.stages if s.name == name), None)


def load_results(path: str | Path) -> BenchResults:
    """Read ``bench.json`` (or the folder holding it) back into :class:`BenchResults`."""
    path = Path(path)
    if path.is_dir():
        path = path / "bench.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `python -m bankcourse bench "
                                f"--out {path.parent}` first")
    return BenchResults.from_dict(json.loads(path.read_text()))


# --- memory -------------------------------------------------------------------------------


class MemorySampler:
    """Samples the resident memory of the course's processes in a thread.

    Every ``interval_s`` seconds it adds up the RSS of three groups: ``broker`` (the
    pid given), ``spark`` (child JVMs of this process running Spark) and ``python``
    (this process and every other child, such as a detector process). Peaks are kept
    per label (:meth:`stage`) and for the whole run. RSS counts shared library pages
    once per process, so the sums err on the high side.

    Args:
        broker_pid: the broker's pid, or None when unknown (an external cluster).
        interval_s: seconds between samples. Default: 0.1.
    """

    def __init__(self, broker_pid: int | None = None,
                 interval_s: float = SAMPLE_INTERVAL_S) -> None:
        import psutil

        self.broker_pid = broker_pid
        self.interval_s = interval_s
        self.label = ""
        self.peaks: dict[str, dict[str, float]] = {}
        self.overall: dict[str, float] = {}
        self.overall_label = ""
        self.samples = 0
        self._me = psutil.Process()
        self._kinds: dict[int, str] = {}
        self._children: list[Any] = []
        self._broker: Any = None
        self._children_at = 0.0
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bankcourse-rss", daemon=True)

    def sample(self) -> dict[str, float]:
        """One sample: MB of RSS per group, and their ``total``."""
        import psutil

        split = dict.fromkeys(GROUPS, 0.0)
        now = time.monotonic()
        if now >= self._children_at:
            # Finding children reads every process's /proc entry: done once a second,
            # not at every sample, so the sampler itself costs little CPU.
            with contextlib.suppress(psutil.Error):
                self._children = self._me.children(recursive=True)
            self._children_at = now + CHILDREN_REFRESH_S
        procs = [self._me, *self._children]
        if self.broker_pid is not None:
            if self._broker is None:
                with contextlib.suppress(psutil.Error):
                    self._broker = psutil.Process(self.broker_pid)
            if self._broker is not None:
                procs.append(self._broker)
        seen: set[int] = set()
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                split[self._kind(proc)] += proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
        split["total"] = sum(split.values())
        return split

    def _kind(self, proc: Any) -> str:
        import psutil

        if proc.pid == self.broker_pid:
            return "broker"
        kind = self._kinds.get(proc.pid)
        if kind is None:
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                cmdline = ""
            kind = "spark" if "org.apache.spark" in cmdline else "python"
            self._kinds[proc.pid] = kind
        return kind

    def _add(self, split: dict[str, float]) -> None:
        with self._lock:
            self.samples += 1
            peak = self.peaks.setdefault(self.label, {})
            for key, value in split.items():
                peak[key] = max(peak.get(key, 0.0), value)
                if key != "total":
                    self.overall[key] = max(self.overall.get(key, 0.0), value)
            if split["total"] > self.overall.get("total", 0.0):
                self.overall["total"] = split["total"]
                self.overall_label = self.label

    def _run(self) -> None:
        while not self._halt.is_set():
            self._add(self.sample())
            self._halt.wait(self.interval_s)

    def start(self) -> MemorySampler:
        """Start sampling; returns the sampler."""
        self._add(self.sample())
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (takes one last sample)."""
        self._halt.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[dict[str, float]]:
        """Label the samples taken inside the block; yields that label's peaks (filled
        in as samples come, complete when the block ends)."""
        previous = self.label
        self.label = label
        self._children_at = 0.0  # look for children at once
        self._add(self.sample())
        try:
            yield self.peaks.setdefault(label, {})
        finally:
            self._add(self.sample())
            self.label = previous

    def peak(self, label: str) -> dict[str, float]:
        """The peaks of ``label``, rounded to 0.1 MB."""
        return {k: round(v, 1) for k, v in self.peaks.get(label, {}).items()}


# --- the machine -----------------------------------------------------------------------------


def _java_version() -> str:
    """The first line of ``java -version`` of the Java Spark and the broker would use."""
    from bankcourse import spark_session

    try:
        java = spark_session.find_java()
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (spark_session.SparkSetupError, OSError, subprocess.TimeoutExpired) as exc:
        return f"missing ({str(exc)[:120]})"
    lines = (out.stderr or out.stdout).strip().splitlines()
    return f"{lines[0] if lines else '?'} ({java})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(settings: Settings | None = None) -> dict[str, Any]:
    """Where the figures come from: cores, memory, load, Java, pyspark, Kafka and more.

    Args:
        settings: gives the Kafka version the course's broker runs. Default:
            ``Settings.from_env()``.
    """
    import psutil

    settings = settings if settings is not None else Settings.from_env()
    kafka_version = settings.kafka_version
    with contextlib.suppress(Exception):
        from bankcourse import broker

        running = broker.status(settings)
        if running.version:
            kafka_version = running.version
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "memory_available_gb": round(psutil.virtual_memory().available / 2**30, 1),
        "load_average": [round(x, 2) for x in load],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "java": _java_version(),
        "pyspark": _package_version("pyspark"),
        "kafka": kafka_version,
        "kafka_python": _package_version("kafka-python"),
        "pandas": _package_version("pandas"),
        "pyarrow": _package_version("pyarrow"),
        "numpy": _package_version("numpy"),
        "broker_heap_mb": settings.broker_heap_mb,
        "spark_driver_memory_mb": settings.spark_driver_memory_mb,
    }


# --- the naive baseline --------------------------------------------------------------------


@dataclass
class NaiveScan:
    """What :func:`naive_scan` read and found.

    Attributes:
        rows: lines read; alerts: transactions on which a rule fired;
        by_rule: how often each rule fired; seconds: wall time of the loop;
        verdicts: ``(txn_id, fired rule names)`` per line, when asked for.
    """

    rows: int = 0
    alerts: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    verdicts: list[tuple[str, list[str]]] = field(default_factory=list)


def naive_scan(path: str | Path, thresholds: Thresholds | None = None, *,
               max_rows: int | None = None, alerts_path: str | Path | None = None,
               keep_verdicts: bool = False) -> NaiveScan:
    """The baseline: a per-record loop over JSON lines, rules checked one at a time.

    This is how a straightforward first version would be written: ``json.loads`` each
    line, then plain if-statements in the loop, then ``json.dumps`` of each alert to a
    file. It is the ONE place in the course where the rule logic is written by hand
    rather than taken from :data:`bankcourse.rules.RULES`, because it is the baseline
    every stage is compared against; ``tests/test_bench.py`` checks that its verdicts
    equal :func:`bankcourse.rules.evaluate_record`'s. Records are not validated (a first
    version would not); run it on generated, clean data.

    Args:
        path: a JSON lines file of transactions.
        thresholds: the rule thresholds. Default: ``Thresholds()``.
        max_rows: read at most this many lines. Default: all.
        alerts_path: where the alerts are written, one JSON object per line.
            Default: discarded (``os.devnull``).
        keep_verdicts: also return every line's ``(txn_id, fired rules)``. Default: False.

    Returns:
        A :class:`NaiveScan`.
    """
    t = thresholds if thresholds is not None else Thresholds()
    high_amount, transfer_spike, drain_balance = (t.high_amount, t.transfer_spike,
                                                  t.drain_balance)
    scan = NaiveScan(by_rule=dict.fromkeys(rules.RULE_NAMES, 0))
    limit = max_rows if max_rows is not None else float("inf")
    began = time.perf_counter()
    with open(path, encoding="utf-8") as lines, \
            open(alerts_path or os.devnull, "w", encoding="utf-8") as out:
        for line in lines:
            if scan.rows >= limit:
                break
            scan.rows += 1
            txn = json.loads(line)
            fired = []
            if txn["amount"] > high_amount:
                fired.append("HIGH_AMOUNT")
            if txn["type"] in ("TRANSFER", "CASH_OUT") and txn["newbalanceOrig"] <= drain_balance:
                fired.append("BALANCE_DRAIN")
            if txn["type"] == "TRANSFER" and txn["amount"] > transfer_spike:
                fired.append("TRANSFER_SPIKE")
            if txn["isFraud"] == 1:
                fired.append("DATASET_FRAUD")
            if fired:
                scan.alerts += 1
                for name in fired:
                    scan.by_rule[name] += 1
                out.write(json.dumps(rules.alert_record(txn, fired)) + "\n")
            if keep_verdicts:
                scan.verdicts.append((txn["txn_id"], fired))
    scan.seconds = time.perf_counter() - began
    return scan


# --- data ----------------------------------------------------------------------------------


def bench_datasets(settings: Settings, rows: int, seed: int = 42,
                   baseline_rows: int = DEFAULT_BASELINE_ROWS) -> dict[str, Path]:
    """The benchmark's data: one dataset as csv.gz and parquet, its head as JSON lines.

    Generated on first use into ``settings.data_dir`` (``dataio.ensure_dataset``) and
    reused. The JSON lines file holds the first ``baseline_rows`` rows of the same
    dataset (the same rows, not a smaller dataset, whose rows would differ).

    Returns:
        ``{"csv.gz": path, "parquet": path, "jsonl": path, "warmup": path}``; the last
        is a small parquet dataset that warms Spark up before it is timed.
    """
    from bankcourse import dataio, generator

    paths = {fmt: dataio.ensure_dataset(settings, rows=rows, seed=seed, fmt=fmt)
             for fmt in ("csv.gz", "parquet")}
    paths["warmup"] = dataio.ensure_dataset(settings, rows=min(rows, WARMUP_ROWS), seed=seed,
                                            fmt="parquet")
    head = min(baseline_rows, rows)
    stem = paths["parquet"].name.removesuffix(".parquet")  # carries the generator version
    jsonl = paths["parquet"].with_name(f"{stem}-head{head}.jsonl")
    if not jsonl.exists():
        with dataio.atomic_writer(jsonl, "jsonl") as writer:
            for table in generator.iter_tables(head, seed, total_rows=rows):
                writer.write(table)
        log.info("bench data: wrote the first %d rows of %s as %s", head,
                 paths["parquet"].name, jsonl)
    paths["jsonl"] = jsonl
    return paths


# --- measuring -----------------------------------------------------------------------------


Run = tuple[int, float, dict[str, Any]]
"""One run of a stage: rows, seconds, and anything else worth keeping (``cpu_s``, ``notes``)."""


def cpu_seconds(broker_pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process and its children.

    Running children are asked through psutil, finished ones come from the rusage of
    waited-for children; the broker (``broker_pid``) is added when given. The difference
    of two calls is the CPU a measurement used, however busy the machine was.
    """
    import psutil

    me = psutil.Process()
    # process_time has nanosecond resolution; psutil's times tick every 10 ms, which
    # would make a short stage look like it used no CPU at all.
    total = time.process_time()
    with contextlib.suppress(ImportError):
        import resource

        finished = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += finished.ru_utime + finished.ru_stime
    others = []
    with contextlib.suppress(psutil.Error):
        others = me.children(recursive=True)
    if broker_pid is not None:
        with contextlib.suppress(psutil.Error):
            others.append(psutil.Process(broker_pid))
    for proc in others:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _choose(runs: Sequence[Run], statistic: str) -> tuple[Run, list[float]]:
    """The best (highest rows/s) or median run, and every run's rows/s."""
    rates = [rows / seconds if seconds > 0 else 0.0 for rows, seconds, _ in runs]
    order = sorted(range(len(runs)), key=lambda i: rates[i])
    if statistic == "best":
        pick = order[-1]
    elif statistic == "median":
        pick = order[(len(order) - 1) // 2]
    else:
        raise ValueError(f"statistic must be best or median, got {statistic!r}")
    return runs[pick], rates


def _result(name: str, stage: str, runs: Sequence[Run], statistic: str,
            target_key: str = "") -> StageResult:
    (rows, seconds, extra), rates = _choose(runs, statistic)
    return StageResult(
        name=name, stage=stage, rows=rows, seconds=seconds,
        rows_per_s=rows / seconds if seconds > 0 else 0.0, target_key=target_key,
        runs_rows_per_s=[round(r, 1) for r in rates],
        cpu_s=round(extra["cpu_s"], 6) if extra.get("cpu_s") is not None else None,
        rows_per_cpu_s=round(extra.get("cpu_rows", rows) / extra["cpu_s"], 1)
        if extra.get("cpu_s") else None,
        p50_ms=extra.get("p50_ms"), p99_ms=extra.get("p99_ms"),
        latency_rate_per_s=extra.get("latency_rate_per_s"), notes=extra.get("notes", ""),
    )


def measure_baseline(jsonl: Path, settings: Settings, *, max_rows: int | None = None,
                     repeat: int = DEFAULT_REPEAT, statistic: str = "best",
                     out_dir: Path | None = None) -> StageResult:
    """Time :func:`naive_scan` ``repeat`` times on ``jsonl``."""
    runs: list[Run] = []
    for _ in range(repeat):
        alerts = out_dir / "baseline_alerts.jsonl" if out_dir is not None else None
        cpu = cpu_seconds()
        scan = naive_scan(jsonl, settings.thresholds, max_rows=max_rows, alerts_path=alerts)
        runs.append((scan.rows, scan.seconds, {
            "cpu_s": cpu_seconds() - cpu,
            "notes": f"{scan.alerts:,} alerts; json.loads + if-statements per line"}))
    return _result("baseline (naive loop)", "baseline", runs, statistic)


def measure_generator(rows: int, seed: int = 42, *, repeat: int = DEFAULT_REPEAT,
                      statistic: str = "best") -> StageResult:
    """Time :func:`bankcourse.generator.iter_chunks` drawing ``rows`` rows in memory."""
    from bankcourse import generator

    runs: list[Run] = []
    for _ in range(repeat):
        began, cpu = time.perf_counter(), cpu_seconds()
        count = sum(len(frame) for frame in generator.iter_chunks(rows, seed))
        runs.append((count, time.perf_counter() - began,
                     {"cpu_s": cpu_seconds() - cpu,
                      "notes": "pandas frames of 100,000 rows, in memory"}))
    return _result("generator", "generator", runs, statistic, "generator")


def measure_file_mode(path: Path, settings: Settings, out_dir: Path, *,
                      repeat: int = DEFAULT_REPEAT, statistic: str = "best") -> StageResult:
    """Time :func:`bankcourse.file_mode.run_file_mode` on ``path``, ``repeat`` times."""
    from bankcourse import dataio, file_mode

    fmt = dataio.detect_format(path)
    runs: list[Run] = []
    for _ in range(repeat):
        cpu = cpu_seconds()
        report = file_mode.run_file_mode(path, settings, out_dir / f"file_{fmt}")
        runs.append((report.rows_read, report.seconds, {
            "cpu_s": cpu_seconds() - cpu,
            "notes": f"{report.alerts:,} alerts, {report.quarantined:,} quarantined; "
                     f"read, clean, rules, alerts written"}))
    return _result(f"file ({fmt})", "file", runs, statistic, "file")


def measure_rules(path: Path, settings: Settings, *, repeat: int = DEFAULT_REPEAT,
                  statistic: str = "best") -> StageResult:
    """Time :func:`bankcourse.rules.evaluate_frame` alone on ``path``'s cleaned rows.

    The dataset is read and cleaned first (not timed): this is the cost of the four
    rules on a DataFrame already in memory, the part of file mode that is the rules.
    """
    import pandas as pd

    from bankcourse import dataio, schema

    frames = [schema.clean_frame(frame)[0] for frame in dataio.iter_frames(path)]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    del frames
    runs: list[Run] = []
    for _ in range(repeat):
        began, cpu = time.perf_counter(), cpu_seconds()
        flags = rules.evaluate_frame(frame, settings.thresholds)
        seconds = time.perf_counter() - began
        runs.append((len(frame), seconds, {
            "cpu_s": cpu_seconds() - cpu,
            "notes": f"rules.evaluate_frame on {len(frame):,} cleaned rows in memory; "
                     f"{int(flags.any(axis=1).sum()):,} rows with a rule fired"}))
    return _result("rules alone (in memory)", "file", runs, statistic, "rules")


def _kafka_env(settings: Settings) -> dict[str, str]:
    """Environment for a child process that must use exactly ``settings``'s broker/topics."""
    return {**os.environ, **settings.to_env()}


_CREATED_TOPICS: list[str] = []
"""Topics :func:`fresh_topics` created in this process (:func:`run_bench` deletes its own)."""


def fresh_topics(settings: Settings, label: str) -> Settings:
    """``settings`` with four new topics (``bench-<label>-<random>-...``), created."""
    from bankcourse import kafka_mode

    run = f"bench-{label}-{uuid.uuid4().hex[:8]}"
    topics = settings.replace(
        topic_transactions=f"{run}-{settings.topic_transactions}",
        topic_alerts=f"{run}-{settings.topic_alerts}",
        topic_processed=f"{run}-{settings.topic_processed}",
        topic_dead_letter=f"{run}-{settings.topic_dead_letter}",
    )
    _CREATED_TOPICS.extend([topics.topic_transactions, topics.topic_alerts,
                            topics.topic_processed, topics.topic_dead_letter])
    kafka_mode.ensure_topics(topics)
    return topics


def delete_topics(settings: Settings, names: Sequence[str], timeout_s: float = 30.0) -> None:
    """Delete benchmark topics (their data would otherwise stay on the broker's disk)."""
    from kafka import KafkaAdminClient

    from bankcourse import kafka_mode

    if not names:
        return
    try:
        admin = KafkaAdminClient(**kafka_mode.client_config(settings))
        try:
            admin.delete_topics(list(names), timeout_ms=int(timeout_s * 1000))
        finally:
            admin.close()
        log.info("bench: deleted %d topics", len(names))
    except Exception:  # the figures are already taken; leftover topics only cost disk
        log.warning("bench: could not delete the benchmark's topics %s", list(names),
                    exc_info=True)


class DetectorProcess:
    """``python -m bankcourse kafka detect`` in its own process, bounded, for measuring.

    Its own process, so the detector and the producer (in this process) each have a
    core, as in a real deployment. Use as a context manager: the process is killed on
    the way out if it is still running.

    Args:
        settings: broker and topics (passed through the environment).
        mode: ``at-least-once`` or ``exactly-once``.
        max_messages: the detector stops after this many messages.
        idle_timeout_s: ... or when none came for this long. Default: 60.
        latency_warmup_s: its latencies leave out the first this many seconds of input
            (``--latency-warmup-s``). Default: 0.
        group: the consumer group; give several detectors the same one to share the
            partitions. Default: a new group.
    """

    def __init__(self, settings: Settings, mode: str, max_messages: int,
                 idle_timeout_s: float = 60.0, latency_warmup_s: float = 0.0,
                 group: str | None = None) -> None:
        self.settings = settings
        self.group = group or f"bench-{uuid.uuid4().hex[:8]}"
        command = [sys.executable, "-m", "bankcourse", "-q", "kafka", "detect", "--json",
                   "--mode", mode, "--group", self.group, "--max-messages", str(max_messages),
                   "--idle-timeout-s", str(idle_timeout_s),
                   "--latency-warmup-s", str(latency_warmup_s)]
        # stderr goes to a file: a pipe nobody reads while the producer runs could fill
        # up and stall the detector.
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self.process = subprocess.Popen(command, env=_kafka_env(settings),
                                        stdout=subprocess.PIPE, stderr=self._stderr,
                                        text=True)
        log.info("bench: detector process %d started (%s, group %s)", self.process.pid,
                 mode, self.group)

    def wait_joined(self, timeout_s: float = 60.0, members: int = 1) -> None:
        """Wait until the detector's group is stable with ``members`` members.

        Raises:
            RuntimeError: it did not join in time, or the process exited.
        """
        from kafka import KafkaAdminClient

        from bankcourse import kafka_mode

        admin = KafkaAdminClient(**kafka_mode.client_config(self.settings))
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the detector process exited early: "
                                       f"{self.errors()}")
                info: dict[str, Any] = {}
                with contextlib.suppress(Exception):
                    info = admin.describe_groups([self.group]).get(self.group, {})
                if isinstance(info, dict):
                    state = info.get("group_state", info.get("state"))
                    if state == "Stable" and len(info.get("members") or ()) >= members:
                        return
                time.sleep(0.2)
        finally:
            admin.close()
        raise RuntimeError(f"the detector group {self.group} was not stable within "
                           f"{timeout_s:g} s")

    def finish(self, timeout_s: float) -> dict[str, Any]:
        """Wait (bounded) for the detector to stop; its report as a dict.

        Raises:
            RuntimeError: it failed or did not stop in time (it is then killed).
        """
        try:
            out, _ = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate(timeout=10)
            raise RuntimeError(f"the detector did not finish within {timeout_s:g} s") from None
        if self.process.returncode != 0 or not out.strip():
            raise RuntimeError(f"the detector failed: {self.errors()}")
        return json.loads(out.strip().splitlines()[-1])

    def errors(self) -> str:
        """The end of what the detector wrote to stderr."""
        self._stderr.seek(0)
        return self._stderr.read()[-1500:].strip()

    def __enter__(self) -> DetectorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.communicate(timeout=10)
        self._stderr.close()


def kafka_end_to_end(settings: Settings, source: Path, *, mode: str, rows: int,
                     timeout_s: float = 600.0, broker_pid: int | None = None,
                     ) -> tuple[Settings, dict[str, Any]]:
    """Stream ``rows`` transactions through Kafka mode, detector already waiting.

    Args:
        broker_pid: the broker's pid, to count its CPU too. Default: None.

    Returns:
        ``(topics, figures)``: the topics used (their transactions topic then holds the
        ``rows`` messages) and ``rows``, ``seconds`` (first send to last alert durable),
        ``cpu_s`` (producer, detector and broker), ``produce_rows_per_s``,
        ``detector_rows_per_s`` (its busy time), ``alerts``.
    """
    from bankcourse import kafka_mode

    topics = fresh_topics(settings, f"kafka-{mode}")
    with DetectorProcess(topics, mode, rows) as detector:
        detector.wait_joined()
        began, cpu = time.perf_counter(), cpu_seconds(broker_pid)
        produced = kafka_mode.produce(topics, source, max_messages=rows, progress=False,
                                      create_topics=False)
        report = detector.finish(timeout_s)
        seconds = time.perf_counter() - began
        cpu = cpu_seconds(broker_pid) - cpu
    return topics, {
        "rows": report["consumed"], "seconds": seconds, "cpu_s": cpu,
        "produce_rows_per_s": produced.rate_per_s, "detector_rows_per_s": report["rows_per_s"],
        "alerts": report["alerts"], "dead_letters": report["dead_letters"],
    }


KAFKA_GROUP_DETECTORS = 2
"""Detector processes of the consumer-group line: one per partition of the course's topics."""

GROUP_IDLE_S = 3.0
"""How long the consumer-group line's detectors wait for more input before they stop."""


def kafka_group_end_to_end(settings: Settings, source: Path, *, rows: int,
                           detectors: int = KAFKA_GROUP_DETECTORS, timeout_s: float = 600.0,
                           broker_pid: int | None = None) -> dict[str, Any]:
    """At-least-once Kafka mode with ``detectors`` processes sharing one consumer group.

    The measured time runs from the first send until ``topic_processed`` holds ``rows``
    messages (its end offsets, read every 10 ms: an at-least-once detector's output is
    there once durable). No detector knows how many messages are its own, so each stops
    after :data:`GROUP_IDLE_S` without input, outside the measured time.

    Returns:
        ``rows``, ``seconds``, ``cpu_s`` (producer, detectors, broker), ``alerts`` and
        ``consumed`` (per detector).
    """
    from kafka import KafkaConsumer, TopicPartition

    from bankcourse import kafka_mode

    topics = fresh_topics(settings, "kafka-group")
    group = f"bench-group-{uuid.uuid4().hex[:8]}"
    outputs = [TopicPartition(topics.topic_processed, p) for p in range(topics.partitions)]
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(DetectorProcess(topics, "at-least-once", rows,
                                                     idle_timeout_s=GROUP_IDLE_S, group=group))
                 for _ in range(detectors)]
        procs[0].wait_joined(members=detectors)
        watcher = KafkaConsumer(**kafka_mode.client_config(topics), enable_auto_commit=False)
        stack.callback(watcher.close)
        began, cpu = time.perf_counter(), cpu_seconds(broker_pid)
        kafka_mode.produce(topics, source, max_messages=rows, progress=False,
                           create_topics=False)
        deadline = time.monotonic() + timeout_s
        while sum(watcher.end_offsets(outputs).values()) < rows:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the detectors did not process {rows:,} messages within "
                                   f"{timeout_s:g} s")
            time.sleep(0.01)
        seconds = time.perf_counter() - began
        cpu = cpu_seconds(broker_pid) - cpu
        reports = [p.finish(GROUP_IDLE_S * 3 + 60) for p in procs]
    return {"rows": rows, "seconds": seconds, "cpu_s": cpu,
            "alerts": sum(r["alerts"] for r in reports),
            "consumed": [r["consumed"] for r in reports]}


def measure_kafka_group(settings: Settings, source: Path, *, rows: int, repeat: int = 1,
                        statistic: str = "best", broker_pid: int | None = None,
                        detectors: int = KAFKA_GROUP_DETECTORS) -> StageResult:
    """:func:`kafka_group_end_to_end` ``repeat`` times, as one line of the table."""
    runs: list[Run] = []
    for _ in range(repeat):
        f = kafka_group_end_to_end(settings, source, rows=rows, detectors=detectors,
                                   broker_pid=broker_pid)
        runs.append((f["rows"], f["seconds"], {
            "cpu_s": f["cpu_s"],
            "notes": f"{detectors} detector processes in one consumer group, one partition "
                     f"each (messages per detector: {', '.join(map(str, f['consumed']))}); "
                     f"first send until every processed record is durable; "
                     f"{f['alerts']:,} alerts"}))
    return _result(f"kafka at-least-once, {detectors} detectors", "kafka", runs, statistic,
                   "kafka-throughput")


KAFKA_WARMUP_S = 2.0
"""Seconds of steady input before the Kafka latency figures start (the detector's first
batches open connections and load code; the tail they make is not the steady state)."""


def kafka_latency(settings: Settings, source: Path, *, mode: str,
                  rate_per_s: float = DEFAULT_LATENCY_RATE_PER_S,
                  duration_s: float = DEFAULT_LATENCY_S,
                  warmup_s: float = KAFKA_WARMUP_S) -> dict[str, float]:
    """Produce at a steady rate to a waiting detector; latency produce to alert durable.

    The input runs ``warmup_s + duration_s`` seconds; alerts of transactions produced in
    the first ``warmup_s`` seconds are left out of the figures.

    Returns:
        :func:`bankcourse.kafka_mode.latency_percentiles` of every alert, plus
        ``rate_per_s`` (achieved) and ``messages``.
    """
    from bankcourse import kafka_mode

    topics = fresh_topics(settings, f"kafka-latency-{mode}")
    count = max(int(rate_per_s * (duration_s + warmup_s)), 1)
    with DetectorProcess(topics, mode, count, latency_warmup_s=warmup_s) as detector:
        detector.wait_joined()
        produced = kafka_mode.produce(topics, source, max_messages=count,
                                      rate_per_s=rate_per_s, progress=False,
                                      create_topics=False)
        report = detector.finish((duration_s + warmup_s) * 3 + 120)
    return {**report["latency"], "rate_per_s": produced.rate_per_s,
            "messages": float(produced.messages)}


def measure_kafka(settings: Settings, source: Path, *, mode: str, rows: int,
                  latency_rate_per_s: float = DEFAULT_LATENCY_RATE_PER_S,
                  latency_s: float = DEFAULT_LATENCY_S, repeat: int = 1,
                  statistic: str = "best", broker_pid: int | None = None,
                  ) -> tuple[StageResult, Settings]:
    """Kafka mode in ``mode``: end-to-end throughput, then latency at a steady rate.

    See :func:`kafka_end_to_end` and :func:`kafka_latency`; ``broker_pid`` lets the CPU
    figure count the broker.

    Returns:
        The result, and the topics of the chosen throughput run (to reuse its input).
    """
    runs: list[Run] = []
    loaded: list[Settings] = []
    for _ in range(repeat):
        topics, figures = kafka_end_to_end(settings, source, mode=mode, rows=rows,
                                           broker_pid=broker_pid)
        loaded.append(topics)
        runs.append((figures["rows"], figures["seconds"], {
            "topics": topics, "cpu_s": figures["cpu_s"],
            "notes": f"first send to last alert durable; producer "
                     f"{figures['produce_rows_per_s']:,.0f}/s, detector busy "
                     f"{figures['detector_rows_per_s']:,.0f}/s; {figures['alerts']:,} alerts"}))
    (_, _, chosen), _ = _choose(runs, statistic)
    result = _result(f"kafka {mode}", "kafka", runs, statistic, "kafka")
    latency = kafka_latency(settings, source, mode=mode, rate_per_s=latency_rate_per_s,
                            duration_s=latency_s)
    result.p50_ms, result.p99_ms = latency["p50_ms"], latency["p99_ms"]
    result.latency_rate_per_s = round(latency["rate_per_s"], 1)
    result.notes += (f"; latency over {latency['count']:.0f} alerts at "
                     f"{latency['rate_per_s']:,.0f}/s after a {KAFKA_WARMUP_S:g} s warm-up, "
                     f"max {latency['max_ms']:.0f} ms")
    return result, chosen["topics"]


def measure_spark_batch(spark: Any, path: Path, settings: Settings, out_dir: Path, *,
                        repeat: int = DEFAULT_REPEAT, statistic: str = "best",
                        warmup_path: Path | None = None, fmt: str = "parquet",
                        label: str = "") -> StageResult:
    """Time :func:`bankcourse.spark_mode.run_batch` on ``path`` (alerts written).

    Args:
        warmup_path: a small dataset run once first, untimed, so the figure is not the
            JVM's and the code generator's first run. Default: None (no warm-up).
        fmt: the alerts' format (``run_batch``'s ``fmt``). Default: parquet.
        label: added to the line's name (such as the row count). Default: none.
    """
    from bankcourse import dataio, spark_mode

    source = dataio.detect_format(path)
    if warmup_path is not None:
        spark_mode.run_batch(spark, warmup_path, settings, out_dir / "spark_warmup", fmt=fmt)
    runs: list[Run] = []
    for _ in range(repeat):
        cpu = cpu_seconds()
        report = spark_mode.run_batch(spark, path, settings, out_dir / "spark_batch", fmt=fmt)
        runs.append((report["rows"], report["seconds"], {
            "cpu_s": cpu_seconds() - cpu,
            "notes": f"{report['alerts']:,} alerts; spark.read, checks and rules as Columns, "
                     f"counts by observe in the same pass, alerts written as {fmt}"
                     + ("; after an untimed warm-up run" if warmup_path else "")}))
    name = f"spark batch ({source}{', ' + label if label else ''})"
    return _result(name, "spark", runs, statistic, "spark-batch")


def _topic_counts(settings: Settings, topics: Sequence[str]) -> dict[str, int]:
    """Messages in each topic (sum of end offsets; read_committed)."""
    from kafka import KafkaConsumer, TopicPartition

    from bankcourse import kafka_mode

    consumer = KafkaConsumer(**kafka_mode.client_config(settings), group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed")
    try:
        counts = {}
        for topic in topics:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            ends = consumer.end_offsets(tps, timeout_ms=10_000) if tps else {}
            counts[topic] = int(sum(ends.values()))
        return counts
    finally:
        consumer.close(autocommit=False)


def spark_load_topic(spark: Any, settings: Settings, source: Path, rows: int) -> float:
    """Put the first ``rows`` transactions of ``source`` into ``settings``' transactions
    topic with Spark's batch Kafka writer (the fastest loader here); seconds taken.

    The messages carry the course producer's fields, key (the account) and event-time
    text; numbers are Spark's JSON text (``0.0`` where Python writes ``0``), the same
    values. Not part of any figure.
    """
    from pyspark.sql import functions as F

    from bankcourse import spark_mode

    began = time.perf_counter()
    frame = spark.read.parquet(str(source)).limit(int(rows))
    columns = [(F.date_format("event_time", spark_mode.EVENT_TIME_FORMAT)
                if c == "event_time" else F.col(c)).alias(c) for c in frame.columns]
    frame.select(F.col("nameOrig").alias("key"), F.to_json(F.struct(*columns)).alias("value")) \
        .write.format("kafka").options(**spark_mode.kafka_options(settings)) \
        .option("topic", settings.topic_transactions) \
        .option("kafka.linger.ms", "20").option("kafka.batch.size", str(512 * 1024)).save()
    return time.perf_counter() - began


def spark_stream_throughput(spark: Any, settings: Settings, loaded: Settings, rows: int,
                            checkpoint_root: Path, *, batches: int = SPARK_BATCHES,
                            timeout_s: float = 600.0, broker_pid: int | None = None,
                            warmup: Settings | None = None) -> dict[str, Any]:
    """The Spark detector working through ``loaded``'s transactions topic (available-now).

    The topic is loaded before (not timed). An untimed warm-up query first works
    through ``warmup``'s topic, if given, so the timed query does not pay for code
    generation. The backlog is read in about ``batches`` micro-batches
    (``maxOffsetsPerTrigger``); the time counted is Spark's ``triggerExecution`` of
    every batch: from planning the first offsets to the last output written (the Kafka
    sink flushes its producer before a batch ends). Query start and stop are reported
    apart (``wall_s``).

    Args:
        loaded: settings whose ``topic_transactions`` holds the messages (fresh output
            topics are used).
        rows: how many messages the topic holds.
        batches: micro-batches to split the backlog into. Default: :data:`SPARK_BATCHES`.
        broker_pid: the broker's pid, to count its CPU in ``cpu_s``. Default: None.
        warmup: settings whose transactions topic holds a few messages. Default: None.

    Returns:
        ``rows`` and ``seconds`` (every batch, Spark's ``triggerExecution``),
        ``first_s`` and ``first_phases_s`` (the first batch and its largest phases),
        ``warmup_s`` (the warm-up query, start to stop), ``wall_s`` (the timed query,
        start to stop), ``batches``, ``alerts``, ``cpu_s`` (the timed query: Spark's
        JVM, this process, the broker).
    """
    from bankcourse import spark_mode

    warmup_s = 0.0
    if warmup is not None:
        topics = fresh_topics(settings, "spark-warm").replace(
            topic_transactions=warmup.topic_transactions)
        name = spark_mode.unique_name("bench_spark_warm")
        began = time.perf_counter()
        spark_mode.run_detector(spark, topics, available_now=True, timeout_s=timeout_s,
                                checkpoint_dir=checkpoint_root / name, query_name=name)
        warmup_s = time.perf_counter() - began
    topics = fresh_topics(settings, "spark").replace(
        topic_transactions=loaded.topic_transactions)
    name = spark_mode.unique_name("bench_spark")
    per_batch = max(1, -(-rows // max(1, batches)))
    cpu = cpu_seconds(broker_pid)
    report = spark_mode.run_detector(spark, topics, available_now=True, timeout_s=timeout_s,
                                     checkpoint_dir=checkpoint_root / name, query_name=name,
                                     max_offsets_per_trigger=per_batch)
    cpu = cpu_seconds(broker_pid) - cpu
    if report.rows != rows:
        log.warning("spark read %d messages of %d", report.rows, rows)
    done = sorted((p for p in report.progress if p.get("rows")),
                  key=lambda p: p["batch_id"])

    def seconds(p: dict[str, Any]) -> float:
        return (p.get("duration_ms") or {}).get("triggerExecution", 0) / 1000.0

    first = done[0] if done else {}
    phases = sorted(((k, v / 1000.0) for k, v in (first.get("duration_ms") or {}).items()
                     if k != "triggerExecution"), key=lambda kv: -kv[1])[:3]
    return {"rows": report.rows, "seconds": sum(map(seconds, done)),
            "first_s": seconds(first) if first else 0.0, "first_phases_s": dict(phases),
            "warmup_s": warmup_s, "wall_s": report.seconds, "batches": len(done),
            "alerts": report.alerts, "cpu_s": cpu}


def spark_latency(spark: Any, settings: Settings, source: Path, checkpoint_root: Path, *,
                  trigger: str = "processing-time",
                  rate_per_s: float = DEFAULT_LATENCY_RATE_PER_S,
                  duration_s: float = DEFAULT_LATENCY_S, warmup_s: float = SPARK_WARMUP_S,
                  start_timeout_s: float = 90.0, drain_timeout_s: float = 60.0,
                  async_progress: bool = True, max_offsets_per_trigger: int | None = None,
                  ) -> dict[str, float]:
    """Latency of the Spark detector at a steady produce rate.

    The query starts on new, empty topics; once it runs, :data:`SPARK_LATENCY_WARMUP`
    warm-up transactions (txn_ids of their own) are sent and processed first: the
    query compiles its code on its first batch, which is not the steady latency. Then
    the producer sends at ``rate_per_s`` for ``duration_s`` seconds; the query is
    stopped when every message has its processed record (or after
    ``drain_timeout_s``). The latency of an alert is its Kafka timestamp (set when
    Spark's producer sent it) minus its transaction's (set when the course's producer
    sent it); the messages of the first ``warmup_s`` seconds of the steady run (at
    most a quarter of it) are also left out.

    Args:
        trigger: ``processing-time`` (micro-batches back to back) or ``real-time``.
        async_progress: with ``processing-time``, Spark's asynchronous progress tracking
            (see :func:`bankcourse.spark_mode.start_detector`). Default: True.
        max_offsets_per_trigger: cap of messages per micro-batch. Default: None.

    Returns:
        :func:`bankcourse.kafka_mode.latency_percentiles` plus ``rate_per_s`` and
        ``messages``.
    """
    from bankcourse import generator, kafka_mode, spark_mode

    topics = fresh_topics(settings, f"spark-latency-{trigger}")
    warm_ids: set[str] = set()
    count = max(int(rate_per_s * duration_s), 1)
    name = spark_mode.unique_name("bench_latency")
    query, listener = spark_mode.start_detector(
        spark, topics, checkpoint_dir=checkpoint_root / name, trigger=trigger,
        interval_s=0 if trigger == "processing-time" else None, query_name=name,
        async_progress=async_progress and trigger == "processing-time",
        max_offsets_per_trigger=max_offsets_per_trigger)
    try:
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline and query.isActive:
            status = query.status or {}
            if query.lastProgress is not None or status.get("isTriggerActive") or \
                    "Waiting for" in str(status.get("message", "")):
                break
            time.sleep(0.2)
        if not query.isActive:
            raise RuntimeError(f"the Spark query stopped: {query.exception()}")
        warm = generator.generate_frame(SPARK_LATENCY_WARMUP, seed=5, start_row=90_000_000)
        warm_ids = set(warm["txn_id"])
        kafka_mode.produce(topics, warm, progress=False, create_topics=False)
        while time.monotonic() < deadline and query.isActive and _topic_counts(
                topics, [topics.topic_processed])[topics.topic_processed] < len(warm):
            time.sleep(0.2)
        produced = kafka_mode.produce(topics, source, max_messages=count,
                                      rate_per_s=rate_per_s, progress=False,
                                      create_topics=False)
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline and query.isActive:
            done = _topic_counts(topics, [topics.topic_processed])[topics.topic_processed]
            if done >= produced.messages + len(warm):
                break
            time.sleep(0.5)
        if not query.isActive:
            raise RuntimeError(f"the Spark query stopped: {query.exception()}")
    finally:
        # Stopping a real-time query interrupts its long-running tasks, which Spark logs
        # as errors with stack traces; expected here, so they are silenced for the stop.
        quiet = trigger == "real-time"
        if quiet:
            spark.sparkContext.setLogLevel("OFF")
        try:
            query.stop()
        finally:
            if quiet:
                time.sleep(1.0)  # the interrupted tasks log while they wind down
                spark.sparkContext.setLogLevel("WARN")
        with contextlib.suppress(Exception):
            spark.streams.removeListener(listener)
    sent = {m.json()["txn_id"]: m.timestamp_ms for m in kafka_mode.read_topic(
        topics, topics.topic_transactions, timeout_s=60)}
    sent = {k: v for k, v in sent.items() if k not in warm_ids}
    first_ms = min(sent.values()) if sent else 0
    warmup_s = min(warmup_s, duration_s / 4)  # a short run keeps most of its messages
    latencies = []
    for m in kafka_mode.read_topic(topics, topics.topic_alerts, timeout_s=60):
        sent_ms = sent.get(m.json()["txn_id"])
        if sent_ms is not None and sent_ms >= first_ms + warmup_s * 1000:
            latencies.append(m.timestamp_ms - sent_ms)
    return {**kafka_mode.latency_percentiles(latencies), "rate_per_s": produced.rate_per_s,
            "messages": float(produced.messages)}


# --- the whole run -------------------------------------------------------------------------


def _skipped(name: str, stage: str, reason: str, target_key: str = "") -> StageResult:
    return StageResult(name=name, stage=stage, skipped=reason, target_key=target_key)


def _finish(result: StageResult, baseline: StageResult | None) -> StageResult:
    """Fill in the ratio to the baseline and the target check."""
    if baseline is not None and baseline.rows_per_s > 0 and result.rows_per_s and \
            result.skipped is None:
        result.ratio_to_baseline = round(result.rows_per_s / baseline.rows_per_s, 2)
    target = TARGETS.get(result.target_key)
    if target is not None:
        result.target = target.describe()
        if result.skipped is None:
            result.target_met, result.shortfall = target.check(result)
    result.rows_per_s = round(result.rows_per_s, 1)
    for key in ("p50_ms", "p99_ms"):
        value = getattr(result, key)
        if value is not None:
            setattr(result, key, round(value, 2) if value == value else None)
    return result


def _broker_ready(settings: Settings, start: bool) -> tuple[bool, str, bool]:
    """(usable, why not, started here): the broker, started if asked and needed."""
    from bankcourse import broker

    if broker.is_running(settings):
        return True, "", False
    if settings.external_kafka:
        return False, (f"the Kafka cluster at {settings.bootstrap_servers} does not answer; "
                       f"check KAFKA_BOOTSTRAP_SERVERS"), False
    if not start:
        return False, (f"no Kafka broker answers at {settings.bootstrap_servers}; start it "
                       f"with `python -m bankcourse broker start`"), False
    try:
        broker.start(settings)
    except broker.BrokerError as exc:
        return False, f"the Kafka broker could not start: {exc}", False
    return True, "", True


def run_bench(
    settings: Settings,
    *,
    stages: Sequence[str] = STAGES,
    rows: int = DEFAULT_ROWS,
    seed: int = 42,
    baseline_rows: int = DEFAULT_BASELINE_ROWS,
    stream_rows: int = DEFAULT_STREAM_ROWS,
    spark_stream_rows: int | None = None,
    spark_batch_rows: int = 0,
    latency_rate_per_s: float = DEFAULT_LATENCY_RATE_PER_S,
    latency_s: float = DEFAULT_LATENCY_S,
    repeat: int = DEFAULT_REPEAT,
    stream_repeat: int = 1,
    statistic: str = "best",
    real_time: bool = True,
    start_broker: bool = True,
    keep_topics: bool = False,
    out_dir: str | Path = "output/bench",
    progress: Callable[[str], Any] | None = None,
) -> BenchResults:
    """Measure the chosen stages on one dataset; see the module docstring for what runs.

    Args:
        settings: the course settings (data folder, broker, Spark, thresholds).
        stages: which of :data:`STAGES` to run. Default: all. The baseline always
            runs: every ratio needs it.
        rows: rows of the dataset (generator and file stages). Default: 1,000,000.
        seed: the dataset's seed. Default: 42.
        baseline_rows: rows the naive baseline reads. Default: 200,000.
        stream_rows: rows streamed through Kafka. Default: 200,000.
        spark_stream_rows: messages the Spark stream throughput works through (at most
            ``rows``). Default: None, ``stream_rows`` (the command line's default is
            :data:`SPARK_STREAM_ROWS`).
        spark_batch_rows: rows of a second, larger parquet dataset Spark batch is timed
            on (generated on first use); 0 for none. Default: 0 (the command line's
            default is :data:`SPARK_BATCH_ROWS`).
        latency_rate_per_s: steady rate of the latency runs. Default: 2,000.
        latency_s: how long the latency runs produce. Default: 10.
        repeat: runs of baseline, generator, file and Spark batch (batch runs are short;
            the first at full size still waits on the JVM's compiler). Default: 3.
        stream_repeat: runs of the Kafka and Spark streaming throughput measurements.
            Default: 1.
        statistic: ``best`` (highest throughput) or ``median`` of the runs. Default: best.
        real_time: also try Spark's real-time mode. Default: True.
        start_broker: start the course's broker when none answers (and stop it at the
            end). Default: True.
        keep_topics: keep the topics the run created (to look at them); otherwise they
            are deleted at the end. Default: False.
        out_dir: where the stages' outputs (alerts files, checkpoints) go while they
            run, in a scratch folder deleted at the end. Default: ``output/bench``.
        progress: called with a line of text as each stage starts or is skipped.
            Default: log at INFO.

    Returns:
        A :class:`BenchResults` (not yet written: see :func:`write_results`).
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(STAGES)}")
    if statistic not in ("best", "median"):
        raise ValueError(f"statistic must be best or median, got {statistic!r}")
    for name, value in (("rows", rows), ("baseline_rows", baseline_rows),
                        ("stream_rows", stream_rows), ("repeat", repeat),
                        ("stream_repeat", stream_repeat)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    say = progress if progress is not None else (lambda text: log.info("bench: %s", text))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stream_rows = min(stream_rows, rows)
    began = time.perf_counter()
    results = BenchResults(
        machine=machine_info(settings),
        options={"stages": [s for s in STAGES if s in stages or s == "baseline"],
                 "rows": rows, "seed": seed,
                 "baseline_rows": min(baseline_rows, rows), "stream_rows": stream_rows,
                 "spark_stream_rows": min(spark_stream_rows or stream_rows, rows),
                 "spark_batch_rows": spark_batch_rows,
                 "latency_rate_per_s": latency_rate_per_s, "latency_s": latency_s,
                 "repeat": repeat, "stream_repeat": stream_repeat, "statistic": statistic,
                 "partitions": settings.partitions},
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    say(f"data: {rows:,} rows, seed {seed}, in {settings.data_dir}")
    paths = bench_datasets(settings, rows, seed, baseline_rows)

    broker_ok, broker_why, broker_started = False, "", False
    if any(s in stages for s in ("kafka", "spark")):
        say("broker: checking")
        broker_ok, broker_why, broker_started = _broker_ready(settings, start_broker)
        if not broker_ok:
            say(f"skipping the Kafka stages: {broker_why}")
    from bankcourse import broker

    broker_pid = broker.status(settings).pid if broker_ok else None
    sampler = MemorySampler(broker_pid).start()
    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=out))
    topics_before = len(_CREATED_TOPICS)
    baseline: StageResult | None = None
    try:
        def measured(label: str, stage: str, target_key: str,
                     work: Callable[[], StageResult]) -> StageResult:
            say(f"{label}: running")
            load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
            with sampler.stage(label):
                try:
                    result = work()
                except Exception as exc:  # recorded in the table; the other stages go on
                    log.warning("bench stage %s failed", label, exc_info=True)
                    result = _skipped(label, stage, f"failed: {exc}", target_key)
            result.target_key = result.target_key or target_key
            result.peak_rss_mb = sampler.peak(label)
            result.load_average = load
            results.stages.append(result)
            return result

        # The baseline always runs: every ratio needs it.
        baseline = measured("baseline (naive loop)", "baseline", "", lambda: measure_baseline(
            paths["jsonl"], settings, max_rows=baseline_rows, repeat=repeat,
            statistic=statistic, out_dir=scratch))
        if baseline.skipped:
            baseline = None
        if "generator" in stages:
            measured("generator", "generator", "generator", lambda: measure_generator(
                rows, seed, repeat=repeat, statistic=statistic))
        if "file" in stages:
            for fmt in ("csv.gz", "parquet"):
                measured(f"file ({fmt})", "file", "file", lambda fmt=fmt: measure_file_mode(
                    paths[fmt], settings, scratch, repeat=repeat, statistic=statistic))
            measured("rules alone (in memory)", "file", "rules", lambda: measure_rules(
                paths["parquet"], settings, repeat=repeat, statistic=statistic))
        loaded: Settings | None = None
        if "kafka" in stages:
            from bankcourse import kafka_mode

            for mode in kafka_mode.MODES:
                name = f"kafka {mode}"
                if not broker_ok:
                    results.stages.append(_skipped(name, "kafka", broker_why, "kafka"))
                    continue
                holder: dict[str, Settings] = {}

                def kafka_work(mode: str = mode, holder: dict[str, Settings] = holder,
                               ) -> StageResult:
                    result, holder["topics"] = measure_kafka(
                        settings, paths["parquet"], mode=mode, rows=stream_rows,
                        latency_rate_per_s=latency_rate_per_s, latency_s=latency_s,
                        repeat=stream_repeat, statistic=statistic, broker_pid=broker_pid)
                    return result

                result = measured(name, "kafka", "kafka", kafka_work)
                if loaded is None and "topics" in holder:
                    loaded = holder["topics"]
            if broker_ok and settings.partitions >= KAFKA_GROUP_DETECTORS:
                # What a consumer group is for: a second detector process, a second core.
                measured(f"kafka at-least-once, {KAFKA_GROUP_DETECTORS} detectors", "kafka",
                         "kafka-throughput", lambda: measure_kafka_group(
                             settings, paths["parquet"], rows=stream_rows,
                             repeat=stream_repeat, statistic=statistic,
                             broker_pid=broker_pid))
        if "spark" in stages:
            _run_spark_stages(results, measured, settings, paths, scratch, broker_ok,
                              broker_why, loaded, broker_pid,
                              stream_rows=min(spark_stream_rows or stream_rows, rows),
                              batch_rows=spark_batch_rows, seed=seed,
                              latency_rate_per_s=latency_rate_per_s, latency_s=latency_s,
                              repeat=repeat, stream_repeat=stream_repeat, statistic=statistic,
                              real_time=real_time, say=say)
    finally:
        sampler.stop()
        shutil.rmtree(scratch, ignore_errors=True)  # alerts files and checkpoints
        if broker_ok and not keep_topics:
            delete_topics(settings, _CREATED_TOPICS[topics_before:])
        if broker_started:
            broker.stop(settings)
    for result in results.stages:
        _finish(result, baseline)
    whole = StageResult(name="whole run (peak memory)", stage="memory", target_key="memory",
                        peak_rss_mb={k: round(v, 1) for k, v in sampler.overall.items()},
                        notes=f"largest sum of one sample, during {sampler.overall_label}; "
                              f"{sampler.samples} samples every {sampler.interval_s:g} s")
    results.stages.append(_finish(whole, None))
    results.seconds = round(time.perf_counter() - began, 1)
    return results


def _run_spark_stages(results: BenchResults, measured: Callable[..., StageResult],
                      settings: Settings, paths: dict[str, Path], scratch: Path,
                      broker_ok: bool, broker_why: str, loaded: Settings | None,
                      broker_pid: int | None, *,
                      stream_rows: int, latency_rate_per_s: float, latency_s: float,
                      repeat: int, stream_repeat: int, statistic: str, real_time: bool,
                      say: Callable[[str], Any], batch_rows: int = 0, seed: int = 42,
                      ) -> None:
    """The Spark lines: batch (the dataset, and ``batch_rows`` rows if given),
    Kafka-to-Kafka micro-batch throughput on ``stream_rows`` pre-loaded messages and
    latency, real-time mode's latency."""
    from bankcourse import dataio, spark_mode, spark_session

    names = ["spark batch (parquet)", "spark kafka->kafka micro-batch"]
    if real_time:
        names.append("spark kafka->kafka real-time")
    keys = {names[1]: "spark-stream", "spark kafka->kafka real-time": "spark-real-time"}
    try:
        spark_session.check_java()
    except spark_session.SparkSetupError as exc:  # no Java 17+: say so, go on without Spark
        for name in names:
            results.stages.append(_skipped(name, "spark", str(exc), keys.get(name, "")))
        say(f"skipping the Spark stages: {exc}")
        return
    say("spark: starting the session")
    from pyspark.sql import SparkSession

    # A session already running (a notebook's) is used and left running.
    ours = SparkSession.getActiveSession() is None
    began = time.perf_counter()
    try:
        spark = spark_mode.get_session(settings, app_name="bankcourse-bench")
    except Exception as exc:
        for name in names:
            results.stages.append(_skipped(name, "spark", f"no Spark session: {exc}",
                                           keys.get(name, "")))
        say(f"skipping the Spark stages: {exc}")
        return
    session_s = time.perf_counter() - began
    checkpoints = scratch / "checkpoints"
    try:
        batch = measured(names[0], "spark", "spark-batch", lambda: measure_spark_batch(
            spark, paths["parquet"], settings, scratch, repeat=repeat,
            statistic=statistic, warmup_path=paths["warmup"]))
        batch.notes += (f"; session start (not counted) {session_s:.1f} s"
                        if ours else "; the session was already running")
        if batch_rows and not batch.skipped and batch_rows > batch.rows:
            say(f"spark: the {batch_rows:,}-row parquet dataset (generated on first use)")
            big = dataio.ensure_dataset(settings, rows=batch_rows, seed=seed, fmt="parquet")
            measured(f"spark batch (parquet, {batch_rows:,} rows)", "spark", "spark-batch",
                     lambda: measure_spark_batch(spark, big, settings, scratch,
                                                 repeat=repeat, statistic=statistic,
                                                 label=f"{batch_rows:,} rows"))
        if not broker_ok:
            for name in names[1:]:
                results.stages.append(_skipped(name, "spark", broker_why, keys[name]))
            return

        def micro_batch() -> StageResult:
            source = loaded
            if source is None or _topic_counts(settings, [source.topic_transactions]).get(
                    source.topic_transactions, 0) != stream_rows:
                source = fresh_topics(settings, "spark-input")
                load_s = spark_load_topic(spark, source, paths["parquet"], stream_rows)
                say(f"spark: {stream_rows:,} messages loaded in {load_s:.1f} s (not timed)")
            warm = fresh_topics(settings, "spark-warm-input")
            spark_load_topic(spark, warm, paths["warmup"], SPARK_WARMUP_ROWS)
            runs: list[Run] = []
            for _ in range(stream_repeat):
                f = spark_stream_throughput(spark, settings, source, stream_rows, checkpoints,
                                            broker_pid=broker_pid, warmup=warm)
                phases = ", ".join(f"{k} {v:.1f} s" for k, v in f["first_phases_s"].items())
                runs.append((f["rows"], f["seconds"], {
                    "cpu_s": f["cpu_s"],
                    "notes": f"{f['rows']:,} messages pre-loaded, in {f['batches']} "
                             f"micro-batches after an untimed warm-up query "
                             f"({f['warmup_s']:.1f} s); txn/s over Spark's triggerExecution "
                             f"of every batch (first offset to last output written); the "
                             f"first took {f['first_s']:.1f} s ({phases}); query start to "
                             f"stop {_rate(f['rows'], f['wall_s'])}/s; session start "
                             f"{session_s:.1f} s (not counted); {f['alerts']:,} alerts"}))
            result = _result(names[1], "spark", runs, statistic, "spark-stream")
            lat = spark_latency(spark, settings, paths["parquet"], checkpoints,
                                rate_per_s=latency_rate_per_s, duration_s=latency_s)
            result.p50_ms, result.p99_ms = lat["p50_ms"], lat["p99_ms"]
            result.latency_rate_per_s = round(lat["rate_per_s"], 1)
            result.notes += (f"; latency (processing-time trigger, back to back, async "
                             f"progress tracking) over {lat['count']:.0f} alerts, max "
                             f"{lat['max_ms']:.0f} ms")
            return result

        measured(names[1], "spark", "spark-stream", micro_batch)
        if real_time:
            def real_time_mode() -> StageResult:
                lat = spark_latency(spark, settings, paths["parquet"], checkpoints,
                                    trigger="real-time", rate_per_s=latency_rate_per_s,
                                    duration_s=latency_s)
                return StageResult(
                    name=names[2], stage="spark", rows=int(lat["messages"]),
                    p50_ms=lat["p50_ms"], p99_ms=lat["p99_ms"],
                    latency_rate_per_s=round(lat["rate_per_s"], 1),
                    target_key="spark-real-time",
                    notes=f"latency only, over {lat['count']:.0f} alerts of "
                          f"{lat['messages']:,.0f} transactions sent at "
                          f"{lat['rate_per_s']:,.0f}/s; max {lat['max_ms']:.0f} ms")

            result = measured(names[2], "spark", "spark-real-time", real_time_mode)
            if result.skipped:
                result.skipped = f"real-time mode not available here: {result.skipped}"
    finally:
        if ours:  # the bench started it: free the JVM's memory too (a notebook goes on)
            spark_session.stop_session(spark)


# --- reporting -----------------------------------------------------------------------------


def _rate(rows: float, seconds: float) -> str:
    return f"{rows / seconds:,.0f}" if seconds > 0 else "-"


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def _rss(peak: dict[str, float]) -> str:
    if not peak:
        return "-"
    split = "/".join(f"{peak.get(g, 0.0):.0f}" for g in GROUPS)
    return f"{peak.get('total', 0.0):,.0f} ({split})"


def _met(result: StageResult) -> str:
    if result.skipped:
        return "skipped"
    if result.target_met is None:
        return "-" if not result.target else "?"
    return "yes" if result.target_met else f"NO: {result.shortfall}"


TABLE_COLUMNS: tuple[str, ...] = (
    "stage", "rows", "txn/s", "x baseline", "txn/CPU-s", "p50 ms", "p99 ms",
    "peak RSS MB (broker/python/spark)", "target", "met?",
)


def table_rows(results: BenchResults) -> list[list[str]]:
    """The table's cells, one list per line (see :data:`TABLE_COLUMNS`)."""
    out = []
    for r in results.stages:
        if r.skipped:
            out.append([r.name, "-", "-", "-", "-", "-", "-", "-", r.target, "skipped"])
            continue
        out.append([
            r.name, _number(r.rows) if r.rows else "-",
            _number(r.rows_per_s) if r.rows_per_s else "-",
            _number(r.ratio_to_baseline, 1) if r.ratio_to_baseline is not None else "-",
            _number(r.rows_per_cpu_s),
            _number(r.p50_ms, 1), _number(r.p99_ms, 1), _rss(r.peak_rss_mb),
            r.target or "-", _met(r),
        ])
    return out


def format_table(results: BenchResults) -> str:
    """The table as aligned text, for a terminal."""
    rows = [list(TABLE_COLUMNS), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    right = {1, 2, 3, 4, 5, 6}
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                 for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    skipped = [r for r in results.stages if r.skipped]
    for r in skipped:
        lines.append(f"skipped {r.name}: {r.skipped}")
    return "\n".join(lines)


def _machine_line(machine: dict[str, Any]) -> str:
    load = ", ".join(f"{x:g}" for x in machine.get("load_average", []))
    return (f"{machine.get('cores')} cores ({machine.get('cpu')}), "
            f"{machine.get('memory_gb')} GB memory, load average {load}; "
            f"Python {machine.get('python')}, Java {machine.get('java')}, "
            f"pyspark {machine.get('pyspark')}, Kafka {machine.get('kafka')}, "
            f"kafka-python {machine.get('kafka_python')}, pandas {machine.get('pandas')}, "
            f"pyarrow {machine.get('pyarrow')}")


def to_markdown(results: BenchResults) -> str:
    """The results as Markdown: the machine, the options, the table and the notes."""
    o = results.options
    lines = [
        "# bankcourse benchmark",
        "",
        f"Run {results.started_at} in {results.seconds:,.0f} s with `python -m bankcourse "
        f"bench`: {o['rows']:,} rows (seed {o['seed']}); baseline on the first "
        f"{o['baseline_rows']:,}; {o['stream_rows']:,} streamed through Kafka and Spark; "
        f"latency at {o['latency_rate_per_s']:,.0f} txn/s for {o['latency_s']:g} s; "
        f"{o['statistic']} of {o['repeat']} run(s) (streams: {o['stream_repeat']}).",
        "",
        f"**Machine:** {_machine_line(results.machine)}.",
        "",
        "x baseline is the stage's txn/s over the naive per-record loop's, measured in "
        "the same run, so it means the same on a busy machine; txn/CPU-s divides by the "
        "CPU time the course's processes used (this one, its children, the broker for the "
        "streams), which a busy machine changes less than the wall clock. Peak RSS is the "
        "largest total of one sample during the stage (broker/python/spark: each group's "
        "own peak).",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "|".join(["---", *["---:"] * 7, "---", "---"]) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    lines += ["", "## Notes", ""]
    for r in results.stages:
        text = f"skipped: {r.skipped}" if r.skipped else r.notes
        if r.load_average is not None:
            text += f"; load average {r.load_average:g} at the start"
        if len(r.runs_rows_per_s) > 1:
            text += "; runs: " + ", ".join(f"{x:,.0f}" for x in r.runs_rows_per_s) + "/s"
        lines.append(f"- **{r.name}**: {text}")
    ref = ", ".join(f"{k} ~{v:,.0f} txn/s" for k, v in REFERENCE_TXN_PER_S.items())
    lines += ["", f"Reference platform's claims: {ref}.", ""]
    return "\n".join(lines)


def to_frame(results: BenchResults) -> Any:
    """The results as a pandas DataFrame, one row per line, numbers as numbers."""
    import pandas as pd

    rows = []
    for r in results.stages:
        rows.append({
            "stage": r.name, "rows": r.rows or None, "txn/s": r.rows_per_s or None,
            "x baseline": r.ratio_to_baseline, "txn/CPU-s": r.rows_per_cpu_s,
            "p50 ms": r.p50_ms, "p99 ms": r.p99_ms,
            **{f"peak {g} MB": r.peak_rss_mb.get(g) for g in (*GROUPS, "total")},
            "reference txn/s": REFERENCE_TXN_PER_S.get(r.stage)
            if r.stage != "memory" and not r.name.endswith("real-time") else None,
            "target": r.target, "met": r.target_met, "skipped": r.skipped,
        })
    return pd.DataFrame(rows).set_index("stage")


def _bar_groups(results: BenchResults) -> list[tuple[str, float, float | None]]:
    """(label, measured txn/s, reference claim) per measured line with a throughput."""
    out = []
    for r in results.stages:
        if r.skipped or not r.rows_per_s or r.stage == "memory":
            continue
        if r.name.endswith("real-time"):
            continue  # its txn/s is only the produce rate of the latency run
        reference = REFERENCE_TXN_PER_S.get(r.stage)
        out.append((r.name, r.rows_per_s, reference))
    return out


def plot_results(results: BenchResults, ax: Any = None) -> Any:
    """Throughput of every stage on a log scale, the reference claims beside; the Axes."""
    import matplotlib.pyplot as plt

    groups = _bar_groups(results)
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4.8))
    x = list(range(len(groups)))
    measured = [g[1] for g in groups]
    ax.bar([i - 0.2 for i in x], measured, 0.4, color="#3D5A80", label="measured here")
    ref_x = [i + 0.2 for i, g in zip(x, groups, strict=True) if g[2] is not None]
    ref_y = [g[2] for g in groups if g[2] is not None]
    ax.bar(ref_x, ref_y, 0.4, color="#BBBBBB", label="reference platform's claim")
    for i, value in zip(x, measured, strict=True):
        ax.annotate(f"{value:,.0f}", (i - 0.2, value), ha="center", va="bottom", fontsize=7)
    baseline = results.get("baseline (naive loop)")
    if baseline is not None and baseline.rows_per_s and not baseline.skipped:
        ax.axhline(baseline.rows_per_s, color="#E07A5F", linestyle="--", linewidth=1,
                   label="naive baseline")
    ax.set_yscale("log")
    ax.set_xticks(x, [g[0] for g in groups], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("transactions per second (log scale)")
    load = ", ".join(f"{v:g}" for v in results.machine.get("load_average", []))
    ax.set_title(f"bankcourse bench: {results.machine.get('cores')} cores, "
                 f"load average {load}", fontsize=10)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax


def write_results(results: BenchResults, out_dir: str | Path) -> dict[str, Path]:
    """Write ``bench.md``, ``bench.json`` and ``bench.png`` into ``out_dir``.

    Returns:
        ``{"md": path, "json": path, "png": path}``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "bench.md", "json": out / "bench.json", "png": out / "bench.png"}
    paths["md"].write_text(to_markdown(results))
    paths["json"].write_text(json.dumps(results.to_dict(), indent=2) + "\n")
    ax = plot_results(results)
    ax.figure.savefig(paths["png"], dpi=120)
    plt.close(ax.figure)
    log.info("bench results written: %s", ", ".join(str(p) for p in paths.values()))
    return paths


# --- command line --------------------------------------------------------------------------


def _stage_list(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{','.join(STAGES)}")
    return [s for s in STAGES if s in chosen]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _cli_bench(args: argparse.Namespace) -> int:
    if not args.verbose:
        # The progress lines and the table say what happens; the stages' own INFO lines
        # (one per chunk, batch or topic) come back with -v.
        for name in ("kafka", "py4j", "bankcourse"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # kafka-python's I/O thread warns when it waits for the GIL, expected under load.
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
        # ... and its metadata thread reports a refresh cancelled by a client closing.
        logging.getLogger("kafka.cluster").setLevel(logging.CRITICAL)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"bankcourse bench: stages {','.join(args.stages)}; the machine has "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    results = run_bench(
        settings, stages=args.stages, rows=args.rows, seed=args.seed,
        baseline_rows=args.baseline_rows, stream_rows=args.stream_rows,
        spark_stream_rows=args.spark_stream_rows, spark_batch_rows=args.spark_batch_rows,
        latency_rate_per_s=args.latency_rate, latency_s=args.latency_s, repeat=args.repeat,
        stream_repeat=args.stream_repeat, statistic=args.statistic,
        real_time=not args.no_real_time, start_broker=not args.no_broker_start,
        keep_topics=args.keep_topics,
        out_dir=args.out, progress=lambda text: print(f"  {text}", flush=True),
    )
    paths = write_results(results, args.out)
    print()
    print(format_table(results))
    print(f"\nmachine: {_machine_line(results.machine)}")
    print(f"written: {paths['md']}, {paths['json']}, {paths['png']} "
          f"({results.seconds:,.0f} s)")
    failed = [r for r in results.stages if r.skipped and r.skipped.startswith("failed")]
    return 1 if failed else 0


def register_cli(subparsers: Any) -> None:
    """Add ``bench``: every stage measured in one run."""
    p = subparsers.add_parser(
        "bench", help="measure every stage's speed, latency and memory in one run",
        description="Measure, on one generated dataset and in one run, a naive per-record "
                    "baseline, the generator, file mode, Kafka mode and Spark mode "
                    "(throughput, latency at a steady rate, peak memory), and write "
                    "bench.md, bench.json and bench.png.")
    p.add_argument("--stages", type=_stage_list, default=list(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all; "
                        f"baseline,generator,file need no Java; the baseline always runs)")
    p.add_argument("--rows", type=_positive_int, default=DEFAULT_ROWS,
                   help=f"rows of the dataset (default: {DEFAULT_ROWS})")
    p.add_argument("--seed", type=int, default=42, help="generator seed (default: 42)")
    p.add_argument("--baseline-rows", type=_positive_int, default=DEFAULT_BASELINE_ROWS,
                   help=f"rows the naive baseline reads (default: {DEFAULT_BASELINE_ROWS})")
    p.add_argument("--stream-rows", type=_positive_int, default=DEFAULT_STREAM_ROWS,
                   help=f"rows streamed through Kafka and Spark (default: "
                        f"{DEFAULT_STREAM_ROWS})")
    p.add_argument("--spark-stream-rows", type=_positive_int, default=SPARK_STREAM_ROWS,
                   help=f"messages the Spark stream throughput works through, pre-loaded "
                        f"(default: {SPARK_STREAM_ROWS}, at most --rows)")
    p.add_argument("--spark-batch-rows", type=int, default=SPARK_BATCH_ROWS,
                   help=f"rows of a larger parquet dataset Spark batch is also timed on "
                        f"(default: {SPARK_BATCH_ROWS}; 0: none)")
    p.add_argument("--latency-rate", type=_positive_float, default=DEFAULT_LATENCY_RATE_PER_S,
                   help=f"steady txn/s of the latency runs (default: "
                        f"{DEFAULT_LATENCY_RATE_PER_S:g})")
    p.add_argument("--latency-s", type=_positive_float, default=DEFAULT_LATENCY_S,
                   help=f"seconds of each latency run (default: {DEFAULT_LATENCY_S:g})")
    p.add_argument("--repeat", type=_positive_int, default=DEFAULT_REPEAT,
                   help=f"runs of baseline, generator, file and Spark batch (default: "
                        f"{DEFAULT_REPEAT})")
    p.add_argument("--stream-repeat", type=_positive_int, default=1,
                   help="runs of the Kafka and Spark streaming measurements (default: 1)")
    p.add_argument("--statistic", choices=("best", "median"), default="best",
                   help="which run to report (default: best)")
    p.add_argument("--no-real-time", action="store_true",
                   help="do not try Spark's real-time mode")
    p.add_argument("--no-broker-start", action="store_true",
                   help="do not start the course's broker when none answers (the Kafka "
                        "stages are then skipped)")
    p.add_argument("--keep-topics", action="store_true",
                   help="keep the topics the run creates (default: delete them at the end)")
    p.add_argument("--out", type=Path, default=Path("output/bench"),
                   help="output folder (default: output/bench)")
    p.set_defaults(func=_cli_bench)
