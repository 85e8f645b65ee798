"""The chapter-4 exercise check answers right, wrong and missing predictions of a partial load's bytes."""

from __future__ import annotations

from math import prod

from labkit.checks.loading import check_partial_bytes, expected_partial_bytes, partial_cases


def _right(table, layers):
    return sum(s.n_bytes for s in table if s.layer is None or s.layer in layers)


def test_the_reference_passes(default_model) -> None:
    result = check_partial_bytes(_right)
    assert result.passed and result.n_cases == 4, result


def test_forgetting_the_shared_tensors_gets_a_hint() -> None:
    result = check_partial_bytes(lambda table, layers: sum(s.n_bytes for s in table if s.layer in layers))
    assert result.verdict == "not yet" and "layers 0-3: expected" in result.message
    assert "embeddings" in result.hint


def test_counting_elements_gets_a_hint() -> None:
    def elements(table, layers):
        return sum(prod(s.shape) for s in table if s.layer is None or s.layer in layers)

    result = check_partial_bytes(elements)
    assert result.verdict == "not yet" and "counts elements" in result.hint


def test_a_substring_match_is_caught() -> None:
    def substring(table, layers):  # "layers.1" is also inside "layers.10."
        return sum(
            s.n_bytes
            for s in table
            if s.layer is None or any(f"blk.{n}." in s.name or f"layers.{n}" in s.name for n in layers)
        )

    result = check_partial_bytes(substring)
    assert result.verdict == "not yet" and "layer 1 (not 10)" in result.message and "substring" in result.hint


def test_the_stub_and_a_crash() -> None:
    def stub(table, layers):
        raise NotImplementedError()

    assert check_partial_bytes(stub).verdict == "not answered"
    crashed = check_partial_bytes(lambda table, layers: table[999])
    assert crashed.verdict == "not yet" and "IndexError" in crashed.message
    wrong_type = check_partial_bytes(lambda table, layers: float(_right(table, layers)))
    assert wrong_type.verdict == "not yet" and "int" in wrong_type.hint


def test_cases_have_distinct_answers() -> None:
    answers = [expected_partial_bytes(table, layers) for _, table, layers in partial_cases()]
    assert len(set(answers)) == len(answers)
