"""The student copy of the notebooks: solutions taken out, outputs cleared.

In the course notebooks each "your turn" exercise is a code cell tagged ``solution``
followed by a check cell that calls a self-check from :mod:`bankcourse.exercises`.
:func:`make_student_copy` replaces each solution cell with a starter cell that sets
the same names to ``None``, so the check cell says "Not yet" instead of failing and
the notebook still runs from top to bottom.

``python -m bankcourse student`` writes the copies to ``student/``.
"""

from __future__ import annotations

import argparse
import ast
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nbformat

log = logging.getLogger(__name__)

SOLUTION_TAG = "solution"
"""Cells with this tag are solutions and are left out of the student copy."""

STARTER_TAG = "exercise"
"""The tag given to the starter cell that replaces a solution."""

STARTER_NOTE = "# Your turn: replace None with your code."


def assigned_names(source: str) -> list[str]:
    """Names a solution cell assigns at top level, in order (for the starter cell)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names: list[str] = []
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name) and sub.id not in names:
                    names.append(sub.id)
    return names


def starter_source(solution: str) -> str:
    """The starter code for a solution cell: each assigned name set to None."""
    names = assigned_names(solution)
    lines = [STARTER_NOTE] + [f"{name} = None" for name in names]
    return "\n".join(lines)


def student_notebook(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """A copy of ``nb`` without solutions and outputs; returns it and the number of
    solutions replaced."""
    out = nbformat.from_dict(nb)
    cells = []
    replaced = 0
    for cell in out.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
            cell.metadata.pop("papermill", None)
        if SOLUTION_TAG in tags:
            replaced += 1
            starter = nbformat.v4.new_code_cell(starter_source(cell.source))
            starter.metadata["tags"] = [STARTER_TAG]
            cells.append(starter)
            continue
        cells.append(cell)
    out.cells = cells
    out.metadata.pop("papermill", None)
    return out, replaced


def make_student_copy(
    source_dir: str | Path = "notebooks",
    out_dir: str | Path = "student",
    names: Iterable[str] | None = None,
) -> list[Path]:
    """Write student copies of the notebooks of ``source_dir`` into ``out_dir``.

    Args:
        source_dir: the course notebooks. Default: ``notebooks``.
        out_dir: where the copies go (created). Default: ``student``.
        names: notebook file names to copy. Default: every ``*.ipynb`` in ``source_dir``.

    Returns:
        The paths written, in name order.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    paths = sorted(source_dir.glob("*.ipynb")) if names is None else [
        source_dir / n for n in names]
    if not paths:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {source_dir}; "
                                "run from the course folder or pass --source")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        copy, replaced = student_notebook(nb)
        target = out_dir / path.name
        nbformat.write(copy, target)
        log.info("student copy %s solutions_removed=%d", target, replaced)
        written.append(target)
    return written


def _cli_student(args: argparse.Namespace) -> int:
    written = make_student_copy(args.source, args.out)
    for path in written:
        print(path)
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``python -m bankcourse student``."""
    parser = subparsers.add_parser(
        "student", help="write the notebooks without solutions (the student copy)",
        description="Copy the notebooks with every cell tagged 'solution' replaced by a "
                    "starter cell and all outputs cleared.",
    )
    parser.add_argument("--source", default="notebooks",
                        help="folder of the course notebooks (default: notebooks)")
    parser.add_argument("--out", default="student",
                        help="folder for the copies (default: student)")
    parser.set_defaults(func=_cli_student)
