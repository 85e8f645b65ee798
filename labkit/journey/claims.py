"""The article's claims, one row each, beside what this machine measured and whether the claim held here.

The claims are ``/work/shared/SEED.md``'s summary of the article "From disk to VRAM: the role of I/O
in model inference" (quoted, in our words). Each row's ``measured`` text is built from a
``JourneyReport`` only, so every number in it was measured or counted in that run; a claim this
machine cannot test (no GPU) says so instead of guessing.

Verdicts: ``"held here"``, ``"did not hold here"``, ``"partly"`` (some of it measured and held,
the rest not measurable here), ``"not measurable here"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from labkit.journey.records import EAGER, GENERATE, LAZY, OPEN, STAGED, JourneyReport

HELD, NOT_HELD, PARTLY, NOT_MEASURABLE = "held here", "did not hold here", "partly", "not measurable here"
ARTICLE_DISK_GB_PER_S = (0.5, 5.0)  # quoted: SSD
ARTICLE_RAM_GB_PER_S = (20.0, 50.0)  # quoted


@dataclass(frozen=True)
class ClaimRow:
    """One claim of the article (quoted), what this run measured, and the verdict."""

    number: int
    claim: str
    measured: str
    verdict: str


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.0f} MB"


def _by_size(report: JourneyReport) -> tuple[str, str]:
    """(largest, smallest) type by file size."""
    ordered = sorted(report.variants, key=lambda v: v.file_bytes)
    return ordered[-1].qtype, ordered[0].qtype


def _journey(report: JourneyReport) -> tuple[str, str]:
    big, _ = _by_size(report)
    eager = report.stage(EAGER, big)
    hop = "measured" if report.machine.gpu else "modelled only (no GPU here)"
    text = (
        f"disk → RAM: {big} eager load, {_mb(eager.size_bytes)} in {eager.measured_s:.2f} s (measured); "
        f"RAM → VRAM: {hop}"
    )
    return text, HELD if report.machine.gpu else PARTLY


def _big_is_slow(report: JourneyReport) -> tuple[str, str]:
    if len(report.variants) < 2:
        return "one type only: nothing to compare", NOT_MEASURABLE
    big, small = _by_size(report)
    b, s = report.stage(EAGER, big), report.stage(EAGER, small)
    text = (
        f"eager load {big} {_mb(b.size_bytes)}: {b.measured_s:.2f} s; {small} {_mb(s.size_bytes)}: "
        f"{s.measured_s:.2f} s (measured, {report.stage(EAGER, big).note.split(' (')[0]})"
    )
    return text, HELD if (b.measured_s or 0) > (s.measured_s or 0) else NOT_HELD


def _gguf_cuts_io(report: JourneyReport) -> tuple[str, str]:
    big, small = _by_size(report)
    b, s = report.variant(big), report.variant(small)
    opened, lazy = report.stage(OPEN, small), report.stage(LAZY, small)
    text = (
        f"{small} file {b.file_bytes / s.file_bytes:.2f}× smaller than {big} (counted); lazy open "
        f"{(opened.measured_s or 0) * 1e3:.0f} ms vs every tensor touched {(lazy.measured_s or 0) * 1e3:.0f} ms "
        "(measured): opening is not loading"
    )
    smaller = len(report.variants) > 1 and (report.stage(LAZY, small).measured_s or 0) <= (
        report.stage(LAZY, big).measured_s or 0
    )
    return text, HELD if smaller and (opened.measured_s or 0) < (lazy.measured_s or 1) else PARTLY


def _worked_example(report: JourneyReport) -> tuple[str, str]:
    f16_bytes = 2 * report.n_params
    _, small = _by_size(report)
    ratio = f16_bytes / report.variant(small).file_bytes
    text = (
        f"{report.n_params / 1e6:.0f} M weights: {_mb(f16_bytes)} as F16 (counted) vs {small} file "
        f"{_mb(report.variant(small).file_bytes)} (counted): {ratio:.1f}× smaller (the article: 10 → 2.5 GB, 4×)"
    )
    return text, HELD if 3.0 <= ratio <= 5.0 else NOT_HELD


def _segments(report: JourneyReport) -> tuple[str, str]:
    if STAGED in report.missing:
        return f"the staged run did not run: {report.missing[STAGED]}", NOT_MEASURABLE
    big, _ = _by_size(report)
    staged = report.stage(STAGED, big)
    if staged.size_bytes == 0:
        return f"{big}: {staged.what.split('; bytes')[0]}: the budget held every layer, nothing streamed", (
            NOT_MEASURABLE
        )
    text = (
        f"{big}: {staged.what.split('; bytes')[0]}; {_mb(staged.size_bytes)} streamed from the file in "
        f"{staged.measured_s:.2f} s (measured)"
    )
    return text, HELD if staged.ran else NOT_HELD


def _spill(report: JourneyReport) -> tuple[str, str]:
    text = (
        "per token only ids in and logits out cross RAM ↔ device (counted in notebook 05); "
        "weights streamed past the budget were measured above; activation spill is not exercised here"
    )
    return text, PARTLY


def _bandwidth_bound(report: JourneyReport) -> tuple[str, str]:
    rows = [(v, report.stage(GENERATE, v.qtype)) for v in report.variants]
    v, _ = rows[0]
    text = (
        f"CPU stand-in: {v.qtype} decoded {v.tokens_per_s:.1f} tok/s (measured) under its RAM-bandwidth "
        f"bound {v.bound_tokens_per_s:.0f} tok/s (modelled); VRAM bandwidth: not measurable without a GPU"
    )
    below = all(s.tokens_per_s <= s.bound_tokens_per_s for s, _ in rows)
    return text, PARTLY if below else NOT_HELD


def _speed_table(report: JourneyReport) -> tuple[str, str]:
    disk = report.probe.cold_disk()
    ram = max(
        (r for r in report.probe.of_kind("measured") if r.operation.startswith("copy_")),
        key=lambda r: r.gb_per_s,
    )
    disk_in = ARTICLE_DISK_GB_PER_S[0] <= disk.gb_per_s <= ARTICLE_DISK_GB_PER_S[1]
    ram_in = ARTICLE_RAM_GB_PER_S[0] <= ram.gb_per_s <= ARTICLE_RAM_GB_PER_S[1]
    text = (
        f"{disk.tier} {disk.operation}: {disk.gb_per_s:.2f} GB/s (measured; article SSD 0.5–5); "
        f"RAM {ram.operation}: {ram.gb_per_s:.1f} GB/s (measured; article 20–50); VRAM: not measurable here"
    )
    return text, HELD if disk_in and ram_in else (PARTLY if disk_in or ram_in else NOT_HELD)


def _remedies(report: JourneyReport) -> tuple[str, str]:
    big, small = _by_size(report)
    b, s = report.variant(big), report.variant(small)
    cost = s.perplexity / b.perplexity - 1
    text = (
        f"{small} instead of {big}: {b.file_bytes / s.file_bytes:.2f}× fewer bytes to read (counted), "
        f"perplexity {cost:+.0%} (measured); more VRAM: not measurable here"
    )
    return text, PARTLY


CLAIMS: tuple[tuple[str, Callable[[JourneyReport], tuple[str, str]]], ...] = (
    ("Weights travel disk → RAM → VRAM before any computation", _journey),
    ("Big weights make loading slow", _big_is_slow),
    (
        "GGUF cuts I/O: quantized blocks shrink the file and its read time; lazy loading reads only what is used",
        _gguf_cuts_io,
    ),
    ("A 10 GB unquantized model is about 2.5 GB in Q4 GGUF", _worked_example),
    ("A model larger than VRAM is loaded in segments, block by block", _segments),
    ("Intermediate results spill from VRAM to RAM when VRAM runs short, slowing inference", _spill),
    ("VRAM capacity decides what fits; VRAM bandwidth bounds speed", _bandwidth_bound),
    ("Speed table: HDD ≈ 0.1 GB/s, SSD 0.5–5 GB/s, RAM 20–50 GB/s, VRAM > 500 GB/s", _speed_table),
    (
        "Remedies: a block-loadable quantized format, lazy loading, more VRAM, CPU inference of quantized models",
        _remedies,
    ),
)


def claim_rows(report: JourneyReport) -> list[ClaimRow]:
    """The article's claims (quoted), each with what ``report`` measured and the verdict here."""
    rows = []
    for number, (claim, judge) in enumerate(CLAIMS, start=1):
        measured, verdict = judge(report)
        rows.append(ClaimRow(number, claim, measured, verdict))
    return rows
