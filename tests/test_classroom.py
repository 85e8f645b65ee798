"""Student copies: no answer leaks, every stub meets its check's hint, and the answers go back in.

The marker logic is tested on hand-built cells (exact text). Every notebook in notebooks/ is
then turned into a student copy, whatever chapters exist: no line of any solution survives in
it, and restoring the solutions gives the instructor's cells back byte for byte.

Running the copies. Executing every student copy end to end, then again with the answers
restored, would run each notebook twice more on top of nbval's run (minutes of CI per
notebook). Executing only the exercise and its check with the notebook's imports is not
enough either: checks take values the notebook computed (notebook 01's exercise needs the
measured probe report). So each exercise runs in a fresh kernel with its *backward slice*:
the notebook's first code cell (imports, seeds), then only the earlier cells that define a
name the exercise needs, transitively (found with ``ast``; a cell that assigns into a name,
``x[5] = ...``, counts as defining it). Widgets, plots and measurements the exercise does not
use are skipped. If a slice misses a side effect (a file written by a skipped cell) and fails,
the test falls back to every cell before the exercise and says so. In that kernel the stub's
check must print the "not answered" verdict, with no traceback; then the exercise cell with
its solution restored, and its check, must print "passed". Where an exercise checks a notebook's
whole measured result (notebook 07's journey), the slice is most of the notebook: that is the price
of checking the real thing.
"""

from __future__ import annotations

import ast
import builtins
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from labkit.classroom import (
    MARKERS,
    Solution,
    restore_solutions,
    strip_solutions,
    student_notebook,
    write_student_copies,
)
from labkit.cli import main
from labkit.errors import OutputPathError, SolutionMarkerError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # a ceiling on a busy machine; notebook 07's journey cell is the longest
VERDICT = re.compile(r"^[✅❌] (passed|not answered|not yet):", re.M)
CHECK_CALL = re.compile(r"^(\w+\s*=\s*)?check_\w+\(", re.M)


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# --- the markers, on hand-built cells ---------------------------------------------------------


def test_code_block_becomes_nbgrader_stub_with_its_indentation() -> None:
    source = (
        "def f(x):\n"
        '    """Twice x."""\n'
        "    ### BEGIN SOLUTION\n"
        "    y = 2 * x\n"
        "    return y\n"
        "    ### END SOLUTION\n"
        "\n"
        "check_f(f)"
    )
    student, removed = strip_solutions(source, "code", cell_index=7)
    assert student == (
        'def f(x):\n    """Twice x."""\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\ncheck_f(f)'
    )
    assert removed == [
        Solution(
            7,
            2,
            2,
            ("    ### BEGIN SOLUTION\n", "    y = 2 * x\n", "    return y\n", "    ### END SOLUTION\n"),
        )
    ]


def test_two_blocks_and_a_block_ending_the_cell() -> None:
    source = (
        "a = 1\n### BEGIN SOLUTION\nb = 2\n### END SOLUTION\nc = 3\n"
        "    ### BEGIN SOLUTION\n    d\n    ### END SOLUTION"
    )
    student, removed = strip_solutions(source, "code")
    assert student == (
        "a = 1\n# YOUR CODE HERE\nraise NotImplementedError()\nc = 3\n"
        "    # YOUR CODE HERE\n    raise NotImplementedError()"
    )
    assert [s.first_line for s in removed] == [1, 4]


@pytest.mark.parametrize(
    "style",
    [("<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"), ("### BEGIN SOLUTION", "### END SOLUTION")],
)
def test_markdown_answer_becomes_your_answer_here(style: tuple[str, str]) -> None:
    source = f"Why is Q4_K smaller?\n\n{style[0]}\nIt stores 4.5 bits a weight.\n{style[1]}\n"
    student, removed = strip_solutions(source, "markdown")
    assert student == "Why is Q4_K smaller?\n\nYOUR ANSWER HERE\n"
    assert removed[0].lines[1] == "It stores 4.5 bits a weight.\n"


def test_markers_in_prose_and_raw_cells_are_left_alone() -> None:
    prose = "The answer sits between `### BEGIN SOLUTION` and `### END SOLUTION` in the notebooks.\n"
    assert strip_solutions(prose, "markdown") == (prose, [])
    code = 'print("<!-- BEGIN SOLUTION --> is how markdown hides an answer")\n'
    assert strip_solutions(code, "code") == (code, [])
    raw = "### BEGIN SOLUTION\nsecret\n"
    assert strip_solutions(raw, "raw") == (raw, [])


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("### BEGIN SOLUTION\nx = 1\n", "never closed"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside another solution block"),
        ("x = 1\n### END SOLUTION\n", "without a '### BEGIN SOLUTION' before it"),
        ("## BEGIN SOLUTION\nx = 1\n## END SOLUTION\n", "looks like a solution marker"),
        ("x = 1  ### END SOLUTION\n", "looks like a solution marker"),
    ],
)
def test_broken_markers_stop_the_copy(source: str, match: str) -> None:
    with pytest.raises(SolutionMarkerError, match=match):
        strip_solutions(source, "code", where="nb.ipynb, cell 3")


def test_misspelt_markdown_marker_stops_the_copy() -> None:
    with pytest.raises(SolutionMarkerError, match="cell 0, line 1"):
        student_notebook({"cells": [{"cell_type": "markdown", "source": ["<!-- BEGIN SOLUTION-->\n"]}]})


def test_restore_refuses_a_moved_stub() -> None:
    notebook = {
        "cells": [{"cell_type": "code", "source": ["### BEGIN SOLUTION\n", "x = 1\n", "### END SOLUTION\n"]}]
    }
    student, removed = student_notebook(notebook)
    student["cells"][0]["source"] = ["x = 2  # the student's answer\n"]
    with pytest.raises(SolutionMarkerError, match="stub is not where it was"):
        restore_solutions(student, removed)


# --- writing the copies -------------------------------------------------------------------------


def _tiny_notebook(folder: Path) -> Path:
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": 3,
                "metadata": {"execution": {"iopub.status.busy": "x"}},
                "outputs": [{"output_type": "stream", "name": "stdout", "text": ["42\n"]}],
                "source": [
                    "def f():\n",
                    "    ### BEGIN SOLUTION\n",
                    "    return 42\n",
                    "    ### END SOLUTION\n",
                ],
            }
        ],
        "metadata": {"widgets": {"state": {}}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "99_tiny.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


def test_copies_have_no_outputs_and_leave_no_temp_files(tmp_path: Path) -> None:
    source = _tiny_notebook(tmp_path / "teacher")
    (copy,) = write_student_copies(tmp_path / "teacher", tmp_path / "student")
    assert copy.path == (tmp_path / "student" / source.name).resolve() and len(copy.solutions) == 1
    cell = _load(copy.path)["cells"][0]
    assert cell["outputs"] == [] and cell["execution_count"] is None and cell["metadata"] == {}
    assert _source(cell) == "def f():\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    assert "widgets" not in _load(copy.path)["metadata"]
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == [source.name]
    assert "return 42" in source.read_text(), "the instructor's notebook is unchanged"


@pytest.mark.parametrize("inside", [".", "student"])
def test_refuses_to_write_into_the_instructors_folder(tmp_path: Path, inside: str) -> None:
    source = _tiny_notebook(tmp_path / "teacher")
    before = source.read_bytes()
    with pytest.raises(OutputPathError, match="refusing to write student copies into"):
        write_student_copies(tmp_path / "teacher", tmp_path / "teacher" / inside)
    assert source.read_bytes() == before and not (tmp_path / "teacher" / "student").exists()


def test_a_changed_copy_is_replaced_only_when_asked(tmp_path: Path) -> None:
    _tiny_notebook(tmp_path / "teacher")
    (copy,) = write_student_copies(tmp_path / "teacher", tmp_path / "student")
    write_student_copies(tmp_path / "teacher", tmp_path / "student")  # identical: no complaint
    copy.path.write_text(copy.path.read_text().replace("raise NotImplementedError()", "return 41"))
    with pytest.raises(OutputPathError, match="exists and differs"):
        write_student_copies(tmp_path / "teacher", tmp_path / "student")
    assert "return 41" in copy.path.read_text(), "the student's work was kept"
    write_student_copies(tmp_path / "teacher", tmp_path / "student", overwrite=True)
    assert "raise NotImplementedError()" in copy.path.read_text()


def test_a_broken_notebook_writes_nothing(tmp_path: Path) -> None:
    _tiny_notebook(tmp_path / "teacher")
    (tmp_path / "teacher" / "00_broken.ipynb").write_text(
        json.dumps({"cells": [{"cell_type": "code", "source": "### BEGIN SOLUTION\n"}]})
    )
    with pytest.raises(SolutionMarkerError, match="00_broken.ipynb, cell 0"):
        write_student_copies(tmp_path / "teacher", tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_cli_writes_copies_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tiny_notebook(tmp_path / "teacher")
    argv = ["student-copies", str(tmp_path / "student"), "--source", str(tmp_path / "teacher"), "--json"]
    assert main(argv) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["solutions_removed"] == 1 and Path(record["path"]).exists()
    assert main(["student-copies", str(tmp_path / "teacher"), "--source", str(tmp_path / "teacher")]) == 2
    assert "refusing to write student copies" in capsys.readouterr().err


# --- every notebook of the lab ------------------------------------------------------------------


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Student copies of every notebook, written once with the real command."""
    out = tmp_path_factory.mktemp("student")
    return {c.source.name: c for c in write_student_copies(NOTEBOOK_DIR, out)}


def _solution_lines(notebook: dict[str, Any]) -> set[str]:
    """Every stripped line that appears inside a solution block and nowhere else in the notebook."""
    inside: set[str] = set()
    outside: set[str] = set()
    for cell in notebook["cells"]:
        begins, ends = MARKERS.get(cell["cell_type"], ((), (), ()))[:2]
        in_block = False
        for line in _source(cell).splitlines():
            text = line.strip()
            in_block = in_block or text in begins
            (inside if in_block else outside).add(text)
            in_block = in_block and text not in ends
    return {line for line in inside - outside if line}


def test_every_notebook_is_found_and_has_an_exercise(copies: dict[str, Any]) -> None:
    assert sorted(copies) == [p.name for p in NOTEBOOKS] and len(NOTEBOOKS) >= 5
    no_exercise = [name for name, copy in copies.items() if not copy.solutions]
    assert no_exercise == [], f"every notebook ends with an exercise; none found in {no_exercise}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_copy_holds_no_solution_text(notebook: Path, copies: dict[str, Any]) -> None:
    copy = copies[notebook.name]
    instructor, student = _load(notebook), _load(copy.path)
    secret = _solution_lines(instructor)
    assert len(secret) >= len(copy.solutions) * 2, "each block holds its two markers and an answer"
    student_lines = {line.strip() for cell in student["cells"] for line in _source(cell).splitlines()}
    assert student_lines & secret == set()
    assert all(cell.get("outputs", []) == [] for cell in student["cells"])


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_restoring_the_solutions_gives_the_instructors_cells_back(
    notebook: Path, copies: dict[str, Any]
) -> None:
    copy = copies[notebook.name]
    restored = restore_solutions(_load(copy.path), list(copy.solutions))
    assert [_source(c) for c in restored["cells"]] == [_source(c) for c in _load(notebook)["cells"]]


# --- running each stub to its hint, and its solution to a pass ------------------------------------


def _names(cell_source: str) -> tuple[set[str], set[str]]:
    """(names a cell defines or assigns into, names it reads); magics and shell lines are skipped."""
    code = "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in cell_source.splitlines()
    )
    defined: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, ast.Store | ast.Del) else used).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Subscript | ast.Attribute) and isinstance(node.ctx, ast.Store):
            base = node.value
            while isinstance(base, ast.Subscript | ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name):
                defined.add(base.id)  # x[5] = ... or model.x = ...: it changes x
    return defined, used - set(dir(builtins))


@dataclass(frozen=True)
class Exercise:
    notebook: Path
    cell: int  # the cell holding the solution
    check_cell: int  # the cell calling check_...(...): the same one, or the next code cell

    def __str__(self) -> str:
        return f"{self.notebook.stem}-cell{self.cell}"


def _exercises() -> list[Exercise]:
    found = []
    for path in NOTEBOOKS:
        cells = _load(path)["cells"]
        for index, cell in enumerate(cells):
            if cell["cell_type"] == "code" and MARKERS["code"][0][0] in _source(cell):
                calls = [i for i in range(index, len(cells)) if cells[i]["cell_type"] == "code"]
                check = next((i for i in calls[:2] if CHECK_CALL.search(_source(cells[i]))), index)
                found.append(Exercise(path, index, check))
    return found


def _backward_slice(cells: list[dict[str, Any]], exercise: Exercise) -> list[int]:
    """The earlier code cells the exercise needs: the first code cell, then those defining its names."""
    code = [i for i in range(exercise.cell) if cells[i]["cell_type"] == "code"]
    needed: set[str] = set()
    for index in (exercise.cell, exercise.check_cell):
        defined, used = _names(_source(cells[index]))
        needed |= used - defined
    chosen = {code[0]} if code else set()
    for index in reversed(code):
        defined, used = _names(_source(cells[index]))
        if defined & needed:
            chosen.add(index)
            needed = (needed - defined) | used
    return sorted(chosen)


def _verdicts(cell: Any) -> list[str]:
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert errors == [], f"a traceback instead of a verdict:\n{errors[0].get('evalue')}"
    text = "".join(
        o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
        for o in cell.outputs
    )
    return VERDICT.findall(text)


def _run(exercise: Exercise, cell_indices: list[int], student: dict[str, Any], instructor: dict[str, Any]):
    """Run the chosen cells and the stub's check, then the restored solution and its check; return verdicts."""
    import nbformat
    from nbclient import NotebookClient

    def cell_of(notebook: dict[str, Any], index: int) -> Any:
        return nbformat.v4.new_code_cell(_source(notebook["cells"][index]))

    stub_cells = [cell_of(student, i) for i in cell_indices]
    stub_cells += [cell_of(student, i) for i in sorted({exercise.cell, exercise.check_cell})]
    solved_cells = [cell_of(instructor, i) for i in sorted({exercise.cell, exercise.check_cell})]
    notebook = nbformat.v4.new_notebook(cells=[*stub_cells, *solved_cells])
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the notebooks' own working folder
    )
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)  # raises CellExecutionError on any traceback
    return _verdicts(notebook.cells[len(stub_cells) - 1]), _verdicts(notebook.cells[-1])


@pytest.mark.slow
@pytest.mark.parametrize("exercise", _exercises(), ids=str)
def test_stub_gets_the_hint_and_the_restored_solution_passes(
    exercise: Exercise, copies: dict[str, Any]
) -> None:
    from nbclient.exceptions import CellExecutionError

    student = _load(copies[exercise.notebook.name].path)
    instructor = _load(exercise.notebook)
    chosen = _backward_slice(student["cells"], exercise)
    try:
        stub, solved = _run(exercise, chosen, student, instructor)
    except CellExecutionError as error:  # the slice missed a side effect: run every cell before it
        everything = [i for i in range(exercise.cell) if student["cells"][i]["cell_type"] == "code"]
        if chosen == everything:
            raise
        print(
            f"{exercise}: the slice {chosen} failed ({str(error).splitlines()[-1]}); running every earlier cell"
        )
        stub, solved = _run(exercise, everything, student, instructor)
    assert stub == ["not answered"], f"{exercise}: the stub's check printed {stub}"
    assert solved == ["passed"], f"{exercise}: the restored solution's check printed {solved}"
