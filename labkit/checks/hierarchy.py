"""Automatic check for the exercise of notebook 01 (the memory hierarchy).

The exercise: from the probe's cold-disk figure, how many seconds does it take to read the
default model's file from disk? The answer is bytes / (GB/s x 10^9). ``check_cold_load_time``
recomputes it from the same report, accepts answers within 5%, and otherwise answers with a
hint at the usual slip (GiB for GB, a rate upside down, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from labkit.checks import CheckResult, NotYet, attempt, verdict
from labkit.hierarchy.tiers import ProbeReport, TierRecord


def expected_cold_load_s(report: ProbeReport, size_bytes: int) -> tuple[float, TierRecord]:
    """Return the seconds to read ``size_bytes`` at the report's cold-read rate, and that row."""
    record = report.cold_disk()
    return size_bytes / (record.gb_per_s * 1e9), record


def _hint(answer_s: float, expected_s: float, size_bytes: int, record: TierRecord) -> str:
    slips = {
        "GB/s means 10^9 bytes per second, not 2^30": size_bytes / (record.gb_per_s * 2**30),
        "divide the bytes by the rate, not the rate by the bytes": record.gb_per_s * 1e9 / size_bytes,
        "convert the rate to bytes per second (x 1e9)": size_bytes / record.gb_per_s,
        "the answer is in seconds, not milliseconds": expected_s * 1e3,
    }
    for hint, slip in slips.items():
        if math.isclose(answer_s, slip, rel_tol=0.05):
            return hint
    return "seconds = file size in bytes / (cold-read GB/s x 1e9)"


def check_cold_load_time(
    cold_load_seconds: Callable[[ProbeReport, int], float],
    report: ProbeReport,
    size_bytes: int,
    *,
    rel_tol: float = 0.05,
) -> CheckResult:
    """Check a student's function for the time to read ``size_bytes`` cold, against the probe.

    Args:
        cold_load_seconds: ``cold_load_seconds(report, size_bytes) -> seconds``.
        report: the ``labkit.hierarchy.probe.run()`` report the student used.
        size_bytes: the file size (e.g. ``default_model_path().stat().st_size``); the check
            also tries ten times that size, so a hard-coded number does not pass.
        rel_tol: accepted relative error.

    Returns:
        A ``CheckResult`` whose message explains the result, and whose hint names the usual slip
        (GiB for GB, a rate upside down, milliseconds for seconds).
    """
    expected_s, record = expected_cold_load_s(report, size_bytes)
    sizes = (size_bytes, 10 * size_bytes)

    def run() -> str:
        for size in sizes:
            want_s = expected_cold_load_s(report, size)[0]
            answer = attempt(cold_load_seconds, report, size, case=f"{size:,} bytes")
            try:
                answer_s = float(answer)
            except (TypeError, ValueError):
                raise NotYet(
                    f"{size:,} bytes: your function returned {answer!r}", "return seconds, a number"
                ) from None
            if not math.isfinite(answer_s) or not math.isclose(answer_s, want_s, rel_tol=rel_tol):
                raise NotYet(
                    f"{size:,} bytes: you answered {answer_s:.4g} s, the measured {record.tier} "
                    f"'{record.operation}' rate of {record.gb_per_s:.2f} GB/s gives {want_s:.4g} s",
                    _hint(answer_s, want_s, size, record),
                )
        label = "measured" if record.tier == "disk" else "measured, but NOT a disk number"
        return (
            f"{size_bytes:,} bytes at {record.gb_per_s:.2f} GB/s ({label}: {record.operation}) "
            f"take {expected_s:.4g} s (modelled from that measured rate)"
        )

    return verdict(run, n_cases=len(sizes))


def check_article_read_time(read_seconds: Callable[[float, float], float]) -> CheckResult:
    """Check notebook 00's exercise: seconds to read a file at a quoted speed.

    Args:
        read_seconds: ``read_seconds(size_gb, speed_mb_per_s) -> seconds`` (GB = 1e9 bytes, MB = 1e6).

    Returns:
        A ``CheckResult``; the first case is the article's 10 GB model on a 100 MB/s hard disk.
    """
    cases = [(10.0, 100.0), (2.5, 100.0), (10.0, 3500.0)]

    def run() -> str:
        for size_gb, speed_mb_per_s in cases:
            want_s = size_gb * 1e9 / (speed_mb_per_s * 1e6)
            case = f"{size_gb} GB at {speed_mb_per_s:g} MB/s"
            got = attempt(read_seconds, size_gb, speed_mb_per_s, case=case)
            if not isinstance(got, (int, float)) or not math.isclose(got, want_s, rel_tol=1e-6):
                hint = (
                    "GB and MB differ by 1000: convert both to bytes first"
                    if isinstance(got, (int, float)) and math.isclose(got * 1000, want_s, rel_tol=1e-6)
                    else "seconds = bytes / (bytes per second)"
                )
                raise NotYet(f"{case}: expected {want_s:g} s, got {got!r}", hint)
        return "10 GB at 100 MB/s take 100 s (quoted speed, not measured): over a minute and a half"

    return verdict(run, n_cases=len(cases))
