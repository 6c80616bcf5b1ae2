"""The environment doctor: each check finds what is there and says how to fix what is not."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bankcourse import doctor
from bankcourse.settings import Settings

NAMES = ["python", "java", "kafka broker", "spark kafka connector", "memory", "disk"]


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port on which a plain TCP server (not Kafka) accepts connections."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_environment_reports_every_check_in_order(settings: Settings) -> None:
    checks = doctor.check_environment(settings)
    assert [c.name for c in checks] == NAMES
    assert all(c.status in (doctor.OK, doctor.WARN, doctor.FAIL) for c in checks)
    assert all(c.fix for c in checks if c.status != doctor.OK)


def test_python_check_fails_on_an_old_python_with_the_fix() -> None:
    assert doctor.check_python().status == doctor.OK
    old = doctor.check_python((3, 8, 10))
    assert old.status == doctor.FAIL
    assert "3.10" in old.fix


def test_java_check_finds_the_installed_java() -> None:
    check = doctor.check_java()
    major, _ = doctor.java_major()
    assert (check.status == doctor.OK) == (major is not None and major >= 17)


def test_a_learner_without_java_reads_that_file_mode_still_works(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    checks = {c.name: c for c in doctor.check_environment(
        settings.replace(kafka_port=free_port(), kafka_controller_port=free_port()))}
    assert checks["java"].status == doctor.FAIL
    assert "notebooks 00 to 03 work without it" in checks["java"].fix
    assert checks["kafka broker"].status == doctor.FAIL
    ready = doctor.ready_stages(checks.values())
    assert ready["kafka"] is False and ready["spark"] is False
    assert ready["file"] is (checks["memory"].ok and checks["disk"].ok)
    assert "kafka mode NO" in doctor.format_checks(checks.values())


def test_broker_check_says_the_port_is_taken_by_something_else(
    settings: Settings, listening_port: int
) -> None:
    check = doctor.check_broker(settings.replace(kafka_port=listening_port,
                                                 kafka_controller_port=free_port()))
    assert check.status == doctor.FAIL
    assert "BANKCOURSE_KAFKA_PORT" in check.fix


def test_broker_check_says_a_free_port_can_start_a_broker(settings: Settings) -> None:
    check = doctor.check_broker(settings.replace(kafka_port=free_port(),
                                                 kafka_controller_port=free_port()))
    assert check.status == doctor.OK
    assert "can start" in check.detail


def test_an_unreachable_external_cluster_fails_with_the_setting_to_check(
    settings: Settings,
) -> None:
    check = doctor.check_broker(settings.replace(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}"))
    assert check.status == doctor.FAIL
    assert "KAFKA_BOOTSTRAP_SERVERS" in check.fix


def test_an_external_cluster_that_answers_is_fine(
    settings: Settings, listening_port: int
) -> None:
    check = doctor.check_broker(settings.replace(
        kafka_bootstrap_servers=f"127.0.0.1:{listening_port}"))
    assert check.status == doctor.OK


def test_connector_check_names_the_pyspark_version(settings: Settings) -> None:
    import pyspark

    check = doctor.check_connector(settings)
    assert pyspark.__version__ in check.detail


def test_connector_check_looks_in_spark_caches_not_in_the_brokers_data(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> None:
    import pyspark

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = tmp_path / "cache"
    name = f"org.apache.spark_spark-sql-kafka-0-10_2.13-{pyspark.__version__}.jar"
    # A broker's data folder is outside the search: it changes while it is walked.
    stray = cache / "kafka" / "broker-9092" / "kraft-logs" / name
    stray.parent.mkdir(parents=True)
    stray.touch()
    local = settings.replace(cache_dir=cache)
    assert doctor.check_connector(local).status == doctor.WARN
    jar = cache / "spark" / "ivy" / "jars" / name
    jar.parent.mkdir(parents=True)
    jar.touch()
    found = doctor.check_connector(local)
    assert found.status == doctor.OK
    assert name in found.detail


def test_memory_check_warns_when_less_than_asked_is_available() -> None:
    available, _ = doctor.available_memory_mb()
    assert available > 0
    assert doctor.check_memory(minimum_mb=1).status == doctor.OK
    short = doctor.check_memory(minimum_mb=int(available * 100))
    assert short.status in (doctor.WARN, doctor.FAIL)
    assert short.fix


def test_disk_check_measures_a_folder_that_does_not_exist_yet(
    settings: Settings, tmp_path: Path
) -> None:
    check = doctor.check_disk(settings.replace(data_dir=tmp_path / "not" / "yet"))
    assert check.status in (doctor.OK, doctor.WARN)
    assert "MB free" in check.detail


def test_doctor_command_prints_the_checks_and_readiness() -> None:
    done = subprocess.run([sys.executable, "-m", "bankcourse", "-q", "doctor"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert "ready: file mode" in done.stdout
    assert done.returncode == (1 if "[FAIL]" in done.stdout else 0)
