"""How fast the generator draws rows, writes csv.gz and reads it back, and how much memory.

Usage::

    python benchmarks/bench_generator.py                  # 2 million rows
    python benchmarks/bench_generator.py --rows 10000000  # the full figure

Each phase prints wall-clock rows/s, CPU seconds (all threads) and rows per CPU-second,
and the peak resident memory above what the process held before the phase, sampled
every 10 ms with psutil. Chunked work keeps that peak flat: it does not grow with
``--rows``. On a shared machine compare the CPU figures; the load average is printed.

Targets: generation >= 2 M rows/s in memory; reading csv.gz well above 1 M rows/s so
file mode can reach 1 M transactions/s end to end on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bankcourse import dataio, generator, schema


class PeakRss:
    """Samples this process's resident memory in a thread; ``peak_mb`` above the start."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._start_bytes = 0
        self._peak_bytes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak_bytes = max(self._peak_bytes, self._process.memory_info().rss)
            self._stop.wait(self._interval_s)

    def __enter__(self) -> PeakRss:
        self._start_bytes = self._peak_bytes = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak_bytes = max(self._peak_bytes, self._process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return (self._peak_bytes - self._start_bytes) / 2**20

    @property
    def total_mb(self) -> float:
        return self._peak_bytes / 2**20


def measure(label: str, rows: int, work: Callable[[], object], extra: str = "") -> float:
    """Run ``work`` once, print rows/s and peak memory, return the seconds taken."""
    with PeakRss() as rss:
        started, cpu_started = time.perf_counter(), time.process_time()
        work()
        seconds = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
    print(f"{label:<19}: {rows:,} rows in {seconds:.2f} s = {rows / seconds / 1e6:.2f} M rows/s "
          f"(CPU {cpu_s:.2f} s, {rows / cpu_s / 1e6:.2f} M rows per CPU-s), "
          f"peak RSS +{rss.peak_mb:.0f} MB (process {rss.total_mb:.0f} MB){extra}", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000,
                        help="rows to generate and write (default: 2000000)")
    parser.add_argument("--seed", type=int, default=42, help="generator seed (default: 42)")
    parser.add_argument("--chunk-rows", type=int, default=generator.BLOCK_ROWS,
                        help=f"rows per chunk (default: {generator.BLOCK_ROWS})")
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder for the csv.gz (default: a temporary folder, removed)")
    parser.add_argument("--skip-clean", action="store_true",
                        help="do not time schema.clean_frame on the read frames")
    args = parser.parse_args()
    rows = args.rows

    def generate() -> None:
        for _ in generator.iter_chunks(rows, args.seed, args.chunk_rows):
            pass

    load = ", ".join(f"{x:.1f}" for x in psutil.getloadavg())
    print(f"bankcourse generator benchmark: {rows:,} rows, seed {args.seed}, "
          f"chunks of {args.chunk_rows:,}, {psutil.cpu_count()} CPUs, load average {load}")
    measure("generate in memory", rows, generate)
    measure("generate 200k frame", 200_000, lambda: generator.generate_frame(200_000, args.seed))

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / f"bench-{rows}.csv.gz"
        seconds = measure("write csv.gz", rows, lambda: generator.write_dataset(
            path, rows, args.seed, chunk_rows=args.chunk_rows))
        size_mb = path.stat().st_size / 2**20
        print(f"{'':<19}  file {size_mb:.0f} MB, {rows / seconds / 1e6:.2f} M rows/s written")

        def read() -> None:
            count = sum(len(f) for f in dataio.iter_frames(path, 200_000))
            assert count == rows, count

        measure("read csv.gz", rows, read)
        if not args.skip_clean:
            def read_clean() -> None:
                bad = 0
                for frame in dataio.iter_frames(path, 200_000):
                    bad += len(schema.clean_frame(frame)[1])
                assert bad == 0, bad

            measure("read + clean_frame", rows, read_clean)


if __name__ == "__main__":
    main()
