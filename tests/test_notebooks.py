"""The course notebooks: their skeleton, their parameters, and that parameters change results.

The notebooks themselves are executed by ``pytest --nbval-lax notebooks/``; these tests
check what nbval cannot: every notebook has a ``parameters`` cell followed by a cell
that validates those parameters through the library, the committed copies are executed
without errors, and a parameter given to papermill really changes the counts.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["00_setup", "01_dataset", "02_fraud_rules", "03_file_mode", "04_kafka_mode",
            "05_spark_streaming", "06_three_modes"]


def tags(cell: nbformat.NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def parameter_names(source: str) -> list[str]:
    return [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)]


def test_the_course_has_its_numbered_notebooks_in_order() -> None:
    assert [p.stem for p in PATHS] == EXPECTED


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_validated_by_the_next_cell(path: Path) -> None:
    code = [c for c in load(path).cells if c.cell_type == "code"]
    marked = [i for i, c in enumerate(code) if "parameters" in tags(c)]
    assert len(marked) == 1, "exactly one code cell must be tagged 'parameters'"
    names = parameter_names(code[marked[0]].source)
    assert names, "the parameters cell assigns no parameters"
    validate = code[marked[0] + 1].source
    assert "exercises.validate_parameters(" in validate
    for name in names:
        assert re.search(rf"\b{name}={name}\b", validate), (
            f"parameter {name} is not passed to validate_parameters")


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_follows_the_course_skeleton(path: Path) -> None:
    cells = load(path).cells
    prose = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    for heading in ("What you will learn", "Prerequisites", "Time:", "## Your turn",
                    "## Summary", "## What's next"):
        assert heading in prose, f"missing {heading!r}"
    assert any("solution" in tags(c) for c in cells), "no exercise with a solution cell"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_committed_notebook_is_executed_cleanly(path: Path) -> None:
    nb = load(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "not executed from the top"
    counts = [c.execution_count for c in code]
    assert counts == sorted(counts), "cells were executed out of order"
    for cell in code:
        for out in cell.outputs:
            assert out.output_type != "error", f"error output: {out.get('ename')}"
            text = json.dumps(out.get("text", "")) + json.dumps(out.get("data", {}).get(
                "text/plain", ""))
            assert "/root/" not in text and "/tmp/" not in text, "machine-specific path"
            assert "Traceback" not in text


def test_kernel_is_python3() -> None:
    for path in PATHS:
        assert load(path).metadata["kernelspec"]["name"] == "python3"


def run_rules_notebook(tmp_path: Path, name: str, **params: object) -> dict:
    papermill = pytest.importorskip("papermill")
    out_dir = tmp_path / name
    papermill.execute_notebook(
        str(NOTEBOOKS / "02_fraud_rules.ipynb"), str(tmp_path / f"{name}.ipynb"),
        parameters={"rows": 20_000, "output_dir": str(out_dir),
                    "data_dir": str(tmp_path / "data"), **params},
        kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
    return json.loads((out_dir / "summary.json").read_text())


def test_papermill_high_amount_changes_the_high_amount_count(tmp_path: Path) -> None:
    default = run_rules_notebook(tmp_path, "default")
    lower = run_rules_notebook(tmp_path, "lower", high_amount=100_000)
    assert lower["thresholds"]["high_amount"] == 100_000
    assert lower["by_rule"]["HIGH_AMOUNT"] > default["by_rule"]["HIGH_AMOUNT"]
    assert lower["by_rule"]["DATASET_FRAUD"] == default["by_rule"]["DATASET_FRAUD"]


def test_a_bad_parameter_stops_the_notebook_naming_it(tmp_path: Path) -> None:
    papermill = pytest.importorskip("papermill")
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(
            str(NOTEBOOKS / "02_fraud_rules.ipynb"), str(tmp_path / "bad.ipynb"),
            parameters={"rows": -5, "output_dir": str(tmp_path / "out")},
            kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
    assert caught.value.ename == "ParameterError"
    assert "rows must be from 10 to 7,000,000" in caught.value.evalue
