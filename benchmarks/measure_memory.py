"""Peak resident memory of the whole course, notebook by notebook, as on Binder.

mybinder.org gives a session at most 2 GB: the Kafka broker, the notebook kernel(s),
Spark's driver JVM and the Jupyter server together. This script starts the course's
broker, runs the notebooks in order and, every ``--interval-s`` seconds, adds up the
resident memory (RSS) of every process involved:

* ``broker``: the Kafka broker JVM (its own session, found through its pid file);
* ``kernel``: the IPython kernel(s) running the notebooks;
* ``spark``: Spark's driver JVM (a child of the kernel);
* ``runner``: this script (it stands in for the Jupyter server, which is not started);
* ``other``: any other process the notebooks start.

The peak is of the RSS total: it counts pages shared between processes (libraries)
once per process, so it errs on the high side, as a memory limit should be checked. A
child forked but not yet running its own program (the JVM starting ``rm``) shares its
parent's pages and is not counted. The PSS column (shared pages split between their
processes) is the lower bound, closer to what a container's memory limit charges.

Kernel modes (``--kernels``):

* ``one`` (default): one kernel runs every notebook in turn, like a learner who never
  restarts; whatever a notebook leaves alive (a Spark session) stays.
* ``fresh``: a new kernel per notebook, shut down afterwards (papermill, ``make course``).
* ``keep``: a new kernel per notebook, all left running, like a learner who closes tabs
  without shutting their kernels down (the worst case).

Usage::

    BANKCOURSE_KAFKA_PORT=59092 BANKCOURSE_KAFKA_CONTROLLER_PORT=59093 \\
        .venv/bin/python benchmarks/measure_memory.py [--kernels one|fresh|keep] \\
        [--limit-mb 2048] [--out output/memory] [NOTEBOOK ...]

Expected output: one line per notebook (seconds, peak RSS total and its split by
process, the cell running at the peak, the peak PSS total), an overall line and the
processes at the overall peak, e.g.::

    notebook                 s  peak_MB  broker  kernel  spark  runner  other  cell  PSS_MB
    00_setup.ipynb         4.9      404     175     148      0      62     20     8     380
    ...
    overall                        1534 ... at 05_spark_streaming.ipynb, cell 15: under 2048 MB

It exits 1 when the overall peak is over ``--limit-mb``. The executed notebooks and a
JSON file of every figure go to ``--out``, the kernels' own output (Spark's log) to
``--out``/kernels.log. A broker it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import psutil
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from bankcourse import broker
from bankcourse.settings import Settings

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("broker", "kernel", "spark", "runner", "other")
MB = 1024 * 1024



@dataclass
class Sample:
    """One look at every process: RSS per category, the PSS total, and the processes.

    ``processes`` holds (category, pid, RSS MB, command) per process counted.
    """

    split_mb: dict[str, float]
    pss_mb: float
    processes: list[tuple[str, int, float, str]]

    @property
    def total_mb(self) -> float:
        """The RSS total."""
        return sum(self.split_mb.values())


@dataclass
class Peak:
    """The largest RSS total seen over a span, its split by category and processes, the
    cell running then, the largest PSS total and the largest RSS of each category."""

    total_mb: float = 0.0
    split_mb: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    cell: int | None = None
    processes: list[tuple[str, int, float, str]] = field(default_factory=list)
    pss_mb: float = 0.0
    max_mb: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    samples: int = 0

    def add(self, sample: Sample, cell: int | None) -> bool:
        """Count one sample; True when it is a new peak."""
        self.samples += 1
        self.pss_mb = max(self.pss_mb, sample.pss_mb)
        for name, value in sample.split_mb.items():
            self.max_mb[name] = max(self.max_mb[name], value)
        if sample.total_mb <= self.total_mb:
            return False
        self.total_mb, self.split_mb, self.cell = sample.total_mb, dict(sample.split_mb), cell
        self.processes = list(sample.processes)
        return True

    def as_dict(self) -> dict[str, Any]:
        """The figures, rounded to 0.1 MB."""
        return {
            "peak_total_mb": round(self.total_mb, 1),
            "peak_split_mb": {k: round(v, 1) for k, v in self.split_mb.items()},
            "peak_cell": self.cell,
            "peak_pss_total_mb": round(self.pss_mb, 1),
            "max_per_category_mb": {k: round(v, 1) for k, v in self.max_mb.items()},
            "samples": self.samples,
            "peak_processes": [
                {"category": c, "pid": pid, "rss_mb": round(mb, 1), "command": cmd}
                for c, pid, mb, cmd in self.processes],
        }


class Sampler(threading.Thread):
    """Samples the memory of every process of the course every ``interval_s`` seconds.

    Args:
        broker_pid: a function returning the broker's pid (or None), asked at each sample.
        kernel_pids: the set of kernel pids (updated as kernels start).
        interval_s: seconds between samples. Default: 0.2.
    """

    def __init__(self, broker_pid: Any, kernel_pids: set[int], interval_s: float = 0.2) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.broker_pid = broker_pid
        self.kernel_pids = kernel_pids
        self.interval_s = interval_s
        self.label = "startup"
        self.cell: int | None = None
        self.peaks: dict[str, Peak] = {}
        self.overall = Peak()
        self.overall_label = ""
        self._halt = threading.Event()
        self._me = psutil.Process()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join(timeout=5)

    def sample(self) -> Sample:
        """One look at this process, its descendants and the broker."""
        procs = [self._me]
        try:
            procs += self._me.children(recursive=True)
        except psutil.Error:
            pass
        broker_pid = self.broker_pid()
        if broker_pid is not None:
            try:
                procs.append(psutil.Process(broker_pid))
            except psutil.Error:
                pass
        rows: dict[int, tuple[psutil.Process, int, str, float]] = {}
        for proc in procs:
            try:
                rows[proc.pid] = (proc, proc.ppid(), " ".join(proc.cmdline()),
                                  proc.memory_info().rss / MB)
            except psutil.Error:
                continue
        split = dict.fromkeys(CATEGORIES, 0.0)
        pss = 0.0
        found = []
        for pid, (proc, ppid, command, rss) in rows.items():
            if ppid in rows and rows[ppid][2] == command:
                # A child forked but not yet running its own program (the JVM starting
                # rm or chmod): it shares its parent's pages, so it is not counted again.
                continue
            category = self._category(pid, command, broker_pid)
            split[category] += rss
            found.append((category, pid, rss, _short(command)))
            try:
                pss += proc.memory_full_info().pss / MB
            except psutil.Error:
                pss += rss
        return Sample(split, pss, found)

    def _category(self, pid: int, command: str, broker_pid: int | None) -> str:
        if pid == broker_pid:
            return "broker"
        if pid == self._me.pid:
            return "runner"
        if pid in self.kernel_pids:
            return "kernel"
        if "org.apache.spark" in command:
            return "spark"
        return "other"

    def run(self) -> None:
        while not self._halt.is_set():
            sample = self.sample()
            label, cell = self.label, self.cell
            self.peaks.setdefault(label, Peak()).add(sample, cell)
            if self.overall.add(sample, cell):
                self.overall_label = label
            self._halt.wait(self.interval_s)


def _last_line(text: str) -> str:
    """The last non-empty line of an error, without terminal colours (the cell's error)."""
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _short(command: str, width: int = 90) -> str:
    """A command line cut to ``width`` characters, with Java's long class path dropped."""
    parts = command.split()
    for i, part in enumerate(parts[:-1]):
        if part in ("-cp", "-classpath"):
            parts[i + 1] = "..."
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


async def _start_kernel(cwd: Path, kernel_pids: set[int], log: Any) -> AsyncKernelManager:
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel(cwd=str(cwd), stdout=log, stderr=log)
    provisioner = getattr(km, "provisioner", None)
    process = getattr(provisioner, "process", None)
    if process is not None:
        kernel_pids.add(process.pid)
    return km


async def _run(notebooks: list[Path], mode: str, sampler: Sampler, out: Path,
               timeout_s: float) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    cwd = notebooks[0].parent
    kernels: list[AsyncKernelManager] = []
    log = open(out / "kernels.log", "ab")  # the kernels' own output: Spark's and Java's logs
    try:
        for path in notebooks:
            if mode == "one" and kernels:
                km = kernels[0]
            else:
                km = await _start_kernel(cwd, sampler.kernel_pids, log)
                kernels.append(km)
            nb = nbformat.read(path, as_version=4)

            def on_cell(cell: Any, cell_index: int) -> None:
                sampler.cell = cell_index

            client = NotebookClient(nb, km=km, timeout=int(timeout_s), kernel_name="python3",
                                    allow_errors=False, on_cell_execute=on_cell)
            sampler.label, sampler.cell = path.name, None
            began = time.monotonic()
            error = None
            try:
                await client.async_execute()
            except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                error = _last_line(f"{type(exc).__name__}: {exc}")
            finally:
                if client.kc is not None:
                    client.kc.stop_channels()
            seconds = time.monotonic() - began
            nbformat.write(nb, out / path.name)
            results[path.name] = {"seconds": round(seconds, 1), "error": error}
            if mode == "fresh":
                await km.shutdown_kernel(now=False)
                kernels.remove(km)
            sampler.label = f"after {path.name}"
    finally:
        for km in kernels:
            try:
                await km.shutdown_kernel(now=False)
            except Exception:  # noqa: BLE001 - best effort at the end
                pass
        log.close()
    return results


def _table(notebooks: list[Path], results: dict[str, dict[str, Any]],
           sampler: Sampler, limit_mb: float) -> str:
    head = (f"{'notebook':<26}{'s':>7}{'peak_MB':>9}" + "".join(f"{c:>8}" for c in CATEGORIES)
            + f"{'cell':>6}{'PSS_MB':>8}  error")
    lines = [head]
    for path in notebooks:
        peak = sampler.peaks.get(path.name, Peak())
        res = results.get(path.name, {})
        lines.append(
            f"{path.name:<26}{res.get('seconds', 0):>7.1f}{peak.total_mb:>9.0f}"
            + "".join(f"{peak.split_mb[c]:>8.0f}" for c in CATEGORIES)
            + f"{'' if peak.cell is None else peak.cell:>6}{peak.pss_mb:>8.0f}"
            + f"  {res.get('error') or ''}"
        )
    top = sampler.overall
    verdict = "under" if top.total_mb <= limit_mb else "OVER"
    lines.append(f"{'overall':<33}{top.total_mb:>9.0f}"
                 + "".join(f"{top.split_mb[c]:>8.0f}" for c in CATEGORIES)
                 + f"{'':>6}{top.pss_mb:>8.0f}  at {sampler.overall_label}, cell {top.cell}: "
                 + f"{verdict} {limit_mb:.0f} MB")
    lines.append("largest RSS per category over the run (MB): " + ", ".join(
        f"{c} {top.max_mb[c]:.0f}" for c in CATEGORIES))
    lines.append("processes at the overall peak:")
    lines += [f"  {c:<7}{pid:>8}{mb:>8.0f} MB  {cmd}"
              for c, pid, mb, cmd in sorted(top.processes, key=lambda row: -row[2])]
    return "\n".join(lines)


def _broker_pid_lookup(settings: Settings, every_s: float = 5.0) -> Any:
    """A function returning the broker's pid, asking the broker module at most every
    ``every_s`` seconds (its status check opens a connection)."""
    cached: dict[str, Any] = {"pid": None, "at": -every_s}

    def lookup() -> int | None:
        now = time.monotonic()
        if now - cached["at"] >= every_s:
            cached["pid"], cached["at"] = broker.status(settings).pid, now
        return cached["pid"]

    return lookup


def main(argv: list[str] | None = None) -> int:
    """Run the notebooks, sample memory, print the figures; exit 1 when over the limit."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run in order (default: notebooks/[0-9]*.ipynb)")
    parser.add_argument("--kernels", choices=("one", "fresh", "keep"), default="one",
                        help="one kernel for all, a fresh one each, or one each kept alive "
                             "(default: one)")
    parser.add_argument("--interval-s", type=float, default=0.2,
                        help="seconds between samples (default: 0.2)")
    parser.add_argument("--timeout-s", type=float, default=900,
                        help="time limit of one cell (default: 900)")
    parser.add_argument("--limit-mb", type=float, default=2048,
                        help="the memory limit to compare with (default: 2048, mybinder.org)")
    parser.add_argument("--out", type=Path, default=REPO / "output" / "memory",
                        help="where executed notebooks and memory.json go "
                             "(default: output/memory)")
    parser.add_argument("--live", action="store_true",
                        help="leave BANKCOURSE_HEADLESS unset (default: set it, as papermill "
                             "and CI run)")
    args = parser.parse_args(argv)

    notebooks = [p.resolve() for p in args.notebooks] or sorted(
        (REPO / "notebooks").glob("[0-9]*.ipynb"))
    if not notebooks:
        print("no notebooks found in notebooks/", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.live:
        os.environ.setdefault("BANKCOURSE_HEADLESS", "1")
    # the notebooks' data folder is the repository's, whatever the kernel's cwd
    os.environ.setdefault("BANKCOURSE_DATA_DIR", str(REPO / "data"))

    settings = Settings.from_env()
    started_broker = False
    if not settings.external_kafka and not broker.is_running(settings):
        broker.start(settings)
        started_broker = True
    sampler = Sampler(_broker_pid_lookup(settings), set(), args.interval_s)
    sampler.label = "broker idle"
    sampler.start()
    try:
        time.sleep(1.0)
        results = asyncio.run(_run(notebooks, args.kernels, sampler, args.out, args.timeout_s))
    finally:
        sampler.stop()
        if started_broker:
            broker.stop(settings)

    print(f"kernels: {args.kernels}; broker heap {settings.broker_heap_mb} MB, Spark driver "
          f"{settings.spark_driver_memory_mb} MB; sampled every {args.interval_s} s")
    print(_table(notebooks, results, sampler, args.limit_mb))
    report = {
        "kernels": args.kernels,
        "limit_mb": args.limit_mb,
        "broker_heap_mb": settings.broker_heap_mb,
        "spark_driver_memory_mb": settings.spark_driver_memory_mb,
        "notebooks": {p.name: {**results.get(p.name, {}),
                               **sampler.peaks.get(p.name, Peak()).as_dict()}
                      for p in notebooks},
        "between": {k: v.as_dict() for k, v in sampler.peaks.items()
                    if k not in {p.name for p in notebooks}},
        "overall": {**sampler.overall.as_dict(), "notebook": sampler.overall_label},
    }
    (args.out / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    failed = any(r.get("error") for r in results.values())
    over = sampler.overall.total_mb > args.limit_mb
    return 1 if over or failed else 0


if __name__ == "__main__":
    sys.exit(main())
