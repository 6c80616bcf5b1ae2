"""Building the course's SparkSession, with the Kafka connector, in one place.

:func:`get_session` is the only function in the course that creates a SparkSession.
It checks the two things that most often break a first Spark run before it starts
the JVM, so the learner gets a message with the fix instead of a Java stack trace:

* Java: Spark 4 needs Java 17 or newer (``JAVA_HOME`` if set, else ``java`` on PATH);
* the Kafka connector: ``org.apache.spark:spark-sql-kafka-0-10_2.13`` must be exactly
  the installed PySpark's version. The course asks for that version itself; a
  different one requested through ``PYSPARK_SUBMIT_ARGS`` or an already running
  session without the connector is refused with what to do.

The connector and its dependencies are resolved from Maven Central only (an Ivy
settings file written under ``settings.cache_dir / "spark"``) and cached there
(``spark.jars.ivy``), so the download happens once; :func:`prefetch` does it ahead
of time (``python -m bankcourse spark prefetch``, run by Binder's postBuild).

The session is sized for a 2 GB Binder shared with the broker and the kernel:
``local[*]``, a driver heap of ``settings.spark_driver_memory_mb`` (640 MB by default),
two shuffle partitions, the web UI off, logs at WARN, UTC session time zone.
``settings.spark_master`` or ``settings.spark_remote`` (Spark Connect, ``sc://``)
point it at a cluster instead, with no code change.

:func:`stop_session` stops the session and also ends its local JVM, which
``spark.stop()`` leaves running (and holding its memory) until the kernel exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bankcourse import java as jdk
from bankcourse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

SCALA_BINARY_VERSION = "2.13"
"""The Scala version PySpark 4's jars are built for (the connector's artifact suffix)."""

CONNECTOR_GROUP = "org.apache.spark"
CONNECTOR_ARTIFACT = f"spark-sql-kafka-0-10_{SCALA_BINARY_VERSION}"
"""Maven coordinates of the Structured Streaming Kafka source and sink."""

MAVEN_CENTRAL_URL = "https://repo1.maven.org/maven2/"
"""Where the connector is resolved from."""

SHUFFLE_PARTITIONS = 2
"""``spark.sql.shuffle.partitions`` of the course's session (Spark's default is 200)."""

_KAFKA_PROVIDER = "org.apache.spark.sql.kafka010.KafkaSourceProvider"
_CONNECTOR_RE = re.compile(r"org\.apache\.spark:spark-sql-kafka-0-10_([\d.]+):([\w.\-]+)")


class SparkSetupError(RuntimeError):
    """Spark cannot start as the course needs; the message says what is wrong and the fix."""


# --- versions and Java ---------------------------------------------------------------


def pyspark_version() -> str:
    """The installed PySpark's version (the connector must be the same)."""
    import pyspark

    return pyspark.__version__


def connector_package(version: str | None = None) -> str:
    """Maven coordinates of the Kafka connector for ``version`` (default: PySpark's)."""
    return f"{CONNECTOR_GROUP}:{CONNECTOR_ARTIFACT}:{version or pyspark_version()}"


def check_packages(packages: str, spark_version: str | None = None) -> None:
    """Refuse a Kafka connector in ``packages`` whose version differs from Spark's.

    Args:
        packages: a comma-separated Maven coordinate list (``spark.jars.packages`` or
            the ``--packages`` of ``PYSPARK_SUBMIT_ARGS``).
        spark_version: the Spark version to match. Default: the installed PySpark's.

    Raises:
        SparkSetupError: a ``spark-sql-kafka-0-10`` of another Spark or Scala version.
    """
    spark_version = spark_version or pyspark_version()
    for scala, version in _CONNECTOR_RE.findall(packages or ""):
        if version != spark_version or scala != SCALA_BINARY_VERSION:
            raise SparkSetupError(
                f"the Kafka connector org.apache.spark:spark-sql-kafka-0-10_{scala}:{version} "
                f"does not match PySpark {spark_version} (Scala {SCALA_BINARY_VERSION}); "
                f"Spark's Kafka source fails at run time with a mismatched connector. "
                f"Use {connector_package(spark_version)} (get_session adds it for you): "
                f"remove the other version from PYSPARK_SUBMIT_ARGS / spark.jars.packages, "
                f"or install the matching PySpark with `pip install pyspark=={version}`."
            )


def _submit_args_packages(submit_args: str) -> str:
    """The ``--packages`` value(s) of a PYSPARK_SUBMIT_ARGS string ('' when none)."""
    try:
        words = shlex.split(submit_args)
    except ValueError:
        words = submit_args.split()
    found = []
    for i, word in enumerate(words):
        if word == "--packages" and i + 1 < len(words):
            found.append(words[i + 1])
        elif word.startswith("--packages="):
            found.append(word.split("=", 1)[1])
        elif word.startswith("spark.jars.packages="):
            found.append(word.split("=", 1)[1])
    return ",".join(found)


def find_java(env: dict[str, str] | None = None) -> Path:
    """The ``java`` Spark will launch (see :func:`bankcourse.java.find_java`).

    Raises:
        SparkSetupError: there is none, with how to install one.
    """
    try:
        return jdk.find_java(env)
    except jdk.JavaError as exc:
        raise SparkSetupError(f"Spark cannot start: {exc}") from None


def check_java(env: dict[str, str] | None = None) -> tuple[Path, int]:
    """Find Java and check it is 17 or newer.

    Returns:
        ``(path to java, major version)``.

    Raises:
        SparkSetupError: no Java, or one that is too old, with the fix.
    """
    try:
        return jdk.require_java(f"Spark {pyspark_version()}", env)
    except jdk.JavaError as exc:
        raise SparkSetupError(str(exc)) from None


# --- files the session reads ---------------------------------------------------------


def spark_dir(settings: Settings) -> Path:
    """Where the course keeps Spark's Ivy cache, Ivy settings and log4j2 settings."""
    return Path(settings.cache_dir) / "spark"


def ivy_dir(settings: Settings) -> Path:
    """``spark.jars.ivy``: the connector's jars are cached in ``<this>/jars``."""
    return spark_dir(settings) / "ivy"


_IVY_SETTINGS = """<ivysettings>
  <!-- Written by bankcourse: resolve Spark packages from Maven Central only. -->
  <settings defaultResolver="central"/>
  <resolvers>
    <ibiblio name="central" m2compatible="true" root="{root}"/>
  </resolvers>
</ivysettings>
"""

_LOG4J2 = """# Written by bankcourse: Spark logs warnings and errors only, on stderr.
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex
# The Kafka clients warn about every topic they create or find empty.
logger.kafka.name = org.apache.kafka
logger.kafka.level = error
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
logger.consumer.name = org.apache.spark.sql.kafka010.KafkaDataConsumer
logger.consumer.level = error
logger.checkpoint.name = org.apache.spark.sql.execution.streaming.checkpointing
logger.checkpoint.level = error
logger.resolved.name = org.apache.spark.sql.execution.streaming.ResolveWriteToStream
logger.resolved.level = error
"""


def _write_if_changed(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def session_config(settings: Settings, app_name: str = "bankcourse") -> dict[str, str]:
    """The Spark configuration :func:`get_session` uses for a classic (non-Connect) session.

    Args:
        settings: gives the master, driver memory, cache folder and partitions.
        app_name: the application name. Default: ``bankcourse``.

    Returns:
        Configuration keys and values (also writes the Ivy and log4j2 settings files).
    """
    base = spark_dir(settings)
    ivy_settings = _write_if_changed(base / "ivysettings.xml",
                                     _IVY_SETTINGS.format(root=MAVEN_CENTRAL_URL))
    log4j = _write_if_changed(base / "log4j2.properties", _LOG4J2)
    java_options = f"-Dlog4j2.configurationFile=file:{log4j} -XX:+UseSerialGC -Xss1m"
    memory_mb = settings.spark_driver_memory_mb
    return {
        "spark.app.name": app_name,
        "spark.master": settings.spark_master,
        "spark.jars.packages": connector_package(),
        "spark.jars.ivy": str(ivy_dir(settings)),
        "spark.jars.ivySettings": str(ivy_settings),
        "spark.driver.memory": f"{memory_mb}m",
        "spark.driver.extraJavaOptions": java_options,
        "spark.driver.host": "127.0.0.1" if settings.spark_master.startswith("local") else "",
        "spark.driver.bindAddress": "127.0.0.1"
        if settings.spark_master.startswith("local") else "",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": str(SHUFFLE_PARTITIONS),
        "spark.default.parallelism": str(SHUFFLE_PARTITIONS),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
        # Small state stores and few retained batches: the course's queries are small.
        "spark.sql.streaming.minBatchesToRetain": "20",
        "spark.sql.streaming.stateStore.maintenanceInterval": "30s",
    }


# --- the session ---------------------------------------------------------------------


def _quiet_pandas_warning() -> None:
    # PySpark 4.2 warns that pandas 3 is newer than it was tested with; the course's
    # Spark code moves data through Arrow and pandas only at the edges.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                            category=FutureWarning)


def get_session(settings: Settings | None = None, *, app_name: str = "bankcourse",
                extra_config: dict[str, str] | None = None) -> SparkSession:
    """The course's SparkSession with the Kafka connector (created once per process).

    Args:
        settings: the course settings. Default: ``Settings.from_env()``.
        app_name: the Spark application name. Default: ``bankcourse``.
        extra_config: more Spark settings, applied last (a classic session only).

    Returns:
        A SparkSession. With ``settings.spark_remote`` it is a Spark Connect session
        (the Kafka connector must then be on the server).

    Raises:
        SparkSetupError: Java is missing or older than 17, a mismatched Kafka connector
            was requested, or a session without the connector is already running.
    """
    from pyspark.sql import SparkSession

    settings = settings if settings is not None else Settings.from_env()
    _quiet_pandas_warning()
    if settings.spark_remote:
        log.info("spark session: connecting to %s (Spark Connect)", settings.spark_remote)
        session = SparkSession.builder.remote(settings.spark_remote).appName(app_name) \
            .getOrCreate()
        session.conf.set("spark.sql.session.timeZone", "UTC")
        session.conf.set("spark.sql.shuffle.partitions", str(SHUFFLE_PARTITIONS))
        return session

    check_packages(_submit_args_packages(os.environ.get("PYSPARK_SUBMIT_ARGS", "")))
    active = SparkSession.getActiveSession()
    if active is None:
        _, major = check_java()
    config = {k: v for k, v in session_config(settings, app_name).items() if v != ""}
    config.update(extra_config or {})
    check_packages(config.get("spark.jars.packages", ""))
    if settings.spark_master.startswith("local"):
        # Spark binds to the loopback address for a local master; this also keeps its
        # "hostname resolves to a loopback address" warning away.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers (for createDataFrame from local rows) must be this interpreter,
        # not whichever python3 comes first on PATH, which may lack the same packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in config.items():
        builder = builder.config(key, value)
    began = time.perf_counter()
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM failed to start or resolve the connector
        raise SparkSetupError(
            f"Spark did not start ({type(exc).__name__}: {str(exc)[:500]}). If the Kafka "
            f"connector could not be downloaded, check access to {MAVEN_CENTRAL_URL} or run "
            f"`python -m bankcourse spark prefetch` where the network is available; the "
            f"jars are cached in {ivy_dir(settings)}."
        ) from exc
    session.sparkContext.setLogLevel("WARN")
    _check_session(session)
    if active is None:
        log.info("spark session started: master=%s version=%s java=%d driver_memory_mb=%d "
                 "seconds=%.1f", session.sparkContext.master, session.version, major,
                 settings.spark_driver_memory_mb, time.perf_counter() - began)
    return session


def _check_session(session: SparkSession) -> None:
    """Check the running session's Spark version and that the Kafka connector loaded."""
    version = pyspark_version()
    if session.version != version:
        raise SparkSetupError(
            f"the running Spark is {session.version} but PySpark is {version}; "
            f"install the matching PySpark (`pip install pyspark=={session.version}`) or "
            f"point spark_master at a {version} cluster"
        )
    conf = session.sparkContext.getConf()
    packages = conf.get("spark.jars.packages", "") or ""
    check_packages(packages, version)
    jars = conf.get("spark.jars", "") or ""
    if CONNECTOR_ARTIFACT not in packages and CONNECTOR_ARTIFACT not in jars:
        raise SparkSetupError(
            "a SparkSession without the Kafka connector is already running in this process "
            "(made before get_session was called); stop it with `spark.stop()` or restart "
            "the kernel, then call get_session() first"
        )
    found = re.search(rf"{re.escape(CONNECTOR_ARTIFACT)}-([\w.\-]+?)\.jar", jars)
    if found and found.group(1) != version:
        raise SparkSetupError(
            f"the Kafka connector jar on the classpath is {found.group(1)} but Spark is "
            f"{version}; delete {found.group(0)} from the Ivy cache and run "
            f"`python -m bankcourse spark prefetch`"
        )


def connector_jars(settings: Settings) -> list[Path]:
    """The cached jars of the connector and its dependencies (empty before a prefetch)."""
    folder = ivy_dir(settings) / "jars"
    return sorted(folder.glob("*.jar")) if folder.is_dir() else []


def prefetch(settings: Settings | None = None) -> list[Path]:
    """Download the Kafka connector (and its dependencies) into the cache, then stop.

    Starts a session (which resolves ``spark.jars.packages`` from Maven Central) and
    stops it, so later sessions start without the network.

    Returns:
        The cached jar files.

    Raises:
        SparkSetupError: as :func:`get_session`.
    """
    settings = settings if settings is not None else Settings.from_env()
    if settings.spark_remote:
        raise SparkSetupError("spark_remote is set: the connector lives on the Spark Connect "
                              "server, there is nothing to prefetch here")
    began = time.perf_counter()
    session = get_session(settings, app_name="bankcourse-prefetch")
    try:
        session.range(1).count()
    finally:
        session.stop()
    jars = connector_jars(settings)
    log.info("spark prefetch done: package=%s jars=%d folder=%s seconds=%.1f",
             connector_package(), len(jars), ivy_dir(settings), time.perf_counter() - began)
    return jars


def driver_rss_mb(session: SparkSession) -> float | None:
    """Resident memory of the local driver JVM in MB (None for Spark Connect)."""
    import psutil

    try:
        pid = int(session.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    except Exception:  # Spark Connect has no local JVM
        return None
    return psutil.Process(pid).memory_info().rss / 2**20


def describe(settings: Any = None) -> dict[str, Any]:
    """What the Spark stage would use: versions, Java, connector and cache (for doctor)."""
    settings = settings if settings is not None else Settings.from_env()
    info: dict[str, Any] = {"pyspark": pyspark_version(), "connector": connector_package(),
                            "ivy_dir": str(ivy_dir(settings)),
                            "cached_jars": len(connector_jars(settings))}
    try:
        java, major = check_java()
        info.update(java=str(java), java_major=major)
    except SparkSetupError as exc:
        info.update(java=None, java_error=str(exc))
    return info


def stop_session(spark: SparkSession | None = None, *, timeout_s: float = 15.0) -> bool:
    """Stop the session AND the local JVM it ran in, so its memory is given back.

    ``spark.stop()`` stops the SparkContext but leaves the driver JVM (about 650 MB on
    a 2 GB Binder) alive until the kernel exits. This also closes the py4j gateway and
    ends the JVM process (it exits when its standard input closes; terminated if not
    gone after ``timeout_s``). A later :func:`get_session` starts a new JVM.

    Args:
        spark: the session. Default: the active one (none: only the JVM is ended).
        timeout_s: how long to wait for the JVM to exit. Default: 15.

    Returns:
        True when a local JVM process was ended; False with Spark Connect or when no
        JVM was running.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    spark = spark if spark is not None else SparkSession.getActiveSession()
    if spark is not None:
        spark.stop()
    gateway = SparkContext._gateway
    if gateway is None:
        return False
    proc = getattr(gateway, "proc", None)
    try:
        gateway.shutdown()
    except Exception:  # the JVM may already be gone
        log.debug("py4j gateway shutdown failed", exc_info=True)
    SparkContext._gateway = None
    SparkContext._jvm = None
    if proc is None:
        return False
    began = time.perf_counter()
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("the Spark JVM (pid %d) did not exit in %.0f s; terminating it",
                    proc.pid, timeout_s)
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    log.info("spark session stopped and its JVM (pid %d) ended in %.1f s", proc.pid,
             time.perf_counter() - began)
    return True
