"""Finding Java, which the Kafka broker and Spark both run on, and checking its version.

The broker, the Spark session and the doctor all ask here, so the three agree on which
``java`` is used (``$JAVA_HOME/bin/java``, else the first ``java`` on PATH) and give
the same advice when it is missing or too old.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

MIN_JAVA_MAJOR = 17
"""The oldest Java that runs Kafka 4 and Spark 4."""

VERSION_TIMEOUT_S = 30
"""How long ``java -version`` may take before it counts as broken."""

INSTALL_HINT = (
    "install Java 17 or newer, for example `sudo apt-get install openjdk-17-jre-headless` "
    "(Debian/Ubuntu), `conda install -c conda-forge openjdk=17` or `brew install openjdk@17`, "
    "then set JAVA_HOME to it or put its bin/ on PATH"
)


class JavaError(RuntimeError):
    """No usable Java; the message says what was found and how to install one."""


def find_java(env: Mapping[str, str] | None = None) -> Path:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else PATH's.

    Raises:
        JavaError: JAVA_HOME points at nothing, or there is no ``java`` on PATH.
    """
    env = os.environ if env is None else env
    java_home = env.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / ("java.exe" if os.name == "nt" else "java")
        if not java.exists():
            raise JavaError(f"JAVA_HOME is {java_home!r} but {java} does not exist; "
                            f"fix or unset JAVA_HOME, or {INSTALL_HINT}")
        return java
    found = shutil.which("java", path=env.get("PATH"))
    if found is None:
        raise JavaError(f"no `java` is on PATH and JAVA_HOME is not set; {INSTALL_HINT}")
    return Path(found)


def parse_version(text: str) -> int | None:
    """The major version in ``java -version`` output (``1.8.0_392`` gives 8), or None."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        match = re.search(r"\b(?:openjdk|java) (\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        return int(match.group(2))
    return major


def java_major(java: Path) -> int:
    """The major version of ``java``, from running ``java -version``.

    Raises:
        JavaError: it does not run, or prints no version.
    """
    try:
        done = subprocess.run([str(java), "-version"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaError(f"cannot run {java} -version ({exc}); {INSTALL_HINT}") from exc
    output = (done.stderr or "") + (done.stdout or "")
    major = parse_version(output)
    if done.returncode != 0 or major is None:
        raise JavaError(f"{java} -version failed: {output.strip()[:300]!r}; {INSTALL_HINT}")
    return major


def require_java(needed_for: str, env: Mapping[str, str] | None = None) -> tuple[Path, int]:
    """Find Java and check that it is :data:`MIN_JAVA_MAJOR` or newer.

    Args:
        needed_for: what needs it, for the message ("the Kafka broker", "Spark").
        env: the environment to look in. Default: ``os.environ``.

    Returns:
        ``(path to java, major version)``.

    Raises:
        JavaError: no Java, or one that is too old, with how to install one.
    """
    try:
        java = find_java(env)
    except JavaError as exc:
        raise JavaError(f"Java {MIN_JAVA_MAJOR}+ is needed for {needed_for}: {exc}") \
            from None
    major = java_major(java)
    if major < MIN_JAVA_MAJOR:
        raise JavaError(f"{needed_for} needs Java {MIN_JAVA_MAJOR} or newer, but {java} is "
                        f"Java {major}; {INSTALL_HINT}")
    return java, major
