"""Finding Java and reading its version, shared by the broker, Spark and the doctor."""

from __future__ import annotations

from pathlib import Path

import pytest

from bankcourse import java as jdk


@pytest.mark.parametrize(("output", "major"), [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('java version "1.8.0_392"', 8),
    ('openjdk version "21" 2023-09-19', 21),
    ('openjdk version "25-ea" 2025-09-16', 25),
    ("openjdk 11.0.2 2019-01-15", 11),
    ("command not found", None),
])
def test_java_version_is_read_from_java_dash_version_output(output: str, major: int) -> None:
    assert jdk.parse_version(output) == major


def test_the_installed_java_is_found_and_new_enough() -> None:
    path, major = jdk.require_java("the tests")
    assert path.exists() and major >= jdk.MIN_JAVA_MAJOR


def test_a_java_home_that_points_at_nothing_is_named_with_the_fix() -> None:
    with pytest.raises(jdk.JavaError, match="JAVA_HOME is '/nowhere'.*install Java 17"):
        jdk.require_java("Spark", {"JAVA_HOME": "/nowhere", "PATH": ""})


def test_no_java_anywhere_says_what_needs_it(tmp_path: Path) -> None:
    with pytest.raises(jdk.JavaError, match="needed for the Kafka broker.*no `java` is on PATH"):
        jdk.require_java("the Kafka broker", {"PATH": str(tmp_path)})


def test_a_java_older_than_17_is_refused_with_its_version(tmp_path: Path) -> None:
    fake_home = tmp_path / "jdk11"
    (fake_home / "bin").mkdir(parents=True)
    java = fake_home / "bin" / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    java.chmod(0o755)
    with pytest.raises(jdk.JavaError, match="needs Java 17 or newer.*Java 11"):
        jdk.require_java("Spark", {"JAVA_HOME": str(fake_home)})
