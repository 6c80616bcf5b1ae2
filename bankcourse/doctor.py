"""Is this machine ready for the course? Each check says fine, or what to do.

``python -m bankcourse doctor`` and notebook 00 run :func:`check_environment`, which
looks at Python, Java, the Kafka broker, the Spark Kafka connector, free memory and
free disk. Every :class:`Check` names which stages need it, so a learner without
Java reads that the file-mode notebooks (00 to 03) still work and how to get Java for
the rest.

Nothing here changes the machine: the doctor starts no broker and downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bankcourse import java as jdk
from bankcourse.settings import Settings

log = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "fail"
"""The three outcomes of a check."""

MIN_PYTHON = (3, 10)
MIN_MEMORY_MB = 2048
"""Memory for broker, kernel and Spark together (Binder gives 2 GB)."""
MIN_FILE_MODE_MEMORY_MB = 700
MIN_DISK_MB = 1024

JAVA_FIX = (
    "Java 17 or newer is needed for the Kafka and Spark stages (notebooks 04 to 06); "
    "the file-mode notebooks 00 to 03 work without it. Install one, for example "
    "`sudo apt-get install openjdk-17-jre-headless` (Debian/Ubuntu), "
    "`brew install openjdk@17` (macOS), `conda install -c conda-forge openjdk=17`, "
    "then open a new terminal or set JAVA_HOME to its folder."
)


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Attributes:
        name: what was checked (``python``, ``java``, ``kafka broker``...).
        status: ``ok``, ``warn`` (works, with a caveat) or ``fail`` (a stage cannot run).
        detail: what was found.
        fix: what to do when the status is not ``ok``; empty otherwise.
        needed_for: the stages that need it: ``all``, ``kafka``, ``spark``...
    """

    name: str
    status: str
    detail: str
    fix: str = ""
    needed_for: str = "all"

    @property
    def ok(self) -> bool:
        """True unless the check failed."""
        return self.status != FAIL

    def to_dict(self) -> dict[str, Any]:
        """The check as a JSON-ready dict."""
        return asdict(self)


# --- the checks ------------------------------------------------------------------------


def check_python(version: tuple[int, ...] | None = None) -> Check:
    """Python 3.10 or newer."""
    version = tuple(sys.version_info[:3]) if version is None else tuple(version)
    text = ".".join(str(v) for v in version)
    where = "virtual environment" if sys.prefix != sys.base_prefix else "system Python"
    if version[:2] >= MIN_PYTHON:
        return Check("python", OK, f"Python {text} ({where})")
    return Check("python", FAIL, f"Python {text} is too old",
                 "Use Python 3.10 or newer: create the venv with python3.11 -m venv .venv")


def java_major(java: str | None = None) -> tuple[int | None, str]:
    """Which Java the stages would use; returns (major version or None, what was found)."""
    try:
        path = Path(java) if java else jdk.find_java()
    except jdk.JavaError:
        return None, "not found on PATH or in JAVA_HOME"
    try:
        return jdk.java_major(path), str(path)
    except jdk.JavaError:
        return None, f"{path} does not run or prints no version"


def check_java() -> Check:
    """Java found, and version 17 or newer (Kafka 4 and Spark 4 need it)."""
    major, detail = java_major()
    if major is None:
        return Check("java", FAIL, f"Java {detail}", JAVA_FIX, "kafka, spark")
    if major < jdk.MIN_JAVA_MAJOR:
        return Check("java", FAIL, f"Java {major} is too old: {detail}", JAVA_FIX,
                     "kafka, spark")
    return Check("java", OK, f"Java {major}: {detail}", needed_for="kafka, spark")


def port_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _split_servers(servers: str) -> list[tuple[str, int]]:
    out = []
    for part in servers.split(","):
        host, _, port = part.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def check_broker(settings: Settings, java_ok: bool = True) -> Check:
    """The Kafka broker: an external cluster reachable, the course's broker running,
    or able to start (Java present, port free)."""
    need = "kafka, spark"
    if settings.external_kafka:
        servers = settings.bootstrap_servers
        reachable = [f"{h}:{p}" for h, p in _split_servers(servers) if port_answers(h, p)]
        if reachable:
            return Check("kafka broker", OK,
                         f"external cluster {servers}: {', '.join(reachable)} answers",
                         needed_for=need)
        return Check("kafka broker", FAIL, f"external cluster {servers} does not answer",
                     "Check KAFKA_BOOTSTRAP_SERVERS (host:port) and that the cluster is up, "
                     "or unset it so the course runs its own broker.", need)
    running = _broker_running(settings)
    if running:
        return Check("kafka broker", OK,
                     f"running on {settings.bootstrap_servers}", needed_for=need)
    if port_answers("127.0.0.1", settings.kafka_port):
        return Check("kafka broker", FAIL,
                     f"port {settings.kafka_port} is taken by something that is not Kafka",
                     "Stop that program or pick another port: "
                     "BANKCOURSE_KAFKA_PORT=29092 BANKCOURSE_KAFKA_CONTROLLER_PORT=29093", need)
    if not java_ok:
        return Check("kafka broker", FAIL, "not running, and cannot start without Java 17+",
                     "Install Java 17 or newer (see the java check).", need)
    jars = _broker_jars_cached(settings)
    where = "jars cached" if jars else "jars are fetched from Maven Central on first start"
    return Check("kafka broker", OK,
                 f"not running; can start on port {settings.kafka_port} ({where})",
                 needed_for=need)


def _broker_running(settings: Settings) -> bool:
    try:
        from bankcourse import broker
    except ImportError:
        return False
    try:
        return bool(broker.is_running(settings))
    except Exception:  # the doctor reports; it never crashes on a broken broker
        log.debug("broker.is_running failed", exc_info=True)
        return False


def _broker_jars_cached(settings: Settings) -> bool:
    """True when the broker's jars are on disk (KAFKA_HOME, or fetched into the cache)."""
    if settings.kafka_home is not None:
        return any((Path(settings.kafka_home) / "libs").glob("kafka_2.1*-*.jar"))
    version = settings.kafka_version
    return (Path(settings.cache_dir) / "kafka" / version / "libs"
            / f"kafka_2.13-{version}.jar").is_file()


def connector_jar_dirs(settings: Settings) -> list[Path]:
    """Where an Ivy cache of Spark packages may be: the course's Spark cache and Spark's
    defaults. Not the whole course cache: a running broker keeps its data there and
    deletes topic folders while they are being searched."""
    from bankcourse.spark_session import spark_dir

    home = Path.home()
    return [spark_dir(settings), home / ".ivy2.5.2", home / ".ivy2"]


def find_files(folder: Path, part: str, suffix: str) -> list[Path]:
    """Files under ``folder`` whose name contains ``part`` and ends in ``suffix``. A folder
    that vanishes during the walk is skipped (``os.walk`` ignores such errors), not a
    crash."""
    return [Path(root) / name
            for root, _dirs, names in os.walk(folder)
            for name in names if part in name and name.endswith(suffix)]


def check_connector(settings: Settings, java_ok: bool = True) -> Check:
    """The Spark Kafka connector jar cached, for the installed pyspark version."""
    need = "spark"
    try:
        import pyspark
    except ImportError:
        return Check("spark kafka connector", FAIL, "pyspark is not installed",
                     "pip install -e . (installs the pinned pyspark)", need)
    version = pyspark.__version__
    found: list[Path] = []
    others: list[Path] = []
    for folder in connector_jar_dirs(settings):
        if folder.is_dir():
            for jar in find_files(folder, "spark-sql-kafka-0-10_", ".jar"):
                (found if jar.name.endswith(f"-{version}.jar") else others).append(jar)
    if found:
        return Check("spark kafka connector", OK,
                     f"{found[0].name} cached for pyspark {version}", needed_for=need)
    detail = f"not cached for pyspark {version}"
    if others:
        detail += f" (found {others[0].name}, another version: it must match pyspark)"
    fix = ("It is downloaded from Maven Central the first time notebook 05 starts Spark "
           "(about 1 minute); to fetch it now: python -m bankcourse spark prefetch")
    if not java_ok:
        fix = "Install Java 17 or newer (see the java check); Spark cannot start without it."
    return Check("spark kafka connector", WARN if java_ok else FAIL, detail, fix, need)


def available_memory_mb() -> tuple[float, str]:
    """Memory available to this process in MB, the smaller of the machine's and a
    container (cgroup) limit; and a note saying which."""
    import psutil

    available = psutil.virtual_memory().available / 2**20
    note = "machine"
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
         "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text.isdigit() and int(limit_text) < 2**50:
            left = (int(limit_text) - usage) / 2**20
            if left < available:
                available, note = left, "container limit"
        break
    return available, note


def check_memory(minimum_mb: int = MIN_MEMORY_MB) -> Check:
    """Free memory: 2 GB for broker, kernel and Spark together."""
    available, note = available_memory_mb()
    detail = f"{available:,.0f} MB available ({note})"
    if available >= minimum_mb:
        return Check("memory", OK, detail)
    if available >= MIN_FILE_MODE_MEMORY_MB:
        return Check("memory", WARN, detail,
                     f"Kafka and Spark together want about {minimum_mb:,} MB: close other "
                     "notebooks (Kernel > Shut Down) and stop the broker when done "
                     "(python -m bankcourse broker stop).", "kafka, spark")
    return Check("memory", FAIL, detail,
                 "Close other programs and notebooks; use fewer rows (parameter rows).")


def check_disk(settings: Settings, minimum_mb: int = MIN_DISK_MB) -> Check:
    """Free disk where the data folder is."""
    folder = Path(settings.data_dir).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free_mb = shutil.disk_usage(folder).free / 2**20
    detail = f"{free_mb:,.0f} MB free where the data folder is"
    if free_mb >= minimum_mb:
        return Check("disk", OK, detail)
    return Check("disk", WARN if free_mb >= 200 else FAIL, detail,
                 f"Free some space (the course wants about {minimum_mb:,} MB for data, "
                 "jars and checkpoints) or point BANKCOURSE_DATA_DIR elsewhere.")


def check_environment(settings: Settings | None = None) -> list[Check]:
    """Run every check, in a fixed order: python, java, kafka broker, spark kafka
    connector, memory, disk.

    Args:
        settings: the course settings. Default: ``Settings.from_env()``.
    """
    settings = Settings.from_env() if settings is None else settings
    java = check_java()
    checks = [
        check_python(),
        java,
        check_broker(settings, java_ok=java.ok),
        check_connector(settings, java_ok=java.ok),
        check_memory(),
        check_disk(settings),
    ]
    for check in checks:
        log.debug("doctor %s: %s %s", check.name, check.status, check.detail)
    log.info("doctor checks=%d fail=%d warn=%d", len(checks),
             sum(c.status == FAIL for c in checks), sum(c.status == WARN for c in checks))
    return checks


def ready_stages(checks: Iterable[Check]) -> dict[str, bool]:
    """Which stages can run: ``file``, ``kafka`` and ``spark`` mapped to True/False."""
    checks = list(checks)

    def fine(stage: str) -> bool:
        return all(c.ok for c in checks
                   if c.needed_for == "all" or stage in c.needed_for.split(", "))

    return {stage: fine(stage) for stage in ("file", "kafka", "spark")}


def format_checks(checks: Iterable[Check]) -> str:
    """The checks as plain text: one line each, the fix indented below."""
    marks = {OK: "[ ok ]", WARN: "[warn]", FAIL: "[FAIL]"}
    checks = list(checks)
    lines = []
    for c in checks:
        lines.append(f"{marks[c.status]} {c.name:<22} {c.detail}")
        if c.fix:
            lines.append(f"       fix: {c.fix}")
    ready = ready_stages(checks)
    lines.append("")
    lines.append("ready: " + ", ".join(f"{stage} mode {'yes' if ok else 'NO'}"
                                       for stage, ok in ready.items()))
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------


def _cli_doctor(args: argparse.Namespace) -> int:
    checks = check_environment(Settings.from_env())
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        print(format_checks(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


def register_cli(subparsers: Any) -> None:
    """Add ``python -m bankcourse doctor``."""
    parser = subparsers.add_parser(
        "doctor", help="check Python, Java, Kafka, Spark, memory and disk",
        description="Check that this machine can run each stage of the course; "
                    "each problem comes with its fix. Exit code 1 if a check failed.",
    )
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(func=_cli_doctor)
