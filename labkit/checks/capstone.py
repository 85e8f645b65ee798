"""Automatic check for the capstone's exercise (notebook 07): pick a type and a budget for a machine.

The student writes ``choose(table, machine) -> (qtype, budget_bytes) | None`` from the measured table
(``JourneyReport.table()``: one row per type with ``qtype``, ``file_bytes``, ``perplexity``,
``resident_bytes``...) and a machine (``ram_bytes`` it can give the weights, ``max_perplexity`` the
class accepts). The rule the reference follows:

- the type: among the types whose measured perplexity meets the bar, the smallest file (fewest bytes
  to read at load time and per streamed pass); ``None`` when no type meets the bar;
- the budget: all the RAM the machine gives, but no more than the model needs to be all resident
  (``resident_bytes``; when it is unknown, the machine's RAM).

``check_choice`` runs it on the measured table and on hand-built tables that catch the usual slips.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from labkit.checks import CheckResult, NotYet, attempt, verdict

Row = Mapping[str, Any]
Choice = tuple[str, int] | None


def reference_choice(table: Sequence[Row], machine: Mapping[str, float]) -> Choice:
    """The reference answer (see the module docstring)."""
    good = [row for row in table if row["perplexity"] <= machine["max_perplexity"]]
    if not good:
        return None
    best = min(good, key=lambda row: (row["file_bytes"], row["perplexity"]))
    resident = best.get("resident_bytes")
    budget = machine["ram_bytes"] if resident is None else min(machine["ram_bytes"], resident)
    return str(best["qtype"]), int(budget)


def _row(qtype: str, file_mb: float, perplexity: float, resident_mb: float = 270.0) -> dict[str, Any]:
    return {
        "qtype": qtype,
        "file_bytes": int(file_mb * 1e6),
        "perplexity": perplexity,
        "resident_bytes": int(resident_mb * 1e6),
    }


def choice_cases(table: Sequence[Row]) -> list[tuple[str, list[Row], dict[str, float]]]:
    """``(label, table, machine)`` for every case the check runs; the first two use the measured table."""
    rows: list[Row] = [dict(row) for row in table]
    perplexities = sorted(row["perplexity"] for row in rows)
    resident = next((row["resident_bytes"] for row in rows if row.get("resident_bytes")), None) or int(300e6)
    hand: list[Row] = [
        _row("Q8_0", 145, 39.0),
        _row("Q2_K", 60, 58.0),
        _row("Q4_K_M", 100, 40.5),
        _row("Q4_0", 92, 41.9),
    ]
    return [
        (
            "your measured table, a bar at its median perplexity, half the RAM to be all resident",
            rows,
            {"max_perplexity": perplexities[len(perplexities) // 2], "ram_bytes": resident // 2},
        ),
        (
            "your measured table, every type good enough, plenty of RAM",
            rows[::-1],
            {"max_perplexity": perplexities[-1], "ram_bytes": 4 * resident},
        ),
        (
            "a hand-built table where the smallest file misses the bar (perplexity at most 41)",
            hand,
            {"max_perplexity": 41.0, "ram_bytes": 200e6},
        ),
        (
            "a hand-built table with a bar no type meets (perplexity at most 30)",
            hand,
            {"max_perplexity": 30.0, "ram_bytes": 200e6},
        ),
    ]


def _hint(got: Any, want: Choice, table: Sequence[Row], machine: Mapping[str, float]) -> str:
    if want is None:
        return "no type meets the quality bar here: return None"
    if not (isinstance(got, tuple) and len(got) == 2):
        return "return a pair (qtype, budget_bytes), or None when no type meets the bar"
    by_type = {row["qtype"]: row for row in table}
    qtype, budget = got
    if qtype not in by_type:
        return f"{qtype!r} is not a type of the table; pick one of {sorted(by_type)}"
    if by_type[qtype]["perplexity"] > machine["max_perplexity"]:
        return f"{qtype} misses the quality bar: compare each row's perplexity with machine['max_perplexity']"
    if qtype != want[0]:
        return "another type also meets the bar with a smaller file: fewer bytes to read is the tie-breaker"
    if budget > machine["ram_bytes"]:
        return "the budget is more RAM than the machine gives the weights"
    return "give the stager all of the machine's RAM, but no more than the type's resident_bytes"


def check_choice(
    choose: Callable[[list[Row], dict[str, float]], Choice], table: Sequence[Row]
) -> CheckResult:
    """Check a student's ``choose(table, machine)`` on the measured table and on hand-built ones.

    Args:
        choose: ``choose(table, machine) -> (qtype, budget_bytes)`` or ``None``.
        table: the measured table (``JourneyReport.table()``).
    Returns:
        A ``CheckResult``: passed when every case is right; else the first wrong case, what was
        expected, and a hint.
    """
    cases = choice_cases(table)

    def run() -> str:
        for label, rows, machine in cases:
            want = reference_choice(rows, machine)
            got = attempt(choose, [dict(r) for r in rows], dict(machine), case=label)
            if isinstance(got, list):
                got = tuple(got)
            if isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], float) and got[1].is_integer():
                got = (got[0], int(got[1]))
            if got != want:
                raise NotYet(f"{label}: expected {want!r}, got {got!r}", _hint(got, want, rows, machine))
        return f"all {len(cases)} machines get the right type and budget"

    return verdict(run, n_cases=len(cases))
