"""Binder: the files repo2docker builds the learners' image from, and what they do.

mybinder.org builds the course with repo2docker. Once a ``binder/`` folder exists,
repo2docker reads configuration only from there, so ``binder/environment.yml`` is a
copy of the top-level ``environment.yml`` (for conda users) and must stay identical;
both must pin what ``pyproject.toml`` pins. ``binder/postBuild`` prepares the image
and ``binder/start`` starts the broker at launch and must always start the server.

The full build-and-launch rehearsal (clean environment, non-root user, a notebook run
through the broker ``binder/start`` started) is ``binder/ci-check.sh``
(``make binder-check``): it takes minutes, so it is not a unit test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
BINDER = REPO / "binder"

# conda-forge names that differ from the PyPI name of the same package
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}
# conda-only entries: the interpreter, the installer and Java
NOT_ON_PYPI = {"python", "pip", "openjdk"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _conda_spec(text: str) -> tuple[str, SpecifierSet]:
    """A conda MatchSpec such as ``numpy>=1.26,<3`` or ``python=3.11`` as a PyPI name and
    specifier set (conda's single ``=`` means ``==X.*``)."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", text)
    assert match, f"cannot read the conda dependency {text!r}"
    name, spec = match.groups()
    if re.fullmatch(r"=[^=<>!]+", spec):
        spec = f"=={spec[1:]}.*" if not spec.endswith("*") else f"={spec}"
    return _normal(CONDA_TO_PYPI.get(name, name)), SpecifierSet(spec)


def _environment(path: Path) -> dict[str, SpecifierSet]:
    """Every dependency of a conda environment file, conda and pip, by PyPI name."""
    data = yaml.safe_load(path.read_text())
    found: dict[str, SpecifierSet] = {}
    for entry in data["dependencies"]:
        if isinstance(entry, dict):
            for line in entry.get("pip", []):
                req = Requirement(line)
                found[_normal(req.name)] = req.specifier
        else:
            name, spec = _conda_spec(entry)
            found[name] = spec
    return found


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_binder_environment_is_a_byte_for_byte_copy_of_the_top_level_one() -> None:
    top = (REPO / "environment.yml").read_bytes()
    binder = (BINDER / "environment.yml").read_bytes()
    assert not (BINDER / "environment.yml").is_symlink(), (
        "binder/environment.yml must be a real file: repo2docker copies it into the image "
        "on its own, before the repository, where a link to ../environment.yml would dangle"
    )
    assert binder == top, (
        "binder/environment.yml differs from environment.yml; edit environment.yml, then "
        "`cp environment.yml binder/environment.yml`"
    )


def test_environment_pins_every_package_dependency_as_pyproject_does() -> None:
    env = _environment(REPO / "environment.yml")
    for line in _pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        name = _normal(req.name)
        assert name in env, f"{req.name} is a dependency in pyproject.toml but not in " \
                            f"environment.yml"
        assert env[name] == req.specifier, (
            f"{req.name}: environment.yml pins {env[name] or 'nothing'}, pyproject.toml pins "
            f"{req.specifier}; make them the same"
        )


def test_environment_pins_the_notebook_tools_as_the_dev_extras_do() -> None:
    env = _environment(REPO / "environment.yml")
    shared = 0
    for line in _pyproject()["project"]["optional-dependencies"]["dev"]:
        req = Requirement(line)
        name = _normal(req.name)
        if name in env:
            shared += 1
            assert env[name] == req.specifier, (
                f"{req.name}: environment.yml pins {env[name]}, the dev extras pin "
                f"{req.specifier}"
            )
    assert shared >= 2, "papermill and ipykernel should be in environment.yml"


def test_environment_has_a_python_the_package_supports_and_java_17() -> None:
    env = _environment(REPO / "environment.yml")
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    python = env["python"]
    assert python.contains("3.11.9") and requires.contains("3.11.9")
    assert env["openjdk"].contains("17.0.15")
    assert not env["openjdk"].contains("11.0.1")
    assert set(env) - NOT_ON_PYPI, "the environment lists no Python packages"


def test_repo2docker_builds_from_the_binder_folder_with_postbuild_and_start() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "repo2docker", "--no-build", "--debug", str(REPO)],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    assert "Building conda environment for python=3.11" in text
    assert 'env update -p ${NB_PYTHON_PREFIX} --file "binder/environment.yml"' in text
    assert '--file "environment.yml"' not in text
    assert re.search(r"^RUN \./binder/postBuild$", text, re.MULTILINE), text[-2000:]
    assert 'ENV R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in text


@pytest.mark.parametrize("script", ["postBuild", "start"])
def test_binder_scripts_are_executable_bash_with_valid_syntax(script: str) -> None:
    path = BINDER / script
    assert os.access(path, os.X_OK), f"chmod +x binder/{script}"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True,
                           timeout=30, check=False)
    assert check.returncode == 0, check.stderr


def test_postbuild_stops_on_errors_and_start_never_does() -> None:
    post_build = (BINDER / "postBuild").read_text()
    start = (BINDER / "start").read_text()
    assert re.search(r"^set -euo pipefail$", post_build, re.MULTILINE)
    assert not re.search(r"^\s*set -\w*e", start, re.MULTILINE)
    assert start.rstrip().endswith('exec "$@"')


def test_start_runs_the_server_command_even_when_the_broker_cannot_start(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "JAVA_HOME": str(tmp_path / "no-java-here"),
        "BANKCOURSE_KAFKA_PORT": "59092",
        "BANKCOURSE_KAFKA_CONTROLLER_PORT": "59093",
    }
    command = [str(BINDER / "start"), sys.executable, "-c",
               "import os, sys; print(os.environ['BANKCOURSE_DATA_DIR']); print(sys.argv[1:])",
               "two words", "--flag"]
    out = subprocess.run(command, cwd=REPO / "notebooks" if (REPO / "notebooks").is_dir()
                         else REPO, env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(REPO / "data")
    assert lines[1] == "['two words', '--flag']"

    log = home / ".cache" / "bankcourse" / "binder-start.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "no-java-here" not in _read(log):
        time.sleep(0.2)
    assert "no-java-here" in _read(log), f"the broker's failure is not in {log}: {_read(log)}"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
