"""The course's own Apache Kafka broker: one KRaft node on loopback, no Docker.

The broker is the real thing: the ``kafka.Kafka`` server from the Apache Kafka
jars, running combined broker + controller on ``127.0.0.1``. Nothing is
installed by hand:

* the jars come from ``KAFKA_HOME/libs`` when ``settings.kafka_home`` points at a
  Kafka distribution, otherwise from Maven Central (``org.apache.kafka:kafka_2.13``
  and its dependencies plus a Log4j 2 backend), resolved once by the Apache Ivy
  jar that ships inside the pyspark wheel and cached in
  ``<cache_dir>/kafka/<version>/libs``;
* the broker's storage, configuration, pid file and log live in
  ``<cache_dir>/kafka/broker-<port>/``;
* the JVM runs detached in its own process group, so it outlives the notebook
  or shell that started it; :func:`stop` ends it.

When ``settings.kafka_bootstrap_servers`` names a cluster of your own, nothing
is started or stopped: :func:`status` only checks that the cluster answers, and
:func:`client_config` passes ``settings.kafka_security`` on to kafka-python.

Usage::

    from bankcourse import broker
    from bankcourse import java
from bankcourse.settings import SettingError, Settings

    settings = Settings.from_env()
    broker.start(settings)            # returns once the broker serves metadata
    broker.ensure_topics(settings)    # the course's four topics
    broker.stop(settings)

or ``python -m bankcourse broker start|stop|status|logs|fetch``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bankcourse import java as jdk
from bankcourse.settings import SettingError, Settings

logger = logging.getLogger(__name__)

#: The Log4j 2 backend put beside the Kafka jars (Kafka's own logging goes through SLF4J).
LOG4J_VERSION = "2.24.3"
#: SLF4J 2 API, needed by the log4j-slf4j2-impl binding (Kafka itself asks for 1.7).
SLF4J_VERSION = "2.0.17"
#: Where Ivy's default settings fetch from; only used to check that it is reachable.
MAVEN_CENTRAL = "https://repo1.maven.org/maven2/"

_PID_FILE = "broker.pid"
_INFO_FILE = "broker.json"
_LOG_FILE = "broker.log"
_CONFIG_FILE = "server.properties"
_LOG4J_FILE = "log4j2.properties"
_STORAGE_DIR = "kraft-logs"

# Broker processes started by this Python process, kept so they can be reaped on stop.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class BrokerError(RuntimeError):
    """The broker cannot be started, reached or stopped; the message says why and the fix."""


@dataclass(frozen=True)
class BrokerStatus:
    """Where the broker is and whether it answers.

    Attributes:
        running: a Kafka broker answers at ``bootstrap_servers``.
        bootstrap_servers: where clients connect (``127.0.0.1:<kafka_port>`` or the
            external cluster).
        external: the cluster is the user's own (``kafka_bootstrap_servers``); the
            course starts and stops nothing.
        owned: the broker answering is the one this cache folder started (it has a pid).
        pid: the broker's process id, or None.
        version: the Apache Kafka version of the jars it runs, or None if unknown.
        controller: the KRaft controller address, or None for an external cluster.
        data_dir: the broker's folder (storage, config, pid file, log), or None.
        log_file: the broker's log, or None.
        uptime_s: seconds since the broker was launched, or None.
    """

    running: bool
    bootstrap_servers: str
    external: bool = False
    owned: bool = False
    pid: int | None = None
    version: str | None = None
    controller: str | None = None
    data_dir: Path | None = None
    log_file: Path | None = None
    uptime_s: float | None = None

    def describe(self) -> str:
        """A few human-readable lines, as ``broker status`` prints them."""
        if self.external:
            state = "reachable" if self.running else "NOT reachable"
            return f"external Kafka cluster at {self.bootstrap_servers}: {state}"
        if not self.running:
            lines = [f"Kafka broker: not running (would listen on {self.bootstrap_servers})"]
        elif not self.owned:
            lines = [f"Kafka broker: a broker not started from this cache folder answers at "
                     f"{self.bootstrap_servers}"]
        else:
            lines = [f"Kafka broker {self.version}: running at {self.bootstrap_servers} "
                     f"(pid {self.pid}, up {self.uptime_s or 0:.0f} s)"]
        if self.controller:
            lines.append(f"  controller: {self.controller}")
        if self.data_dir:
            lines.append(f"  data dir:   {self.data_dir}")
        if self.log_file:
            lines.append(f"  log:        {self.log_file}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The status as JSON-ready values."""
        out = dataclasses.asdict(self)
        for key in ("data_dir", "log_file"):
            out[key] = str(out[key]) if out[key] is not None else None
        return out


# --------------------------------------------------------------------------- paths


def broker_dir(settings: Settings) -> Path:
    """The broker's folder: ``<cache_dir>/kafka/broker-<kafka_port>``."""
    return settings.cache_dir / "kafka" / f"broker-{settings.kafka_port}"


def log_file(settings: Settings) -> Path:
    """The broker's log file (its console output and Log4j lines)."""
    return broker_dir(settings) / _LOG_FILE


def client_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python clients: bootstrap servers plus security.

    ``settings.kafka_security`` (from ``BANKCOURSE_KAFKA_SECURITY_<OPTION>``) is passed
    through; text values ``true``/``false`` and whole numbers become bool and int, as
    kafka-python expects.

    Returns:
        e.g. ``{"bootstrap_servers": "127.0.0.1:9092"}`` or, for an external cluster,
        ``{"bootstrap_servers": "...", "security_protocol": "SASL_SSL", ...}``.
    """
    config: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers}
    for key, value in settings.kafka_security.items():
        config[key] = _option_value(value)
    return config


def _option_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


# --------------------------------------------------------------------------- probes


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _speaks_kafka(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when the listener at host:port answers a Kafka ApiVersions request.

    A raw ApiVersions v0 request is used because every Kafka broker answers it
    (even one that no longer supports v0 replies with an error in v0 form), and a
    listener that is not Kafka is told apart in one round trip instead of waiting
    for a client's bootstrap timeout.
    """
    client_id = b"bankcourse-probe"
    correlation_id = 0x5EED
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(sock, 8)
    except OSError:
        return False
    if header is None:
        return False
    size, answered_id = struct.unpack(">ii", header)
    return answered_id == correlation_id and 0 < size < 1_000_000


def _recv_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _reachable(settings: Settings, timeout_s: float = 2.0) -> bool:
    """True when any bootstrap server of ``settings`` accepts a TCP connection."""
    for address in settings.bootstrap_servers.split(","):
        try:
            host, port = _split_address(address)
        except ValueError:
            continue
        if _port_open(host, port, timeout_s):
            return True
    return False


def _serves_metadata(settings: Settings, timeout_s: float = 5.0) -> bool:
    """True when a kafka-python admin client can list the topics."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            **client_config(settings),
            client_id="bankcourse-broker-check",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
    except (KafkaError, OSError, ValueError) as exc:
        logger.debug("metadata check: cannot connect: %s", exc)
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError) as exc:
        logger.debug("metadata check: list_topics failed: %s", exc)
        return False
    finally:
        admin.close()


def _our_pid(settings: Settings) -> int | None:
    """The pid of this cache folder's broker if that process is alive, else None."""
    import psutil

    pid_path = broker_dir(settings) / _PID_FILE
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return None
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    config = str(broker_dir(settings) / _CONFIG_FILE)
    if "kafka.Kafka" in cmdline and config in cmdline:
        return pid
    return None  # the pid was reused by an unrelated process


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.1)


# --------------------------------------------------------------------------- public API


def is_running(settings: Settings) -> bool:
    """True when a Kafka broker answers at ``settings.bootstrap_servers``.

    For the course's own broker this means the port accepts connections and speaks
    the Kafka protocol (the broker may have been started by another process or
    cache folder); for an external cluster, that one of its servers is reachable.
    """
    if settings.external_kafka:
        return _reachable(settings)
    return _speaks_kafka("127.0.0.1", settings.kafka_port)


def status(settings: Settings) -> BrokerStatus:
    """Where the broker listens, its pid, version and folder, and whether it answers."""
    if settings.external_kafka:
        return BrokerStatus(running=_reachable(settings),
                            bootstrap_servers=settings.bootstrap_servers, external=True)
    folder = broker_dir(settings)
    pid = _our_pid(settings)
    info = _read_info(settings) if pid is not None else {}
    running = _speaks_kafka("127.0.0.1", settings.kafka_port)
    started = info.get("started_at")
    return BrokerStatus(
        running=running,
        bootstrap_servers=settings.bootstrap_servers,
        owned=pid is not None,
        pid=pid,
        version=info.get("version") if pid is not None else None,
        controller=f"127.0.0.1:{settings.kafka_controller_port}",
        data_dir=folder,
        log_file=folder / _LOG_FILE,
        uptime_s=round(time.time() - started, 1) if started and pid is not None else None,
    )


def start(settings: Settings, timeout_s: float = 90, *, wait: bool = True) -> BrokerStatus:
    """Start the course's broker, or return the status of the one already running.

    Idempotent: when a broker already answers at the port, nothing is launched. The
    first call per Kafka version resolves the jars from Maven Central (about 40 s).

    Args:
        settings: course settings; ``kafka_port``, ``kafka_controller_port``,
            ``kafka_version``, ``kafka_home``, ``broker_heap_mb`` and ``cache_dir`` are used.
        timeout_s: how long to wait for the broker to serve metadata after launch.
            Default: 90.
        wait: False launches the JVM and returns at once (``broker start --no-wait``).
            Default: True.

    Returns:
        the broker's status.

    Raises:
        BrokerError: Java missing or too old, a port taken by something else, jars
            that cannot be fetched, or a broker that exits or stays silent while starting.
    """
    if settings.external_kafka:
        logger.info("broker start skipped: using the external cluster at %s",
                    settings.bootstrap_servers)
        return status(settings)
    folder = broker_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder / "start.lock"):
        current = _already_running(settings)
        if current is not None:
            if wait and current.owned:
                _wait_ready(settings, current.pid, time.monotonic() + timeout_s)
            logger.info("broker already running at %s (pid %s)",
                        settings.bootstrap_servers, current.pid)
            return status(settings)
        java = find_java()
        libs = kafka_libs(settings, java=java)
        version = _libs_version(libs) or settings.kafka_version
        _write_config(settings)
        _format_storage(settings, java, libs)
        began = time.monotonic()
        pid = _launch(settings, java, libs, version)
        if not wait:
            logger.info("broker launched at %s (pid %s), not waiting for it",
                        settings.bootstrap_servers, pid)
            return status(settings)
        _wait_ready(settings, pid, time.monotonic() + timeout_s)
        logger.info("broker started at %s (pid %s, Kafka %s, %.1f s, data %s)",
                    settings.bootstrap_servers, pid, version, time.monotonic() - began, folder)
        return status(settings)


def stop(settings: Settings, timeout_s: float = 30) -> bool:
    """Stop the course's broker: SIGTERM, wait up to ``timeout_s``, then SIGKILL.

    Idempotent: stopping a broker that is not running does nothing. A broker this
    cache folder did not start, and an external cluster, are left alone.

    Args:
        settings: course settings.
        timeout_s: how long the clean shutdown may take before SIGKILL. Default: 30.

    Returns:
        True when a broker process was stopped.
    """
    if settings.external_kafka:
        logger.info("broker stop skipped: %s is an external cluster", settings.bootstrap_servers)
        return False
    pid = _our_pid(settings)
    if pid is None:
        if _speaks_kafka("127.0.0.1", settings.kafka_port):
            logger.warning("a Kafka broker at %s was not started from %s; not stopping it",
                           settings.bootstrap_servers, broker_dir(settings))
        else:
            logger.info("broker not running at %s; nothing to stop", settings.bootstrap_servers)
        (broker_dir(settings) / _PID_FILE).unlink(missing_ok=True)
        return False
    began = time.monotonic()
    _signal(pid, signal.SIGTERM)
    if not _wait_exit(pid, timeout_s):
        logger.warning("broker (pid %s) did not stop within %.0f s; killing it", pid, timeout_s)
        _signal(pid, signal.SIGKILL)
        _wait_exit(pid, 10)
    (broker_dir(settings) / _PID_FILE).unlink(missing_ok=True)
    logger.info("broker stopped at %s (pid %s, %.1f s)",
                settings.bootstrap_servers, pid, time.monotonic() - began)
    return True


def require_running(settings: Settings, timeout_s: float = 5.0) -> None:
    """Raise a clear BrokerError quickly when no Kafka broker answers.

    Clients call this before connecting so that a missing broker is reported in
    seconds with the fix, instead of as a client timeout.

    Raises:
        BrokerError: nothing answers at ``settings.bootstrap_servers``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if settings.external_kafka:
            if _reachable(settings, timeout_s=min(2.0, timeout_s)):
                return
        elif _speaks_kafka("127.0.0.1", settings.kafka_port, timeout_s=min(2.0, timeout_s)):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    if settings.external_kafka:
        raise BrokerError(
            f"the Kafka cluster at {settings.bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS) does "
            f"not answer; check the address and network, or unset KAFKA_BOOTSTRAP_SERVERS to "
            f"use the course's own broker"
        )
    raise BrokerError(
        f"no Kafka broker answers at {settings.bootstrap_servers}; start one with "
        f"`python -m bankcourse broker start` (or bankcourse.broker.start(settings))"
    )


def ensure_topics(settings: Settings, partitions: int | None = None) -> list[str]:
    """Create the course's four topics if they do not exist yet.

    The transactions, alerts and processed topics get ``partitions`` partitions, the
    dead-letter topic one. Existing topics are reused as they are.

    Args:
        settings: course settings (topic names, ``partitions``).
        partitions: partitions of the three main topics. Default: ``settings.partitions``.

    Returns:
        the four topic names: transactions, alerts, processed, dead letter.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    partitions = settings.partitions if partitions is None else int(partitions)
    wanted = {
        settings.topic_transactions: partitions,
        settings.topic_alerts: partitions,
        settings.topic_processed: partitions,
        settings.topic_dead_letter: 1,
    }
    require_running(settings)
    replication = -1 if settings.external_kafka else 1
    try:
        admin = KafkaAdminClient(**client_config(settings), client_id="bankcourse-topics",
                                 request_timeout_ms=15_000)
    except KafkaError as exc:
        raise BrokerError(f"cannot connect to Kafka at {settings.bootstrap_servers}: {exc}") \
            from exc
    try:
        existing = set(admin.list_topics())
        missing = {name: n for name, n in wanted.items() if name not in existing}
        for name, count in missing.items():
            try:
                admin.create_topics(
                    {name: {"num_partitions": count, "replication_factor": replication}},
                    timeout_ms=15_000, wait_for_metadata=True,
                )
                logger.info("topic created: %s (%d partitions)", name, count)
            except TopicAlreadyExistsError:
                logger.debug("topic %s was created meanwhile", name)
        for name in wanted:
            if name not in missing:
                logger.debug("topic exists: %s", name)
    except KafkaError as exc:
        raise BrokerError(f"cannot create the course topics on {settings.bootstrap_servers}: "
                          f"{exc}") from exc
    finally:
        admin.close()
    return list(wanted)


def tail_log(settings: Settings, lines: int = 50) -> str:
    """The last ``lines`` lines of the broker's log ('' when there is none)."""
    return _tail(log_file(settings), lines)


# --------------------------------------------------------------------------- Java


def find_java() -> Path:
    """The ``java`` to run the broker with (see :func:`bankcourse.java.require_java`).

    Raises:
        BrokerError: no java, or one older than 17, with how to install one.
    """
    try:
        return jdk.require_java("the Kafka broker")[0]
    except jdk.JavaError as exc:
        raise BrokerError(str(exc)) from None


# --------------------------------------------------------------------------- jars


def kafka_libs(settings: Settings, *, java: Path | None = None) -> Path:
    """The folder of Kafka jars to run, fetching them from Maven Central once.

    ``settings.kafka_home`` (``KAFKA_HOME``) wins when set. Otherwise the jars of
    ``settings.kafka_version`` are resolved with Apache Ivy into a temporary folder
    and renamed into ``<cache_dir>/kafka/<version>/libs`` when complete; a file lock
    makes a second process wait for the first instead of downloading twice.

    Raises:
        BrokerError: KAFKA_HOME has no Kafka jars, or the download failed.
    """
    if settings.kafka_home is not None:
        libs = settings.kafka_home / "libs"
        if not any(libs.glob("kafka_2.1*-*.jar")):
            raise BrokerError(f"KAFKA_HOME is {settings.kafka_home} but {libs} holds no "
                              f"kafka_2.13-*.jar; point KAFKA_HOME at an unpacked Apache Kafka "
                              f"distribution or unset it to fetch the jars from Maven Central")
        return libs
    version = settings.kafka_version
    if not re.fullmatch(r"[0-9A-Za-z.\-]+", version):
        raise BrokerError(f"kafka_version {version!r} is not a version; for example 4.1.1")
    home = settings.cache_dir / "kafka" / version
    libs = home / "libs"
    if _libs_complete(libs, version):
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with _file_lock(home / "fetch.lock"):
        if _libs_complete(libs, version):  # another process fetched them meanwhile
            return libs
        _resolve(settings, java or find_java(), home, version)
    return libs


def _libs_complete(libs: Path, version: str) -> bool:
    return (libs / f"kafka_2.13-{version}.jar").is_file()


def _libs_version(libs: Path) -> str | None:
    for jar in libs.glob("kafka_2.1*-*.jar"):
        match = re.fullmatch(r"kafka_2\.1\d-(\d[^-]*?)\.jar", jar.name)
        if match:
            return match.group(1)
    return None


def _ivy_jar() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.origin:
        raise BrokerError("the Ivy jar that fetches Kafka comes with pyspark, which is not "
                          "installed; `pip install pyspark`, or set KAFKA_HOME to an Apache "
                          "Kafka distribution")
    jars = sorted((Path(spec.origin).parent / "jars").glob("ivy-*.jar"))
    if not jars:
        raise BrokerError("no ivy-*.jar in the pyspark installation; reinstall pyspark or set "
                          "KAFKA_HOME to an Apache Kafka distribution")
    return jars[-1]


def _check_maven_central(timeout_s: float = 10.0) -> None:
    host = MAVEN_CENTRAL.split("/")[2]
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return
    except OSError as exc:
        raise BrokerError(
            f"Maven Central ({MAVEN_CENTRAL}) is unreachable ({exc}), so the Kafka jars cannot "
            f"be fetched; retry when online, or set KAFKA_HOME to an unpacked Apache Kafka "
            f"distribution"
        ) from exc


_IVY_MODULE = """<ivy-module version="2.0">
  <info organisation="bankcourse" module="kafka-broker"/>
  <dependencies>
    <dependency org="org.apache.kafka" name="kafka_2.13" rev="{kafka}" conf="default->default"/>
    <dependency org="org.apache.logging.log4j" name="log4j-core" rev="{log4j}"
                conf="default->default"/>
    <dependency org="org.apache.logging.log4j" name="log4j-slf4j2-impl" rev="{log4j}"
                conf="default->default"/>
    <dependency org="org.slf4j" name="slf4j-api" rev="{slf4j}" conf="default->default"/>
  </dependencies>
</ivy-module>
"""


def _resolve(settings: Settings, java: Path, home: Path, version: str) -> None:
    """Fetch the jars of Kafka ``version`` into ``home/libs`` atomically."""
    _check_maven_central()
    ivy = _ivy_jar()
    work = home.parent / f".{version}-fetch-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        (work / "ivy.xml").write_text(_IVY_MODULE.format(kafka=version, log4j=LOG4J_VERSION,
                                                         slf4j=SLF4J_VERSION))
        command = [str(java), "-jar", str(ivy), "-ivy", str(work / "ivy.xml"),
                   "-cache", str(work / "ivy-cache"), "-confs", "default",
                   "-retrieve", str(work / "libs") + "/[artifact]-[revision](-[classifier]).[ext]"]
        logger.info("fetching Apache Kafka %s jars from Maven Central (once, about 40 s)",
                    version)
        began = time.monotonic()
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=900,
                                 check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"fetching the Kafka {version} jars from Maven Central took over "
                              f"15 minutes; retry, or set KAFKA_HOME to an Apache Kafka "
                              f"distribution") from exc
        fetched = work / "libs"
        if out.returncode != 0 or not _libs_complete(fetched, version):
            markers = ("not found", "ERROR", "FAILED", "Exception", "refused", "timed out")
            problems = [line.strip(" :\t") for line in (out.stdout + out.stderr).splitlines()
                        if any(marker in line for marker in markers)]
            detail = "; ".join(problems[-6:]) or (out.stdout + out.stderr)[-600:]
            raise BrokerError(
                f"could not fetch org.apache.kafka:kafka_2.13:{version} and its dependencies "
                f"from Maven Central: {detail}. Check kafka_version (BANKCOURSE_KAFKA_VERSION; "
                f"4.0.x to 4.x are on Maven Central), retry, or set KAFKA_HOME to an Apache "
                f"Kafka distribution"
            )
        if (home / "libs").exists():  # an incomplete folder left by hand; we hold the lock
            shutil.rmtree(home / "libs")
        os.replace(fetched, home / "libs")  # atomic: libs/ appears complete or not at all
        count = len(list((home / "libs").glob("*.jar")))
        logger.info("fetched Apache Kafka %s: %d jars in %.0f s into %s",
                    version, count, time.monotonic() - began, home / "libs")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- launch


def _server_properties(settings: Settings) -> str:
    folder = broker_dir(settings)
    port, cport = settings.kafka_port, settings.kafka_controller_port
    values = {
        # One node that is both broker and KRaft controller, on loopback only.
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@127.0.0.1:{cport}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": folder / _STORAGE_DIR,
        # A single replica everywhere; exactly-once transactions need the two
        # transaction.state settings at 1.
        "num.partitions": settings.partitions,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 4,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        # Producing to a new topic creates it (with num.partitions), so a typo in a
        # learner's exercise shows up as a new topic rather than a timeout.
        "auto.create.topics.enable": "true",
        # Small footprint: few threads, a small cleaner buffer (its 128 MiB default
        # would be taken from the heap), short retention.
        "num.network.threads": 2,
        "num.io.threads": 2,
        "background.threads": 2,
        "num.recovery.threads.per.data.dir": 1,
        "log.cleaner.threads": 1,
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        "log.retention.hours": 6,
        "log.retention.bytes": 256 * 1024 * 1024,
        "log.segment.bytes": 64 * 1024 * 1024,
        "log.retention.check.interval.ms": 60_000,
    }
    lines = ["# Written by bankcourse.broker at every start; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


_LOG4J_CONFIG = """# Written by bankcourse.broker: the broker logs to its console (broker.log).
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.events.name = org.apache.kafka.controller.EventPerformanceMonitor
logger.events.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""


def _write_config(settings: Settings) -> None:
    folder = broker_dir(settings)
    (folder / _CONFIG_FILE).write_text(_server_properties(settings))
    (folder / _LOG4J_FILE).write_text(_LOG4J_CONFIG)


def _jvm_options(settings: Settings) -> list[str]:
    folder = broker_dir(settings)
    heap_mb = settings.broker_heap_mb
    return [
        f"-Xmx{heap_mb}m",
        f"-Xms{min(heap_mb, 64)}m",
        "-XX:MaxMetaspaceSize=128m",
        "-XX:ReservedCodeCacheSize=64m",
        "-XX:MaxDirectMemorySize=128m",
        "-XX:+UseSerialGC",
        # C1 only: about 40 MB less RSS and less CPU at start; a course broker
        # does not need the last bit of throughput C2 would bring.
        "-XX:TieredStopAtLevel=1",
        "-XX:+ExitOnOutOfMemoryError",
        "-Xss512k",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={folder / _LOG4J_FILE}",
        f"-Dkafka.logs.dir={folder}",
    ]


def _java_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MALLOC_ARENA_MAX", "2")  # fewer glibc arenas: a smaller RSS
    for name in ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS"):
        env.pop(name, None)  # e.g. a notebook's Spark options must not reach the broker
    return env


def _format_storage(settings: Settings, java: Path, libs: Path) -> None:
    """Format the KRaft storage once (kept across restarts)."""
    folder = broker_dir(settings)
    if (folder / _STORAGE_DIR / "meta.properties").exists():
        return
    cluster_id = _new_cluster_id()
    command = [str(java), "-Xmx128m", "-XX:+UseSerialGC",
               f"-Dlog4j2.configurationFile={folder / _LOG4J_FILE}",
               "-cp", str(libs / "*"), "kafka.tools.StorageTool", "format",
               "--ignore-formatted", "--cluster-id", cluster_id,
               "--config", str(folder / _CONFIG_FILE)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120,
                             check=False, env=_java_env())
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"formatting the broker storage in {folder} took over 2 minutes") \
            from exc
    if out.returncode != 0:
        raise BrokerError(f"formatting the broker storage in {folder / _STORAGE_DIR} failed: "
                          f"{(out.stdout + out.stderr).strip()[-800:]}; delete that folder "
                          f"and retry")
    logger.info("broker storage formatted in %s (cluster id %s)", folder / _STORAGE_DIR,
                cluster_id)


def _new_cluster_id() -> str:
    """A random Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _launch(settings: Settings, java: Path, libs: Path, version: str) -> int:
    folder = broker_dir(settings)
    log_path = folder / _LOG_FILE
    if log_path.exists() and log_path.stat().st_size > 0:
        os.replace(log_path, folder / (_LOG_FILE + ".1"))  # keep the previous run's log
    command = [str(java), *_jvm_options(settings), "-cp", str(libs / "*"),
               "kafka.Kafka", str(folder / _CONFIG_FILE)]
    with open(log_path, "ab") as log_out:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
            cwd=folder, env=_java_env(), start_new_session=True, close_fds=True,
        )
    _CHILDREN[child.pid] = child
    (folder / _PID_FILE).write_text(f"{child.pid}\n")
    info = {"pid": child.pid, "version": version, "started_at": time.time(),
            "bootstrap_servers": settings.bootstrap_servers,
            "controller": f"127.0.0.1:{settings.kafka_controller_port}",
            "java": str(java), "libs": str(libs), "heap_mb": settings.broker_heap_mb}
    (folder / _INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    logger.debug("broker command: %s", " ".join(command))
    return child.pid


def _read_info(settings: Settings) -> dict[str, Any]:
    try:
        return dict(json.loads((broker_dir(settings) / _INFO_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def _already_running(settings: Settings) -> BrokerStatus | None:
    """The status of a broker already at the port, None if the ports are free.

    Raises:
        BrokerError: a port is taken by something that is not a Kafka broker.
    """
    pid = _our_pid(settings)
    if pid is not None:
        return status(settings)  # ours, maybe still starting
    port, cport = settings.kafka_port, settings.kafka_controller_port
    if _port_open("127.0.0.1", port, 0.5):
        if _speaks_kafka("127.0.0.1", port):
            logger.warning("a Kafka broker not started from %s already answers at %s; using it",
                           broker_dir(settings), settings.bootstrap_servers)
            return status(settings)
        raise BrokerError(
            f"port {port} on 127.0.0.1 is taken by something that is not the course's Kafka "
            f"broker; stop that program or choose another port with BANKCOURSE_KAFKA_PORT "
            f"(and BANKCOURSE_KAFKA_CONTROLLER_PORT), e.g. BANKCOURSE_KAFKA_PORT=19092"
        )
    if _port_open("127.0.0.1", cport, 0.5):
        raise BrokerError(
            f"the KRaft controller port {cport} on 127.0.0.1 is taken by another program; "
            f"choose another one with BANKCOURSE_KAFKA_CONTROLLER_PORT, e.g. "
            f"BANKCOURSE_KAFKA_CONTROLLER_PORT={port + 1 if port + 1 != cport else port + 2}"
        )
    return None


def _wait_ready(settings: Settings, pid: int | None, deadline: float) -> None:
    """Wait until the broker serves metadata; raise with its log if it exits or stalls."""
    while True:
        if pid is not None and not _alive(pid):
            (broker_dir(settings) / _PID_FILE).unlink(missing_ok=True)
            raise BrokerError(f"the Kafka broker exited while starting; the end of its log "
                              f"{log_file(settings)}:\n{tail_log(settings, 25)}")
        if _port_open("127.0.0.1", settings.kafka_port, 0.5) and _serves_metadata(settings):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.3)
    if pid is not None:
        stop(settings, timeout_s=10)
    raise BrokerError(f"the Kafka broker did not serve metadata in time (stopped it); the end "
                      f"of its log {log_file(settings)}:\n{tail_log(settings, 25)}")


def _alive(pid: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return False
        return True
    except psutil.NoSuchProcess:
        _reap(pid)
        return False


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (waits for another process holding it)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no fcntl; the course targets Linux/macOS
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``broker start|stop|status|logs|fetch`` to the course's command line."""
    parser = subparsers.add_parser(
        "broker", help="run the course's own Apache Kafka broker (KRaft, no Docker)",
        description="Start, stop and inspect the single-node Apache Kafka broker the course "
                    "runs on 127.0.0.1 (port BANKCOURSE_KAFKA_PORT, default 9092).",
    )
    actions = parser.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    p_start = actions.add_parser("start", help="start the broker (fetches jars the first time)")
    p_start.add_argument("--no-wait", "--background", dest="no_wait", action="store_true",
                         help="launch and return at once, without waiting for it to serve")
    p_start.add_argument("--timeout-s", type=float, default=90.0,
                         help="seconds to wait for the broker to serve (default 90)")
    p_start.set_defaults(func=_cli_start)
    p_stop = actions.add_parser("stop", help="stop the broker")
    p_stop.add_argument("--timeout-s", type=float, default=30.0,
                        help="seconds to wait for a clean shutdown before killing (default 30)")
    p_stop.set_defaults(func=_cli_stop)
    p_status = actions.add_parser("status", help="where the broker listens and if it answers")
    p_status.add_argument("--json", action="store_true", help="print the status as JSON")
    p_status.set_defaults(func=_cli_status)
    p_logs = actions.add_parser("logs", help="print the end of the broker's log")
    p_logs.add_argument("--lines", "-n", type=int, default=50,
                        help="how many lines (default 50)")
    p_logs.set_defaults(func=_cli_logs)
    p_fetch = actions.add_parser("fetch", help="download the Kafka jars now (for image builds)")
    p_fetch.set_defaults(func=_cli_fetch)


def _cli_settings() -> Settings:
    # kafka-python logs every connection at INFO; the CLI shows only its warnings
    # unless -v asked for DEBUG.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return Settings.from_env()
    except SettingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _cli_start(args: argparse.Namespace) -> int:
    settings = _cli_settings()
    if settings.external_kafka:
        print(f"KAFKA_BOOTSTRAP_SERVERS is set: using {settings.bootstrap_servers}, "
              f"starting nothing")
        return 0 if _reachable(settings) else 1
    try:
        result = start(settings, timeout_s=args.timeout_s, wait=not args.no_wait)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.no_wait and not result.running:
        print(f"Kafka broker launching at {result.bootstrap_servers} (pid {result.pid}); "
              f"`python -m bankcourse broker status` tells when it answers")
    else:
        print(result.describe())
    return 0


def _cli_stop(args: argparse.Namespace) -> int:
    settings = _cli_settings()
    if settings.external_kafka:
        print(f"KAFKA_BOOTSTRAP_SERVERS is set: {settings.bootstrap_servers} is not the "
              f"course's broker, nothing to stop")
        return 0
    stopped = stop(settings, timeout_s=args.timeout_s)
    print(f"Kafka broker at {settings.bootstrap_servers} "
          f"{'stopped' if stopped else 'was not running from this cache folder'}")
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    result = status(_cli_settings())
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.describe())
    return 0 if result.running else 1


def _cli_logs(args: argparse.Namespace) -> int:
    settings = _cli_settings()
    text = tail_log(settings, args.lines)
    if not text:
        print(f"no broker log at {log_file(settings)}", file=sys.stderr)
        return 1
    print(text)
    return 0


def _cli_fetch(args: argparse.Namespace) -> int:
    settings = _cli_settings()
    try:
        libs = kafka_libs(settings)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Kafka jars ready in {libs}")
    return 0
