"""Automatic checks for the notebooks' exercises, one module per chapter.

Every exercise is a function the student writes. In the instructor's notebook its body holds the
reference solution between nbgrader's markers; a student copy (``labkit.classroom``) replaces that
block with nbgrader's stub::

    def cold_load_seconds(report, size_bytes):
        ### BEGIN SOLUTION
        return size_bytes / (report.cold_disk().gb_per_s * 1e9)
        ### END SOLUTION

    check_cold_load_time(cold_load_seconds, report, size_bytes)

A check calls the function on fixed cases and *returns* a ``CheckResult`` carrying the verdict;
it never raises at the student. Three verdicts:

- ``"passed"``: every case right;
- ``"not answered"``: the function still raises ``NotImplementedError`` (the stub);
- ``"not yet"``: a case came back wrong, or the function raised: the message names the case and
  what was expected, the hint gives a nudge.

Inside a check, ``attempt(fn, *args, case=...)`` calls the student's function and ``NotYet(message,
hint)`` reports a wrong case; ``verdict(run, ...)`` turns either into the ``CheckResult``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PASSED, NOT_ANSWERED, NOT_YET = "passed", "not answered", "not yet"
STUB_HINT = (
    "replace the `raise NotImplementedError()` line with your code, run the cell, then the check again"
)


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one exercise.

    Attributes:
        verdict: ``"passed"``, ``"not answered"`` or ``"not yet"``.
        message: what was checked, or which case went wrong and what was expected.
        hint: a nudge towards the answer (empty when passed).
        n_cases: how many cases the check runs.
    """

    verdict: str
    message: str
    hint: str = ""
    n_cases: int = 0

    @property
    def passed(self) -> bool:
        """True only when every case was right."""
        return self.verdict == PASSED

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = "✅" if self.passed else "❌"
        text = f"{mark} {self.verdict}: {self.message}"
        return f"{text}\n   hint: {self.hint}" if self.hint else text

    def __repr__(self) -> str:  # what a notebook shows when a cell ends with a check
        return str(self)


class NotYet(Exception):
    """A case came back wrong: ``message`` names it and what was expected, ``hint`` nudges."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class NotAnswered(Exception):
    """The student's function is still the stub (it raised ``NotImplementedError``)."""


def attempt(student_fn: Callable[..., Any], *args: Any, case: str) -> Any:
    """Call the student's function on one case; its stub or its exception becomes a verdict.

    Raises:
        NotAnswered: the function raised ``NotImplementedError``.
        NotYet: the function raised anything else (named, with the case).
    """
    try:
        return student_fn(*args)
    except NotImplementedError:
        raise NotAnswered from None
    except Exception as error:  # noqa: BLE001 - any error of the student's becomes a hint
        raise NotYet(
            f"{case}: your function raised {type(error).__name__}: {error}",
            "read the error's last line; the exercise's text lists what the function gets and returns",
        ) from None


def verdict(run: Callable[[], str], *, n_cases: int, stub_hint: str = STUB_HINT) -> CheckResult:
    """Run a check's body and return its verdict.

    Args:
        run: the check's cases; returns the message for a pass, raises ``NotYet``/``NotAnswered``.
        n_cases: how many cases ``run`` tries.
        stub_hint: the nudge when the exercise is not answered yet.
    """
    try:
        message = run()
    except NotAnswered:
        return CheckResult(
            NOT_ANSWERED, "the exercise still holds its stub, so nothing was checked", stub_hint, n_cases
        )
    except NotYet as wrong:
        return CheckResult(NOT_YET, wrong.message, wrong.hint, n_cases)
    return CheckResult(PASSED, message, "", n_cases)
