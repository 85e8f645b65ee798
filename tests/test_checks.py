"""labkit.checks: one verdict type; every chapter's check answers right, wrong and missing attempts."""

from __future__ import annotations

import struct

from labkit.checks import CheckResult, NotYet, attempt, verdict
from labkit.checks.gguf import check_header_parser
from labkit.checks.hierarchy import check_article_read_time


def _stub(*args):
    raise NotImplementedError()


def test_verdicts_and_their_text() -> None:
    passed = verdict(lambda: "all good", n_cases=3)
    assert passed == CheckResult("passed", "all good", "", 3) and passed.passed and bool(passed)
    assert repr(passed) == "✅ passed: all good"

    def wrong() -> str:
        raise NotYet("case 2: expected 4, got 5", "count again")

    failed = verdict(wrong, n_cases=3)
    assert not failed.passed and not failed and failed.verdict == "not yet"
    assert str(failed) == "❌ not yet: case 2: expected 4, got 5\n   hint: count again"


def test_attempt_turns_a_stub_and_a_crash_into_verdicts() -> None:
    assert verdict(lambda: attempt(_stub, case="c"), n_cases=1).verdict == "not answered"
    crashed = verdict(lambda: attempt(lambda: [][1], case="case 1"), n_cases=1)
    assert crashed.verdict == "not yet" and crashed.message.startswith(
        "case 1: your function raised IndexError"
    )


def _parse_header(data: bytes) -> dict:
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    if magic != b"GGUF":
        raise ValueError("bad magic")
    return {"magic": magic, "version": version, "n_tensors": n_tensors, "n_kv": n_kv}


def test_gguf_check_right_wrong_and_missing(default_model) -> None:
    right = check_header_parser(_parse_header, default_model)
    assert right.passed and right.n_cases == 6

    def u32_counts(data: bytes) -> tuple:
        return struct.unpack_from("<4sIII", data, 0)[:3] + (struct.unpack_from("<I", data, 16)[0],)

    wrong = check_header_parser(u32_counts, default_model)
    assert wrong.verdict == "not yet" and "expected" in wrong.message and wrong.hint

    def accepts_any_magic(data: bytes) -> tuple:
        return struct.unpack_from("<4sIQQ", data, 0)

    lax = check_header_parser(accepts_any_magic, default_model)
    assert lax.verdict == "not yet" and "GGML" in lax.message and "ValueError" in lax.hint
    assert check_header_parser(_stub, default_model).verdict == "not answered"
    assert "returned a str" in check_header_parser(lambda data: "GGUF", default_model).message


def test_article_read_time_check() -> None:
    assert check_article_read_time(lambda gb, mb_s: gb * 1e9 / (mb_s * 1e6)).passed
    confused = check_article_read_time(lambda gb, mb_s: gb / mb_s)
    assert confused.verdict == "not yet" and "1000" in confused.hint
    assert check_article_read_time(lambda gb, mb_s: 100.0).verdict == "not yet"  # hard-coded
    assert check_article_read_time(_stub).verdict == "not answered"
