"""The capstone's exercise check: right, wrong and missing answers, each with the verdict and hint it earns."""

from __future__ import annotations

import pytest

from labkit.checks import NOT_ANSWERED, NOT_YET, PASSED
from labkit.checks.capstone import check_choice, choice_cases, reference_choice

# A table shaped like JourneyReport.table() (numbers as the default model gives them, rounded).
TABLE = [
    {"qtype": "Q8_0", "file_bytes": 144_811_072, "perplexity": 39.05, "resident_bytes": 269_100_288},
    {"qtype": "Q6_K", "file_bytes": 138_382_912, "perplexity": 39.03, "resident_bytes": 269_100_288},
    {"qtype": "Q4_K_M", "file_bytes": 100_000_000, "perplexity": 40.9, "resident_bytes": 269_100_288},
    {"qtype": "Q4_0", "file_bytes": 91_726_912, "perplexity": 41.7, "resident_bytes": 269_100_288},
    {"qtype": "Q2_K", "file_bytes": 60_000_000, "perplexity": 71.0, "resident_bytes": 269_100_288},
]


def solution(table, machine):
    good = [row for row in table if row["perplexity"] <= machine["max_perplexity"]]
    if not good:
        return None
    best = min(good, key=lambda row: row["file_bytes"])
    return best["qtype"], min(machine["ram_bytes"], best["resident_bytes"])


def stub(table, machine):
    raise NotImplementedError()


def test_the_reference_solution_passes() -> None:
    result = check_choice(solution, TABLE)
    assert result.verdict == PASSED and result.n_cases == 4, result


def test_reference_rules() -> None:
    assert reference_choice(TABLE, {"max_perplexity": 41.0, "ram_bytes": 100e6}) == ("Q4_K_M", 100_000_000)
    assert reference_choice(TABLE, {"max_perplexity": 100.0, "ram_bytes": 1e9}) == ("Q2_K", 269_100_288)
    assert reference_choice(TABLE, {"max_perplexity": 10.0, "ram_bytes": 1e9}) is None
    no_staging = [{**row, "resident_bytes": None} for row in TABLE]
    assert reference_choice(no_staging, {"max_perplexity": 39.04, "ram_bytes": 5e8}) == ("Q6_K", 500_000_000)


def test_the_stub_is_not_answered_with_a_hint() -> None:
    result = check_choice(stub, TABLE)
    assert result.verdict == NOT_ANSWERED and "NotImplementedError" in result.hint


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda t, m: ("Q2_K", m["ram_bytes"]), "misses the quality bar"),  # smallest file, quality ignored
        (lambda t, m: (min(t, key=lambda r: r["perplexity"])["qtype"], m["ram_bytes"]), "smaller file"),
        (lambda t, m: solution(t, m) and (solution(t, m)[0], 10**12), "more RAM than the machine"),
        (lambda t, m: solution(t, m) and (solution(t, m)[0], m["ram_bytes"]), "no more than the type's"),
        (lambda t, m: solution(t, m) or ("Q8_0", 1), "no type meets the quality bar"),
        (lambda t, m: "Q4_0", "return a pair"),
    ],
)
def test_wrong_answers_get_the_case_and_a_hint(answer, hint: str) -> None:
    result = check_choice(answer, TABLE)
    assert result.verdict == NOT_YET
    assert "expected" in result.message and hint in result.hint, result


def test_an_exception_is_a_verdict_not_a_traceback() -> None:
    result = check_choice(lambda t, m: t[0]["size"], TABLE)
    assert result.verdict == NOT_YET and "KeyError" in result.message


def test_cases_use_the_measured_table_first() -> None:
    cases = choice_cases(TABLE)
    assert [row["qtype"] for row in cases[0][1]] == [row["qtype"] for row in TABLE]
    assert cases[0][2]["ram_bytes"] < TABLE[0]["resident_bytes"]  # a budget that makes layers stream
    assert reference_choice(cases[3][1], cases[3][2]) is None
