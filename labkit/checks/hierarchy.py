"""Automatic check for the exercise of notebook 01 (the memory hierarchy).

The exercise: from the probe's cold-disk figure, how many seconds does it take to read the
default model's file from disk? The answer is bytes / (GB/s x 10^9). ``check_cold_load_time``
recomputes it from the same report, accepts answers within 5%, and otherwise raises
``AssertionError`` with a hint at the usual slip (GiB for GB, a rate upside down, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from labkit.tiers import ProbeReport, TierRecord


@dataclass(frozen=True)
class ColdLoadCheck:
    """A passed check: the expected seconds, the rate they came from, and a message."""

    expected_s: float
    answer_s: float
    record: TierRecord
    message: str


def expected_cold_load_s(report: ProbeReport, size_bytes: int) -> tuple[float, TierRecord]:
    """Return the seconds to read ``size_bytes`` at the report's cold-read rate, and that row."""
    record = report.cold_disk()
    return size_bytes / (record.gb_per_s * 1e9), record


def _hint(answer_s: float, expected_s: float, size_bytes: int, record: TierRecord) -> str:
    slips = {
        "GB/s means 10^9 bytes per second, not 2^30": size_bytes / (record.gb_per_s * 2**30),
        "divide the bytes by the rate, not the rate by the bytes":
            record.gb_per_s * 1e9 / size_bytes,
        "convert the rate to bytes per second (x 1e9)": size_bytes / record.gb_per_s,
        "the answer is in seconds, not milliseconds": expected_s * 1e3,
    }
    for hint, slip in slips.items():
        if math.isclose(answer_s, slip, rel_tol=0.05):
            return hint
    return "seconds = file size in bytes / (cold-read GB/s x 1e9)"


def check_cold_load_time(answer_s: float, report: ProbeReport, size_bytes: int, *,
                         rel_tol: float = 0.05) -> ColdLoadCheck:
    """Check a student's time to read ``size_bytes`` cold, against the probe's measurement.

    Args:
        answer_s: the student's answer in seconds.
        report: the ``labkit.probe.run()`` report the student used.
        size_bytes: the file size (e.g. ``default_model_path().stat().st_size``).
        rel_tol: accepted relative error.

    Returns:
        A ``ColdLoadCheck`` whose ``message`` explains the result.

    Raises:
        AssertionError: the answer is off by more than ``rel_tol``, with a hint.
    """
    expected_s, record = expected_cold_load_s(report, size_bytes)
    answer = float(answer_s)
    if not math.isfinite(answer) or not math.isclose(answer, expected_s, rel_tol=rel_tol):
        raise AssertionError(
            f"not yet: you answered {answer:.4g} s, the measured {record.tier} "
            f"'{record.operation}' rate of {record.gb_per_s:.2f} GB/s gives {expected_s:.4g} s. "
            f"Hint: {_hint(answer, expected_s, size_bytes, record)}.")
    label = "measured" if record.tier == "disk" else "measured, but NOT a disk number"
    return ColdLoadCheck(expected_s, answer, record, (
        f"correct: {size_bytes:,} bytes at {record.gb_per_s:.2f} GB/s ({label}: "
        f"{record.operation}) take {expected_s:.4g} s"))
