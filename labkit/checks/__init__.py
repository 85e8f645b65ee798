"""Automatic checks for the notebooks' exercises, one module per chapter.

Each ``check_*`` function runs a student's function on fixed cases and either raises
``AssertionError`` naming the first wrong case, or returns a ``CheckResult``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckResult:
    """A passed check: how many cases it ran, and what was checked."""

    passed: bool
    n_cases: int
    message: str
