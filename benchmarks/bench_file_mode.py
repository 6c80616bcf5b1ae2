"""Benchmark of stage 1, file mode: how many transactions per second, and where time goes.

Usage::

    .venv/bin/python benchmarks/bench_file_mode.py              # 2,000,000 rows
    .venv/bin/python benchmarks/bench_file_mode.py --rows 5000000 --chunk-rows 500000

It generates (once, cached in ``--data-dir``) a csv.gz and a parquet dataset, then prints

* file mode end to end (read, clean, rules, alerts written) from csv.gz and from parquet;
* the same broken into its steps: reading only, ``schema.clean_frame``,
  ``rules.evaluate_frame`` and writing the alerts JSON lines;
* rule evaluation alone on an in-memory DataFrame;
* a baseline: a plain Python loop calling ``rules.evaluate_record`` on each record.

Each figure is given as rows per wall-clock second and per CPU second of this process
(all its threads), and as ratios to the baseline. On a machine shared with other work
the wall figures drop; the CPU figures and the CPU ratio move much less.

Targets on 2 idle cores: end to end from csv.gz >= 1,000,000 rows/s; rule evaluation
alone >= 20,000,000 rows/s. The per-step lines show what bounds the end-to-end figure:
steps run one after another there, while ``run_file_mode`` overlaps reading the next
chunk (and writing this chunk's alerts) with cleaning and rules in other threads.

Expected output: a header, then one line per measurement, such as::

    end to end, csv.gz      2,000,000 rows  wall   4.1 s   487,000 rows/s  cpu ...
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bankcourse import dataio, file_mode, generator, rules, schema
from bankcourse.settings import Settings


class Timer:
    """Wall and CPU seconds of a block (CPU counts every thread of this process)."""

    rows = 0

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall_s = time.perf_counter() - self.wall0
        self.cpu_s = time.process_time() - self.cpu0


def line(label: str, rows: int, timer: Timer, baseline: Timer | None) -> Timer:
    """Print one measurement with its ratio to the baseline (per wall and per CPU second)."""
    wall = rows / timer.wall_s if timer.wall_s > 0 else float("inf")
    cpu = rows / timer.cpu_s if timer.cpu_s > 0 else float("inf")
    ratio = ""
    if baseline is not None:
        ratio = (f"{wall / (baseline.rows / baseline.wall_s):7.1f} x / "
                 f"{cpu / (baseline.rows / baseline.cpu_s):7.1f} x baseline (wall / cpu)")
    print(f"{label:<28} {rows:>11,} rows  wall {timer.wall_s:7.3f} s {wall:>12,.0f} rows/s"
          f"  cpu {timer.cpu_s:7.3f} s {cpu:>12,.0f} rows/cpu-s  {ratio}", flush=True)
    timer.rows = rows
    return timer


def best_of(repeats: int, work: Callable[[], Any]) -> Timer:
    """The fastest of ``repeats`` runs of ``work`` (wall clock)."""
    best: Timer | None = None
    for _ in range(repeats):
        with Timer() as timer:
            work()
        if best is None or timer.wall_s < best.wall_s:
            best = timer
    assert best is not None
    return best


def baseline(rows: int) -> Timer:
    """Time a plain per-record loop with ``rules.evaluate_record`` (and ``alert_record``)."""
    frame = generator.generate_frame(rows, seed=7)
    records = frame.astype({"event_time": "str"}).to_dict(orient="records")
    t = Settings().thresholds

    def loop() -> int:
        alerts = 0
        for record in records:
            fired = rules.evaluate_record(record, t)
            if fired:
                rules.alert_record(record, fired)
                alerts += 1
        return alerts

    timer = best_of(2, loop)
    return line("baseline: per-record loop", rows, timer, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows (default: 2000000)")
    parser.add_argument("--chunk-rows", type=int, default=file_mode.DEFAULT_CHUNK_ROWS,
                        help=f"rows per chunk (default: {file_mode.DEFAULT_CHUNK_ROWS})")
    parser.add_argument("--baseline-rows", type=int, default=200_000,
                        help="rows for the per-record baseline (default: 200000)")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "bankcourse-bench",
                        help="where the datasets are generated and kept")
    parser.add_argument("--skip-steps", action="store_true", help="no per-step breakdown")
    parser.add_argument("--no-read-ahead", action="store_true",
                        help="read chunks in the main thread (to see what reading ahead gains)")
    args = parser.parse_args()
    rows, chunk_rows = args.rows, args.chunk_rows
    settings = Settings(data_dir=args.data_dir)
    out_dir = args.data_dir / "file_mode_out"
    print(f"file mode benchmark: {rows:,} rows, chunks of {chunk_rows:,}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    paths = {}
    for fmt in ("csv.gz", "parquet"):
        path = dataio.dataset_path(settings, rows, 42, fmt)
        if not path.exists():
            with Timer() as timer:
                generator.write_dataset(path, rows, 42, fmt)
            print(f"generated {path} in {timer.wall_s:.1f} s")
        paths[fmt] = path

    base = baseline(args.baseline_rows)

    for fmt, path in paths.items():
        with Timer() as timer:
            report = file_mode.run_file_mode(path, settings, out_dir, chunk_rows=chunk_rows,
                                             read_ahead=not args.no_read_ahead)
        line(f"end to end, {fmt}", report.rows_read, timer, base)
    size_mb = report.alerts_path.stat().st_size / 1e6
    print(f"  ({report.alerts:,} alerts, {size_mb:,.0f} MB of JSON lines)")

    frame = generator.generate_frame(rows, seed=42)
    thresholds = settings.thresholds
    timer = best_of(5, lambda: rules.evaluate_frame(frame, thresholds))
    line("rules alone, in memory", rows, timer, base)

    if args.skip_steps:
        return
    with Timer() as timer, gzip.open(paths["csv.gz"], "rb") as handle:
        while handle.read(1 << 22):
            pass
    line("gzip inflate only (1 core)", rows, timer, base)
    for fmt, path in paths.items():
        steps(fmt, path, rows, chunk_rows, thresholds, base)


def steps(fmt: str, path: Path, rows: int, chunk_rows: int, thresholds: Any,
          base: Timer) -> None:
    """Time each step of file mode on its own, one after the other (no overlap)."""
    print(f"steps, {fmt}:")
    with Timer() as timer:
        frames = list(dataio.iter_frames(path, chunk_rows))
    line("  read (dataio.iter_frames)", rows, timer, base)
    cleaned = []
    with Timer() as timer:
        for raw in frames:
            cleaned.append(schema.clean_frame(raw)[0])
    line("  schema.clean_frame", rows, timer, base)
    del frames
    flagged = []
    with Timer() as timer:
        for valid in cleaned:
            flagged.append(rules.evaluate_frame(valid, thresholds))
    line("  rules.evaluate_frame", rows, timer, base)
    with Timer() as timer, open(os.devnull, "wb") as sink:
        for valid, flags in zip(cleaned, flagged, strict=True):
            sink.write(file_mode.alerts_jsonl(valid, flags))
    line("  alerts as JSON lines", rows, timer, base)
    if fmt == "csv.gz":
        alerts = rules.alerts_frame(cleaned[0], flagged[0])
        sample = min(len(alerts), 20_000)
        with Timer() as timer:
            alerts.head(sample).to_json(orient="records", lines=True, date_format="iso",
                                        date_unit="us")
        line("  (pandas to_json, alerts)", sample, timer, None)

if __name__ == "__main__":
    main()
