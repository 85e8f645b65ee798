"""The journey's records as fixed-width text, for the terminal (``labkit tour``) and notebooks.

Every column names its numbers' kind (counted, measured, modelled); a stage that did not run here
shows "—" and says why.
"""

from __future__ import annotations

from labkit.journey.claims import ClaimRow
from labkit.journey.records import STAGES, JourneyReport, StageRecord


def _stages(report: JourneyReport, qtype: str) -> list[StageRecord]:
    return [r for s in STAGES for r in report.stages if r.stage == s and r.qtype == qtype]


def _fmt_s(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def stage_table(report: JourneyReport, qtype: str) -> str:
    """One type's stages as fixed-width text: bytes (counted), measured s, predicted s (modelled)."""
    lines = [f"{'stage':17} {'bytes (counted)':>16} {'measured s':>11} {'predicted s (modelled)':>23}  note"]
    for r in _stages(report, "") + _stages(report, qtype):
        note = r.note if r.ran else f"not run here: {r.note}"
        lines.append(
            f"{r.stage:17} {r.size_bytes:>16,} {_fmt_s(r.measured_s):>11} {_fmt_s(r.predicted_s):>23}  "
            f"{note[:70]}"
        )
    return "\n".join(lines)


def variant_table(report: JourneyReport) -> str:
    """The measured table, one line per type, each column naming its kind."""
    lines = [
        f"{'type':7} {'file MB (counted)':>17} {'perplexity (measured)':>22} {'tok/s (measured)':>17} "
        f"{'eager peak RSS MB (measured)':>29} {'all-resident MB (counted)':>26}"
    ]
    for v in report.variants:
        rss = "—" if v.eager_peak_rss_bytes is None else f"{v.eager_peak_rss_bytes / 1e6:.0f}"
        resident = "—" if v.resident_bytes is None else f"{v.resident_bytes / 1e6:.0f}"
        lines.append(
            f"{v.qtype:7} {v.file_bytes / 1e6:>17.1f} {v.perplexity:>22.2f} {v.tokens_per_s:>17.1f} "
            f"{rss:>29} {resident:>26}"
        )
    return "\n".join(lines)


def claims_table(rows: list[ClaimRow]) -> str:
    """The article's claims, one line each: number, verdict, claim (quoted), then what was measured."""
    return "\n".join(f"{r.number}. [{r.verdict}] {r.claim}\n   {r.measured}" for r in rows)
