"""Student copies of the notebooks: every exercise's reference solution replaced by a stub.

The instructor's notebooks hold each exercise's answer between nbgrader's markers, so they run
end to end under nbval and instructors who use nbgrader can use them directly::

    def read_seconds(size_gb, speed_mb_per_s):              def read_seconds(size_gb, speed_mb_per_s):
        ### BEGIN SOLUTION                         -->          # YOUR CODE HERE
        return size_gb * 1e9 / (speed_mb_per_s * 1e6)           raise NotImplementedError()
        ### END SOLUTION

    check_article_read_time(read_seconds)                   check_article_read_time(read_seconds)

A student copy replaces everything from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (both
lines included) with nbgrader's stub, indented like the ``BEGIN`` line. Markdown cells may hide
a written answer between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->``; it becomes
nbgrader's ``YOUR ANSWER HERE``. The checks stay: run on the stub, a check returns the
"not answered" verdict with a hint (``labkit.checks``), never a traceback.

Copies are written without outputs, each one atomically (a temp file, then a rename), never over
the instructor's folder. A marker spelled any other way stops the copy with an error rather
than leak the answer it was meant to hide. ``restore_solutions`` puts the answers back: the
round trip gives the instructor's cell sources again, byte for byte.

References: nbgrader's ``ClearSolutions`` preprocessor (the markers and stubs), and the
notebook format (nbformat 4: ``cells``, ``source``, ``outputs``, ``execution_count``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.errors import OutputPathError, SolutionMarkerError

# cell type -> (begin markers, end markers, stub lines). A marker is a whole line (spaces around it
# allowed). Markdown takes an HTML comment, which hides the marker in the rendered instructor's
# notebook, or nbgrader's own "### BEGIN SOLUTION", which nbgrader also strips from markdown.
MARKERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "code": (
        ("### BEGIN SOLUTION",),
        ("### END SOLUTION",),
        ("# YOUR CODE HERE", "raise NotImplementedError()"),
    ),
    "markdown": (
        ("<!-- BEGIN SOLUTION -->", "### BEGIN SOLUTION"),
        ("<!-- END SOLUTION -->", "### END SOLUTION"),
        ("YOUR ANSWER HERE",),
    ),
}
# A line that mentions a marker in any other spelling (e.g. "## BEGIN SOLUTION") in a comment: refused,
# since the answer it was meant to hide would reach the students.
_LOOSE_MARKER = {
    "code": re.compile(r"#.*\b(BEGIN|END) SOLUTION\b"),
    "markdown": re.compile(r"^\s*(<!--|#).*\b(BEGIN|END) SOLUTION\b"),
}


@dataclass(frozen=True)
class Solution:
    """One removed solution block: where its stub sits in the student's cell, and the lines it replaced.

    Attributes:
        cell_index: the cell's position in the notebook.
        first_line: the index of the stub's first line in the student's cell.
        n_stub_lines: how many lines the stub has.
        lines: the removed lines, markers included, each with its line ending.
    """

    cell_index: int
    first_line: int
    n_stub_lines: int
    lines: tuple[str, ...]


@dataclass(frozen=True)
class StudentCopy:
    """One written student notebook."""

    source: Path
    path: Path
    solutions: tuple[Solution, ...]


def strip_solutions(
    source: str, cell_type: str, *, where: str = "a cell", cell_index: int = 0
) -> tuple[str, list[Solution]]:
    """Replace each solution block of one cell's source with its stub.

    Args:
        source: the cell's text.
        cell_type: ``"code"`` or ``"markdown"`` (other cells pass through unchanged).
        where: names the cell in error messages, e.g. ``"02_quantization.ipynb, cell 29"``.
        cell_index: stored in each returned ``Solution``.

    Returns:
        The student's source and the removed blocks, in order.

    Raises:
        SolutionMarkerError: a block is not closed, is nested, ends before it begins, or a
            marker is misspelt.
    """
    if cell_type not in MARKERS:
        return source, []
    begins, ends, stub = MARKERS[cell_type]
    out: list[str] = []
    solutions: list[Solution] = []
    block: list[str] | None = None
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        text = line.strip()
        if text in begins and block is None:
            block = [line]
            indent = line[: len(line) - len(line.lstrip())]
        elif text in ends and block is not None:
            block.append(line)
            stub_lines = [f"{indent}{s}\n" for s in stub]
            if not line.endswith("\n"):  # the block ended the cell: so does the stub
                stub_lines[-1] = stub_lines[-1][:-1]
            solutions.append(Solution(cell_index, len(out), len(stub_lines), tuple(block)))
            out.extend(stub_lines)
            block = None
        elif text in begins + ends or _LOOSE_MARKER[cell_type].search(line):
            raise SolutionMarkerError(f"{where}, line {number}: " + _marker_problem(text, begins, ends))
        elif block is not None:
            block.append(line)
        else:
            out.append(line)
    if block is not None:
        raise SolutionMarkerError(
            f"{where}: {begins[0]!r} on line {len(out) + 1} is never closed; add a line {ends[0]!r} after the answer"
        )
    return "".join(out), solutions


def _marker_problem(text: str, begins: tuple[str, ...], ends: tuple[str, ...]) -> str:
    if text in begins:
        return f"{text!r} inside another solution block; close the first with {ends[0]!r}"
    if text in ends:
        return f"{text!r} without a {begins[0]!r} before it; add the opening marker"
    return (
        f"{text!r} looks like a solution marker but is not spelt {begins[0]!r} / {ends[0]!r} "
        "(each alone on its line); fix it so the answer is not handed to students"
    )


def _source_text(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _as_lines(text: str) -> list[str]:
    """The notebook format's way of storing a cell's source: one string per line, endings kept."""
    return text.splitlines(keepends=True)


def student_notebook(
    notebook: dict[str, Any], *, name: str = "notebook"
) -> tuple[dict[str, Any], list[Solution]]:
    """Return a student copy of a notebook (as parsed JSON) and the solutions it removed.

    The copy has every solution block stubbed, no outputs, no execution counts and no saved
    widget state; the input is not changed.
    """
    student = json.loads(json.dumps(notebook))  # a deep copy of plain JSON
    student.get("metadata", {}).pop("widgets", None)
    solutions: list[Solution] = []
    for index, cell in enumerate(student.get("cells", [])):
        text, removed = strip_solutions(
            _source_text(cell), cell.get("cell_type", ""), where=f"{name}, cell {index}", cell_index=index
        )
        cell["source"] = _as_lines(text)
        solutions.extend(removed)
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        for volatile in ("execution", "collapsed", "scrolled"):
            cell.get("metadata", {}).pop(volatile, None)
    return student, solutions


def restore_solutions(student: dict[str, Any], solutions: list[Solution]) -> dict[str, Any]:
    """Put removed solutions back into a student copy (the reverse of ``student_notebook``'s stubs).

    Raises:
        SolutionMarkerError: a stub is no longer where it was (the student's copy was edited there).
    """
    restored = json.loads(json.dumps(student))
    cells = restored["cells"]
    for solution in sorted(
        solutions, key=lambda s: (s.cell_index, -s.first_line)
    ):  # last first: indices hold
        cell = cells[solution.cell_index]
        lines = _as_lines(_source_text(cell))
        stub = [
            line.strip() for line in lines[solution.first_line : solution.first_line + solution.n_stub_lines]
        ]
        if stub != list(MARKERS[cell["cell_type"]][2]):
            raise SolutionMarkerError(
                f"cell {solution.cell_index}, line {solution.first_line + 1}: the stub is not where it was "
                "written; restore the solution from the instructor's notebook instead"
            )
        lines[solution.first_line : solution.first_line + solution.n_stub_lines] = solution.lines
        cell["source"] = lines
    return restored


def notebook_json(notebook: dict[str, Any]) -> str:
    """A notebook as text, laid out as Jupyter saves it (one-space indent, non-ASCII kept)."""
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def write_student_copies(
    source_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False
) -> list[StudentCopy]:
    """Write a student copy of every notebook in ``source_dir`` into ``out_dir``.

    Args:
        source_dir: the instructor's folder (``notebooks/``); only its ``*.ipynb`` files are read.
        out_dir: where the copies go; created if missing; must lie outside ``source_dir``.
        overwrite: replace copies already in ``out_dir`` that differ from the new ones
            (a student's work, perhaps); by default they stop the run before anything is written.

    Returns:
        One record per notebook, in name order.

    Raises:
        OutputPathError: ``out_dir`` is ``source_dir`` or lies inside it, or would replace a changed file.
        SolutionMarkerError: a notebook's markers are broken (nothing is written then).
    """
    source_dir, out_dir = Path(source_dir).resolve(), Path(out_dir).resolve()
    if not source_dir.is_dir():
        raise OutputPathError(f"{source_dir} is not a folder of notebooks; give the folder, e.g. notebooks/")
    if out_dir == source_dir or source_dir in out_dir.parents:
        raise OutputPathError(
            f"refusing to write student copies into {out_dir}: it is (inside) the instructor's folder "
            f"{source_dir}; pick a folder outside it, e.g. {source_dir.parent / 'student'}"
        )
    planned = []
    for path in sorted(source_dir.glob("*.ipynb")):
        student, solutions = student_notebook(json.loads(path.read_text(encoding="utf-8")), name=path.name)
        planned.append((path, out_dir / path.name, notebook_json(student), tuple(solutions)))
    changed = [t for _, t, text, _ in planned if t.exists() and t.read_text(encoding="utf-8") != text]
    if changed and not overwrite:
        raise OutputPathError(
            f"{changed[0]} exists and differs from its new student copy ({len(changed)} such file(s)); "
            "move it away, or pass overwrite=True (--overwrite) to replace it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for _, target, text, _ in planned:
        _write_atomically(target, text)
    return [StudentCopy(source, target, solutions) for source, target, _, solutions in planned]


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a hidden temp file in ``path``'s folder, then rename it over ``path``.

    The rename is atomic (POSIX ``rename``): a reader sees the old file or the new one, never
    half a notebook; on any error the temp file is removed and ``path`` is left as it was.
    """
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
