"""The student copy: solutions out, starters in, outputs cleared, and it still runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from bankcourse import student

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FILE_MODE_NOTEBOOKS = ["00_setup.ipynb", "01_dataset.ipynb", "02_fraud_rules.ipynb",
                       "03_file_mode.ipynb"]


def tags(cell: nbformat.NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def test_starter_sets_every_name_the_solution_assigns_to_none() -> None:
    solution = "rows = frame[frame.x == 1]\nshare, total = rows.mean(), 3\nshare += 1\nprint(share)"
    assert student.assigned_names(solution) == ["rows", "share", "total"]
    starter = student.starter_source(solution)
    assert "rows = None" in starter and "total = None" in starter
    assert "frame" not in starter


def test_student_notebook_replaces_solutions_and_clears_outputs() -> None:
    nb = nbformat.read(NOTEBOOKS / "02_fraud_rules.ipynb", as_version=4)
    solutions = [c.source for c in nb.cells if student.SOLUTION_TAG in tags(c)]
    assert solutions, "the notebook should have solution cells"
    copy, replaced = student.student_notebook(nb)
    assert replaced == len(solutions)
    assert len(copy.cells) == len(nb.cells)
    assert not any(student.SOLUTION_TAG in tags(c) for c in copy.cells)
    assert all(not c.outputs and c.execution_count is None
               for c in copy.cells if c.cell_type == "code")
    sources = "\n".join(c.source for c in copy.cells)
    assert all(s not in sources for s in solutions)
    starters = [c for c in copy.cells if student.STARTER_TAG in tags(c)]
    assert all("= None" in c.source for c in starters)


def test_every_solution_is_followed_by_a_self_check_that_survives_the_copy() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        copy, _ = student.student_notebook(nbformat.read(path, as_version=4))
        code = [c for c in copy.cells if c.cell_type == "code"]
        for i, cell in enumerate(code):
            if student.STARTER_TAG in tags(cell):
                assert i + 1 < len(code) and "exercises.check_" in code[i + 1].source, (
                    f"{path.name}: the starter cell {i} is not followed by a check")


def test_student_command_writes_a_copy_of_every_notebook(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bankcourse", "-q", "student", "--source", str(NOTEBOOKS),
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_student_copy_fails_clearly_without_notebooks(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        student.make_student_copy(tmp_path / "empty", tmp_path / "out")


@pytest.mark.parametrize("name", FILE_MODE_NOTEBOOKS)
def test_student_copy_runs_to_the_end_and_each_check_says_not_yet(
    name: str, tmp_path: Path
) -> None:
    papermill = pytest.importorskip("papermill")
    copy = student.make_student_copy(NOTEBOOKS, tmp_path / "student", [name])[0]
    params = {"output_dir": str(tmp_path / "output"), "data_dir": str(tmp_path / "data")}
    if name != "00_setup.ipynb":
        params["rows"] = 20_000
    done = papermill.execute_notebook(str(copy), str(tmp_path / "executed.ipynb"),
                                      parameters=params, kernel_name="python3",
                                      cwd=str(NOTEBOOKS), progress_bar=False)
    checks = [c for c in done.cells
              if c.cell_type == "code" and "exercises.check_" in c.source]
    assert checks
    for cell in checks:
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert "Not yet: replace None" in text, text


STREAM_NOTEBOOKS = [
    pytest.param("04_kafka_mode.ipynb", {"rows": 2_000}, marks=pytest.mark.kafka),
    pytest.param("05_spark_streaming.ipynb", {"rows": 2_000},
                 marks=[pytest.mark.kafka, pytest.mark.spark]),
    pytest.param("06_three_modes.ipynb", {"rows": 2_000, "stream_rows": 1_000,
                                          "rate_per_s": 200.0, "duration_s": 2.0},
                 marks=[pytest.mark.kafka, pytest.mark.spark]),
]


@pytest.mark.parametrize(("name", "small"), STREAM_NOTEBOOKS)
def test_streaming_student_copy_runs_to_the_end_and_each_check_says_not_yet(
    name: str, small: dict, kafka: object, tmp_path: Path
) -> None:
    papermill = pytest.importorskip("papermill")
    copy = student.make_student_copy(NOTEBOOKS, tmp_path / "student", [name])[0]
    params = {"output_dir": str(tmp_path / "output"), "data_dir": str(tmp_path / "data"),
              **small}
    done = papermill.execute_notebook(str(copy), str(tmp_path / "executed.ipynb"),
                                      parameters=params, kernel_name="python3",
                                      cwd=str(NOTEBOOKS), progress_bar=False)
    checks = [c for c in done.cells
              if c.cell_type == "code" and "exercises.check_" in c.source]
    assert checks
    for cell in checks:
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert "Not yet: replace None" in text, text
